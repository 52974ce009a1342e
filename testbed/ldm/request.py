"""One generation request: everything both nodes need to produce (and reproduce) an image.

The ES resolves the model-dependent defaults (resolution, scheduler) before anything leaves it, so the request that
travels in the handoff header is complete: the UE rebuilds its half from it alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from megbed.testbed.ldm.errors import LdmError, RequestError
from megbed.testbed.ldm.merging import (
    DEFAULT_MERGE_METHOD,
    MAX_BETA,
    MERGE_METHODS,
    MergeError,
    check_beta,
    check_method,
)

WIRE_DTYPES = ("float16", "float32")
# tomesd's own bound for 2x2 strides: at most 1 - 1/(sx*sy) of the tokens can be merged.
MAX_TOME_RATIO = 0.75
MAX_SEED = 2**63


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate and how to split it.

    Attributes
    ----------
    prompt : str
        Text prompt.
    num_steps : int
        N, denoising steps of the schedule (>= 1).
    split_step : int or None
        k, steps the ES runs (0 <= k <= N); ``None`` means k = N (the paper: the UE only un-merges and decodes).
        With k < N the UE finishes steps k..N, computing its own text embeddings.
    merge_ratio : float
        beta in [0, 0.75], share of latent tokens merged away before sending.
    merge_method : str
        How tokens are merged (:data:`megbed.testbed.ldm.merging.MERGE_METHODS`): ``global_l2`` (default), ``global`` (the
        paper's rule) or ``window`` (window-local).
    seed : int
        Seed of the initial noise, of ancestral samplers' noise and of the merge layout (0 <= seed < 2**63).
    negative_prompt : str or None
        Negative prompt (``None``: the pipeline's default, empty text or zeros for SDXL).
    height, width : int or None
        Image size in pixels; ``None``: the model's native size.
    guidance_scale : float
        Classifier-free guidance scale (CFG runs when > 1 and the U-Net has no guidance embedding).
    scheduler : str or None
        Sampler name from :data:`megbed.testbed.ldm.schedulers.SCHEDULERS`; ``None``: the model's own (when supported).
    tome_ratio_es, tome_ratio_ue : float
        tomesd token-merging ratio inside the U-Net on each node, in [0, 0.75] (0 = off).
    wire_dtype : str
        ``"float16"`` or ``"float32"``: dtype of the latent values on the wire.
    request_id : str
        Caller's identifier, carried through the handoff.
    """

    prompt: str
    num_steps: int = 8
    split_step: int | None = None
    merge_ratio: float = 0.0
    seed: int = 0
    merge_method: str = DEFAULT_MERGE_METHOD
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    guidance_scale: float = 7.5
    scheduler: str | None = None
    tome_ratio_es: float = 0.0
    tome_ratio_ue: float = 0.0
    wire_dtype: str = "float16"
    request_id: str = ""

    def __post_init__(self) -> None:
        from megbed.testbed.ldm.schedulers import SCHEDULERS

        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise RequestError("negative_prompt must be a string or None")
        if not _is_int(self.num_steps) or self.num_steps < 1:
            raise RequestError(f"number of steps N={self.num_steps!r} must be an integer >= 1")
        if self.split_step is not None:
            if not _is_int(self.split_step) or self.split_step < 0:
                raise RequestError(f"split step k={self.split_step!r} must be an integer >= 0")
            if self.split_step > self.num_steps:
                raise RequestError(f"split step k={self.split_step} exceeds the number of steps N={self.num_steps}")
        try:
            object.__setattr__(self, "merge_ratio", check_beta(self.merge_ratio))
            check_method(self.merge_method)
        except MergeError as exc:
            raise RequestError(str(exc)) from exc
        if not _is_int(self.seed) or not 0 <= self.seed < MAX_SEED:
            raise RequestError(f"seed={self.seed!r} must be an integer in [0, 2**63)")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise RequestError(f"{name}={value!r} must be a positive integer number of pixels")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0:
            raise RequestError(f"guidance scale {g!r} must be a finite number >= 0")
        object.__setattr__(self, "guidance_scale", float(g))
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise RequestError(f"unknown scheduler {self.scheduler!r}; known: {', '.join(sorted(SCHEDULERS))}")
        for name in ("tome_ratio_es", "tome_ratio_ue"):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            if not ok or not 0.0 <= value <= MAX_TOME_RATIO:
                raise RequestError(f"tomesd ratio {name}={value!r} is outside [0, {MAX_TOME_RATIO}]")
            object.__setattr__(self, name, float(value))
        if self.wire_dtype not in WIRE_DTYPES:
            raise RequestError(f"wire dtype {self.wire_dtype!r} is not one of {', '.join(WIRE_DTYPES)}")
        if not isinstance(self.request_id, str):
            raise RequestError("request_id must be a string")

    @property
    def k(self) -> int:
        """Steps the ES runs (``split_step``, or N when unset)."""
        return self.num_steps if self.split_step is None else self.split_step

    @property
    def ue_denoises(self) -> bool:
        """Whether the UE runs denoising steps (k < N)."""
        return self.k < self.num_steps

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable form (what the handoff header carries)."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> GenerationRequest:
        """Inverse of :meth:`to_meta`; unknown keys are an error (a newer sender), missing ones take defaults."""
        if not isinstance(meta, dict):
            raise RequestError(f"request must be a JSON object, got {type(meta).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(meta) - known)
        if unknown:
            raise RequestError(f"request has unknown fields {unknown}")
        if "prompt" not in meta:
            raise RequestError("request has no prompt")
        return cls(**meta)


__all__ = ["DEFAULT_MERGE_METHOD", "MAX_BETA", "MERGE_METHODS", "MAX_TOME_RATIO", "WIRE_DTYPES", "GenerationRequest", "LdmError", "RequestError"]
