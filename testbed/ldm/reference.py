"""Reference images for quality: same prompt and seed, N_max steps, beta = 0, no tomesd, noiseless link.

The reference is the unsplit generation (all stages on one node; bit-identical to MEG with k = N, beta = 0 and a
float32 wire, see tests/ldm/test_split.py), decoded with the pipeline's own VAE. Its request is
:meth:`megbed.testbed.request.Request.reference`. Computing it costs N_max full steps, so :class:`ReferenceCache`
keeps each one, computed once, as a lossless 8-bit PNG keyed by everything that determines its pixels
(:class:`ReferenceKey`): the model's fingerprint, prompt, negative prompt, seed, N_max, resolution, guidance,
scheduler, and the precision and device type it ran at.

One cache serves both producers: a campaign's ES renders references over the control link (the key then comes from
the ES's engine info) and local code renders them with a model in this process (:func:`local_reference`). The cache
holds no sockets: it is handed a function that computes a missing image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megbed.testbed.ldm.png import write_png
from megbed.testbed.request import Request

if TYPE_CHECKING:  # the orchestrator's campaign runner uses the cache and key without torch or a model
    import torch

    from megbed.testbed.ldm.model import LdmModel

log = logging.getLogger(__name__)

REFERENCE_FORMAT = 2  # 1: float32 safetensors (ldm only); 2: uint8 PNG with the key in a text chunk
_KEY_CHUNK = "megbed-reference-key"


# The reference request's fields that determine its pixels (n_steps is N_max). The rest do not: ids, the link, the
# merge and tomesd ratios (all off), the decoder asked for (the pipeline's own decodes it), the wire dtype (unsplit).
PIXEL_FIELDS = ("prompt", "negative_prompt", "seed", "n_steps", "height_px", "width_px", "guidance_scale", "scheduler")


@dataclass(frozen=True)
class ReferenceKey:
    """What determines a reference image's pixels: the renderer (the model's fingerprint, ``dtype``, ``device_type``)
    and the reference request's :data:`PIXEL_FIELDS`, as ``(column, value)`` pairs in ``request``."""

    model: str
    dtype: str
    device_type: str
    request: tuple[tuple[str, Any], ...]
    format: int = REFERENCE_FORMAT

    @classmethod
    def of(cls, request: Request, n_max: int, *, model: str, dtype: str, device_type: str) -> ReferenceKey:
        """The key of ``request``'s reference at ``n_max`` steps rendered by the model ``model`` (a fingerprint)."""
        ref = request.reference(n_max)
        return cls(str(model), str(dtype).removeprefix("torch."), str(device_type),
                   tuple((name, getattr(ref, name)) for name in PIXEL_FIELDS))

    @classmethod
    def for_model(cls, model: LdmModel, request: Request, n_max: int) -> ReferenceKey:
        """The key of a reference rendered by ``model`` in this process (size and sampler resolved)."""
        resolved = model.resolve(request.reference(n_max))
        return cls.of(resolved, n_max, model=model.fingerprint(), dtype=str(model.dtype), device_type=model.device.type)

    @classmethod
    def for_engine(cls, engine_info: Mapping[str, Any], request: Request, n_max: int) -> ReferenceKey:
        """The key of a reference rendered by a node whose engine reported ``engine_info`` (``model_fingerprint``,
        ``dtype``, ``device``)."""
        model = engine_info.get("model_fingerprint", engine_info.get("model", ""))
        device_type = str(engine_info.get("device", "")).split(":")[0]
        return cls.of(request, n_max, model=str(model), dtype=str(engine_info.get("dtype", "")),
                      device_type=device_type)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:24]


class ReferenceCache:
    """Reference images (``uint8 [H, W, 3]``) computed once: in memory and as ``<digest>.png`` under ``root``.

    A file is trusted only when the key stored in it equals the key asked for; an unreadable file, or one holding
    another key, is recomputed (with a warning) and replaced atomically. A file that cannot be written is logged and
    the reference kept in memory.

    Parameters
    ----------
    root : str or Path
        Cache folder (created on first write), e.g. ``RUN_DIR/references``.

    Attributes
    ----------
    computed : int
        References this cache computed (not read back).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.computed = 0
        self._memory: dict[ReferenceKey, np.ndarray] = {}

    def path_for(self, key: ReferenceKey) -> Path:
        return self.root / f"{key.digest()}.png"

    def get(self, key: ReferenceKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The reference of ``key``: from memory, from its file, or ``compute()`` (stored before it is returned)."""
        image = self._memory.get(key)
        if image is None:
            image = self._read(key)
        if image is None:
            image = _checked(compute())
            self._write(key, image)
            self.computed += 1
        self._memory[key] = image
        return image

    def _read(self, key: ReferenceKey) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                # The text is compared, never parsed: we wrote it with to_json, and a hostile chunk stays inert.
                if img.info.get(_KEY_CHUNK) != key.to_json():
                    log.warning("reference cache %s holds another key; recomputing", path)
                    return None
                return np.array(img.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            log.warning("reference cache %s is unreadable (%s); recomputing", path, exc)
            return None

    def _write(self, key: ReferenceKey, image: np.ndarray) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_png(self.path_for(key), image, {_KEY_CHUNK: key.to_json()})
        except OSError as exc:  # the reference is in memory: a full disk or a blocked path costs only a recompute later
            log.warning("reference cache cannot store %s (%s); kept in memory only", self.path_for(key), exc)


def _checked(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a reference must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image)


def compute_reference(model: LdmModel, request: Request, n_max: int) -> torch.Tensor:
    """Generate the reference image ``[1, 3, H, W]`` float32 in [0, 1] (on the CPU), always decoded with the
    pipeline's own VAE (a model loaded with a distilled UE decoder still has the stock reference)."""
    from megbed.testbed.ldm.runner import run_split

    return run_split(request.reference(n_max), model, scheme="ue_local",
                     ue_decoder=model.base_decoder).image.float().cpu()


def local_reference(model: LdmModel, request: Request, n_max: int, cache: ReferenceCache) -> torch.Tensor:
    """``request``'s reference rendered by ``model`` in this process, through ``cache``: ``[1, 3, H, W]`` float32
    in [0, 1] on the CPU, at the 8 bits a campaign scores against."""
    from megbed.testbed.ldm.stages import image_to_uint8, uint8_to_image

    key = ReferenceKey.for_model(model, request, n_max)
    return uint8_to_image(cache.get(key, lambda: image_to_uint8(compute_reference(model, request, n_max))))
