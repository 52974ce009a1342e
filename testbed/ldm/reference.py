"""Reference images for quality: same prompt and seed, N_max steps, beta = 0, no tomesd, noiseless link.

The reference is the unsplit generation (all stages on one node; bit-identical to MEG with k = N, beta = 0 and a
float32 wire, see tests/ldm/test_split.py). Computing it costs N_max full steps, so :class:`ReferenceCache` keeps
each one as a safetensors file keyed by everything that determines its pixels: the model's fingerprint, prompt,
negative prompt, seed, N_max, resolution, guidance, scheduler, and the precision / device type it ran at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from megbed.testbed.ldm.model import LdmModel
from megbed.testbed.request import Request, RequestError

log = logging.getLogger(__name__)

REFERENCE_FORMAT = 1


def reference_request(request: Request, n_max: int) -> Request:
    """The reference twin of ``request``: N_max steps, k = N, beta = 0, no tomesd, float32 on the wire."""
    if not isinstance(n_max, int) or n_max < 1:
        raise RequestError(f"reference steps N_max={n_max!r} must be an integer >= 1")
    return request.replace(n_steps=n_max, es_steps=None, merge_ratio=0.0, tome_ratio_es=0.0, tome_ratio_ue=0.0,
                           wire_dtype="float32")


@dataclass(frozen=True)
class ReferenceKey:
    """Everything that determines a reference image's pixels."""

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    n_max: int
    height: int
    width: int
    guidance_scale: float
    scheduler: str
    dtype: str
    device_type: str
    format: int = REFERENCE_FORMAT

    @classmethod
    def of(cls, model: LdmModel, request: Request, n_max: int) -> ReferenceKey:
        req = model.resolve(reference_request(request, n_max))
        return cls(model.fingerprint(), req.prompt, req.negative_prompt or None, req.seed, n_max, int(req.height_px),
                   int(req.width_px), req.guidance_scale, str(req.scheduler), str(model.dtype).removeprefix("torch."),
                   model.device.type)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def compute_reference(model: LdmModel, request: Request, n_max: int) -> torch.Tensor:
    """Generate the reference image ``[1, 3, H, W]`` float32 in [0, 1] (on the CPU), always decoded with the
    pipeline's own VAE (a model loaded with a distilled UE decoder still has the stock reference)."""
    from megbed.testbed.ldm.runner import run_split

    return run_split(reference_request(request, n_max), model, scheme="ue_local",
                     ue_decoder=model.base_decoder).image.float().cpu()


class ReferenceCache:
    """Reference images on disk, one ``<digest>.safetensors`` per key (written atomically).

    Parameters
    ----------
    root : str or Path
        Cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, key: ReferenceKey) -> Path:
        return self.root / f"{key.digest()}.safetensors"

    def get(self, model: LdmModel, request: Request, n_max: int) -> torch.Tensor:
        """The reference for ``request`` at ``n_max`` steps: from the cache, or computed and stored."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        key = ReferenceKey.of(model, request, n_max)
        path = self.path_for(key)
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    stored = json.loads((fh.metadata() or {}).get("key", "null"))
                if stored == asdict(key):
                    return load_file(str(path))["image"]
                log.warning("reference cache %s holds another key; recomputing", path)
            except (SafetensorError, OSError, ValueError, KeyError) as exc:
                log.warning("reference cache %s is unreadable (%s); recomputing", path, exc)
        image = compute_reference(model, request, n_max)
        self._store(path, key, image)
        return image

    def _store(self, path: Path, key: ReferenceKey, image: torch.Tensor) -> None:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            save_file({"image": image.contiguous()}, tmp, metadata={"key": json.dumps(asdict(key))})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
