"""Precomputed ES latents and reference images for the distillation set, cached on disk as safetensors shards.

Denoising is the expensive part of distillation (the decoder itself trains in a fraction of the time), so every
prompt is generated once per cached N, exactly as the ES generates it (the runtime's own ``text_encode`` and
``denoise`` stages, k = N), and its reference image -- ``n_ref`` steps, beta = 0, no tomesd, decoded with the
pipeline's own VAE, i.e. :func:`megbed.testbed.ldm.reference.compute_reference` -- becomes the target.

Layout of a cache folder::

    index.json                 key, geometry, prompts, shard list, precompute wall time
    shard-00000.safetensors    latents [n, S, C, h, w] float32 (S = len(steps)), targets [n, 3, H, W]
                               (float16 for training -- quantisation MSE ~1e-8 --, float32 for evaluation)
    ...

Shards are written atomically, one per ``shard_size`` prompts, and listed in ``index.json`` as they land: an
interrupted precompute resumes at the first missing shard. A folder that holds a cache for another key (model
weights, prompts, steps, guidance, sampler, size, precision) is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from megbed.testbed.distill.errors import LatentCacheError
from megbed.testbed.distill.prompts import PromptSpec, digest
from megbed.testbed.ldm.model import LdmModel
from megbed.testbed.request import Request

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INDEX = "index.json"
TARGET_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines the cached tensors."""

    model: str
    prompts: str
    num_prompts: int
    steps: tuple[int, ...]
    n_ref: int
    guidance_scale: float
    scheduler: str
    height: int
    width: int
    tome_ratio_es: float
    dtype: str
    device_type: str
    target_dtype: str = "float16"
    format: int = CACHE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:24]


def _request(model: LdmModel, spec: PromptSpec, n: int, guidance_scale: float, scheduler: str | None,
             tome_ratio_es: float) -> Request:
    return model.resolve(Request(spec.prompt, n_steps=n, seed=spec.seed, guidance_scale=guidance_scale,
                                 scheduler=scheduler or "", tome_ratio_es=tome_ratio_es))


def make_key(model: LdmModel, prompts: list[PromptSpec], steps: list[int], n_ref: int, guidance_scale: float,
             scheduler: str | None, tome_ratio_es: float, target_dtype: str = "float16") -> CacheKey:
    req = _request(model, prompts[0], n_ref, guidance_scale, scheduler, tome_ratio_es)
    return CacheKey(model.fingerprint(), digest(prompts), len(prompts), tuple(int(n) for n in steps), int(n_ref),
                    float(guidance_scale), str(req.scheduler), int(req.height_px), int(req.width_px), float(tome_ratio_es),
                    str(model.dtype).removeprefix("torch."), model.device.type, target_dtype)


@torch.no_grad()
def generate_one(model: LdmModel, spec: PromptSpec, steps: list[int], n_ref: int, *, guidance_scale: float,
                 scheduler: str | None = None, tome_ratio_es: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ES latents after each N in ``steps`` and the reference image of one prompt.

    Returns
    -------
    latents : torch.Tensor
        ``[len(steps), C, h, w]`` float32 on the CPU, U-Net latent space (what the ES merges and sends at k = N).
    target : torch.Tensor
        ``[3, H, W]`` float32 in [0, 1] on the CPU: the ``n_ref``-step reference (beta 0, no tomesd, base VAE).
    """
    from megbed.testbed.ldm.stages import DenoiseStage, TextEncodeStage

    req = _request(model, spec, max(steps), guidance_scale, scheduler, tome_ratio_es)
    text = TextEncodeStage(model)({"request": req})["text"]
    denoise = DenoiseStage(model, stop="end", tome_node="es")
    out: dict[int, torch.Tensor] = {}
    for n in steps:
        out[n] = denoise({"request": req.replace(n_steps=n), "text": text})["latents"]
    ref_req = req.replace(n_steps=n_ref, tome_ratio_es=0.0)
    if n_ref in out and tome_ratio_es == 0.0:
        ref_latents = out[n_ref]
    else:
        ref_latents = denoise({"request": ref_req, "text": text})["latents"]
    target = model.base_decoder.decode(ref_latents)[0].float().cpu()
    latents = torch.stack([out[n][0].float().cpu() for n in steps])
    return latents, target


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LatentCache:
    """A built cache folder, read lazily (safetensors memory maps; only the rows asked for are copied).

    Attributes
    ----------
    root : Path
    key : dict
        The :class:`CacheKey` it was built for.
    steps : list[int]
        Cached N values (second axis of ``latents``).
    prompts : list[PromptSpec]
    latent_shape : tuple[int, int, int]
        ``(C, h, w)``.
    image_shape : tuple[int, int, int]
        ``(3, H, W)``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / INDEX
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LatentCacheError(f"{self.root} is not a latent cache ({INDEX}: {exc})") from exc
        if data.get("format") != CACHE_FORMAT:
            raise LatentCacheError(f"{index} has cache format {data.get('format')}, this code reads {CACHE_FORMAT}")
        self.index = data
        self.key = data["key"]
        self.steps = [int(n) for n in data["key"]["steps"]]
        self.prompts = [PromptSpec(p, int(s)) for p, s in data["prompts"]]
        self.latent_shape = tuple(data["latent_shape"])
        self.image_shape = tuple(data["image_shape"])
        self._shards = data["shards"]
        if not data.get("complete") or sum(s["count"] for s in self._shards) != len(self.prompts):
            raise LatentCacheError(f"latent cache {self.root} is incomplete ({sum(s['count'] for s in self._shards)} "
                                   f"of {len(self.prompts)} prompts); run the precompute again to finish it")
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    def _locate(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self.prompts):
            raise IndexError(f"prompt {i} outside the cache's {len(self.prompts)}")
        for k, shard in enumerate(self._shards):
            if shard["start"] <= i < shard["start"] + shard["count"]:
                if k not in self._handles:
                    from safetensors import SafetensorError, safe_open

                    path = self.root / shard["file"]
                    try:
                        self._handles[k] = safe_open(str(path), framework="pt")
                    except (SafetensorError, OSError) as exc:
                        raise LatentCacheError(f"cache shard {path} is unreadable: {exc}") from exc
                return self._handles[k], i - shard["start"]
        raise LatentCacheError(f"no shard of {self.root} holds prompt {i}")

    def step_index(self, n: int) -> int:
        try:
            return self.steps.index(int(n))
        except ValueError as exc:
            raise LatentCacheError(f"N={n} is not cached (cached: {self.steps})") from exc

    def latent(self, i: int, n: int) -> torch.Tensor:
        """``[C, h, w]`` float32: prompt ``i``'s ES latent after N = ``n`` steps."""
        fh, j = self._locate(i)
        s = self.step_index(n)
        return fh.get_slice("latents")[j:j + 1, s:s + 1][0, 0].float()

    def target(self, i: int) -> torch.Tensor:
        """``[3, H, W]`` float32 in [0, 1]: prompt ``i``'s reference image."""
        fh, j = self._locate(i)
        return fh.get_slice("targets")[j:j + 1][0].float()

    @property
    def precompute_s(self) -> float:
        return float(self.index.get("precompute_s", 0.0))


def build_cache(root: str | Path, model: LdmModel, prompts: list[PromptSpec], *, steps: list[int], n_ref: int,
                guidance_scale: float, scheduler: str | None = None, tome_ratio_es: float = 0.0, shard_size: int = 32,
                target_dtype: str = "float16", progress: bool = True) -> LatentCache:
    """Generate (or finish generating) the cache in ``root`` and open it.

    Parameters
    ----------
    root : str or Path
        Cache folder (created).
    model : LdmModel
        The frozen pipeline, on the device and in the precision the latents are generated at.
    prompts : list[PromptSpec]
    steps : list[int]
        N values to cache.
    n_ref : int
        Steps of the reference image.
    guidance_scale, scheduler, tome_ratio_es :
        Generation settings (the ES's).
    shard_size : int
        Prompts per shard file (the unit of resumption).
    target_dtype : str
        ``float16`` (training: half the disk) or ``float32`` (evaluation: the exact reference).
    progress : bool
        Show a progress bar (stderr).

    Raises
    ------
    LatentCacheError
        ``root`` holds a cache for another key.
    """
    from safetensors.torch import save_file

    if not prompts:
        raise LatentCacheError("no prompt to cache")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if target_dtype not in TARGET_DTYPES:
        raise LatentCacheError(f"target dtype {target_dtype!r} is not one of {sorted(TARGET_DTYPES)}")
    key = make_key(model, prompts, steps, n_ref, guidance_scale, scheduler, tome_ratio_es, target_dtype)
    index_path = root / INDEX
    index: dict[str, Any] | None = None
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LatentCacheError(f"{index_path} is unreadable ({exc}); remove the folder to rebuild it") from exc
        if index.get("key") != key.to_dict():
            raise LatentCacheError(f"{root} holds a latent cache for another configuration (model, prompts, steps, "
                                   "guidance, sampler, size or precision differ); use another --cache folder")
    if index is None:
        index = {"format": CACHE_FORMAT, "key": key.to_dict(), "digest": key.digest(),
                 "prompts": [[p.prompt, p.seed] for p in prompts], "shards": [], "complete": False,
                 "precompute_s": 0.0}
    done = {s["start"] for s in index["shards"] if (root / s["file"]).is_file()}
    index["shards"] = [s for s in index["shards"] if s["start"] in done]
    starts = [s for s in range(0, len(prompts), shard_size) if s not in done]
    bar = None
    if progress and starts:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), initial=len(prompts) - sum(min(shard_size, len(prompts) - s) for s in starts),
                   desc="caching ES latents", unit="prompt", leave=False)
    for start in starts:
        t0 = time.perf_counter_ns()
        chunk = prompts[start:start + shard_size]
        lat, tgt = [], []
        for spec in chunk:
            latents, target = generate_one(model, spec, steps, n_ref, guidance_scale=guidance_scale,
                                           scheduler=scheduler, tome_ratio_es=tome_ratio_es)
            lat.append(latents)
            tgt.append(target.to(TARGET_DTYPES[target_dtype]))
            if bar is not None:
                bar.update(1)
        name = f"shard-{start:05d}.safetensors"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=root)
        os.close(fd)
        try:
            save_file({"latents": torch.stack(lat).contiguous(), "targets": torch.stack(tgt).contiguous()}, tmp,
                      metadata={"digest": key.digest(), "start": str(start), "count": str(len(chunk))})
            os.replace(tmp, root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        index["shards"].append({"file": name, "start": start, "count": len(chunk)})
        index["shards"].sort(key=lambda s: s["start"])
        index["latent_shape"] = list(lat[0].shape[1:])
        index["image_shape"] = list(tgt[0].shape)
        index["precompute_s"] = float(index.get("precompute_s", 0.0)) + (time.perf_counter_ns() - t0) / 1e9
        _atomic_json(index_path, index)
    if bar is not None:
        bar.close()
    if not index["complete"]:
        index["complete"] = True
        _atomic_json(index_path, index)
    return LatentCache(root)
