"""The ES -> UE handoff: a versioned megwire frame of kind ``"handoff"``.

Header (``frame.meta``, JSON):

* ``handoff_version``: format of this object (:data:`HANDOFF_VERSION`), separate from megwire's protocol version;
  a receiver rejects any other version.
* ``request``: the resolved :class:`~megbed.testbed.request.Request` (prompt, negative prompt, guidance,
  seed, N, k, beta, tomesd ratios, ...). The UE computes its own text embeddings from it; CFG embeddings are never
  sent (they would cost ~7x the latent).
* ``step`` / ``num_steps``: k and N. ``merge``: the merged latent's geometry (shape, beta, seed, r, method).
* ``sampler``: class, config, scalar history and list masks of the sampler when the UE must finish steps k..N
  (``None`` when k = N: the UE only decodes).
* ``channel_roles``: ``{buffer name: "values" | "side"}``. ``values`` buffers are float latent data the link may
  carry as analog symbols and corrupt (merged tokens, solver history); ``side`` buffers must arrive exactly (merge
  map, timesteps, generator state).
* ``delivery``: written by the channel emulator (its delivery record); kept as is.

Buffers (raw little-endian arrays, no pickle): ``merge.tokens`` (wire dtype), ``merge.map`` (uint8), for the global
merge methods ``merge.dst`` (uint8, the packed destination index of every merged source), then the
sampler's ``solver.*`` buffers. ``len(handoff.to_bytes())`` is what the link carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from megbed.megwire import Frame, FrameError, pack, packed_size, unpack
from megbed.testbed.ldm.errors import HandoffError
from megbed.testbed.ldm.merging import MergedLatent, MergeError
from megbed.testbed.ldm.schedulers import SamplerState, SamplerStateError
from megbed.testbed.request import Request, RequestError

HANDOFF_KIND = "handoff"
HANDOFF_VERSION = 2  # 2: merge methods (header "merge.method", the "merge.dst" index buffer)
MERGE_PREFIX = "merge."
SOLVER_PREFIX = "solver."


@dataclass
class Handoff:
    """What the ES sends to the UE.

    Attributes
    ----------
    request : Request
        The resolved request (model defaults filled in).
    merged : MergedLatent
        The latent after ``request.es_steps`` steps, merged at ``request.merge_ratio``.
    sampler_meta : dict or None
        JSON part of the sampler snapshot (None when k = N).
    sampler_buffers : dict[str, numpy.ndarray]
        Raw part of the sampler snapshot (solver history, generator state).
    sampler_roles : dict[str, str]
        Channel role of each sampler buffer.
    delivery : dict or None
        The channel emulator's delivery record, when the frame went through it.
    """

    request: Request
    merged: MergedLatent
    sampler_meta: dict[str, Any] | None = None
    sampler_buffers: dict[str, np.ndarray] = field(default_factory=dict)
    sampler_roles: dict[str, str] = field(default_factory=dict)
    delivery: dict[str, Any] | None = None

    @classmethod
    def build(cls, request: Request, merged: MergedLatent, sampler: SamplerState | None) -> Handoff:
        """Assemble a handoff at step ``request.es_steps``; the sampler snapshot is taken only when the UE must denoise.

        Raises
        ------
        HandoffError
            The sampler is missing, or not at step k, while k < N.
        """
        if merged.num_merged and merged.method != request.merge_method:
            raise HandoffError(f"the latent was merged with merge method {merged.method!r}, "
                               f"the request asks for {request.merge_method!r}")
        if not request.ue_denoises:
            return cls(request, merged)
        if sampler is None:
            raise HandoffError(f"k={request.es_steps} < N={request.n_steps} but no sampler state was given")
        if (sampler.step, sampler.num_steps) != (request.es_steps, request.n_steps):
            raise HandoffError(f"sampler is at step {sampler.step} of {sampler.num_steps}, "
                               f"the request splits at k={request.es_steps} of N={request.n_steps}")
        meta, buffers, roles = sampler.snapshot(request.wire_dtype, prefix=SOLVER_PREFIX)
        return cls(request, merged, meta, buffers, roles)

    @property
    def step(self) -> int:
        return self.request.es_steps

    @property
    def num_steps(self) -> int:
        return self.request.n_steps

    @property
    def channel_roles(self) -> dict[str, str]:
        """``{buffer: "values" | "side"}`` for every buffer of the frame."""
        side = {name: "side" for name in MergedLatent.side_buffer_names(self.merged.method, MERGE_PREFIX)}
        return {f"{MERGE_PREFIX}tokens": "values", **side, **self.sampler_roles}

    def resume_sampler(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> SamplerState:
        """The sampler at step k on this node (only when k < N)."""
        if self.sampler_meta is None:
            raise HandoffError(f"the handoff carries no sampler state (k={self.step} = N={self.num_steps})")
        try:
            return SamplerState.restore(self.sampler_meta, self.sampler_buffers, device=device, dtype=dtype,
                                        prefix=SOLVER_PREFIX)
        except SamplerStateError as exc:
            raise HandoffError(f"handoff sampler state: {exc}") from exc

    # --- frames and bytes -------------------------------------------------------------------------------------

    def to_frame(self) -> Frame:
        """The megwire frame (kind ``"handoff"``)."""
        meta: dict[str, Any] = {
            "handoff_version": HANDOFF_VERSION,
            "request_id": self.request.request_id,
            "request": self.request.runtime_meta(),
            "step": self.step,
            "num_steps": self.num_steps,
            "merge": self.merged.to_meta(),
            "sampler": self.sampler_meta,
            "channel_roles": self.channel_roles,
        }
        if self.delivery is not None:
            meta["delivery"] = self.delivery
        buffers = {**self.merged.to_buffers(self.request.wire_dtype, prefix=MERGE_PREFIX), **self.sampler_buffers}
        return Frame(kind=HANDOFF_KIND, meta=meta, buffers=buffers)

    @classmethod
    def from_frame(cls, frame: Frame, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Handoff:
        """Parse and validate a handoff frame; merged tokens land on ``device`` in ``dtype``.

        Raises
        ------
        HandoffError
            Wrong frame kind, another handoff version, missing or inconsistent fields, merge side information
            that does not fit (truncated or extended index buffer, a destination index out of range).
        """
        if frame.kind != HANDOFF_KIND:
            raise HandoffError(f"expected a {HANDOFF_KIND!r} frame, got {frame.kind!r}")
        meta = frame.meta
        version = meta.get("handoff_version")
        if version is None:
            raise HandoffError("not a handoff: the header has no handoff_version")
        if version != HANDOFF_VERSION:
            raise HandoffError(f"handoff format version mismatch: frame has v{version}, "
                               f"this node speaks v{HANDOFF_VERSION}")
        try:
            request = Request.from_meta(meta["request"], runtime=True)
            if (int(meta["step"]), int(meta["num_steps"])) != (request.es_steps, request.n_steps):
                raise HandoffError(f"handoff header says step {meta['step']} of {meta['num_steps']}, "
                                   f"its request says k={request.es_steps} of N={request.n_steps}")
            merged = MergedLatent.from_buffers(meta["merge"], frame.buffers, prefix=MERGE_PREFIX,
                                               device=device, dtype=dtype)
            if merged.num_merged and merged.method != request.merge_method:
                raise HandoffError(f"handoff merge method {merged.method!r} differs from its request's "
                                   f"{request.merge_method!r}")
        except KeyError as exc:
            raise HandoffError(f"handoff header lacks {exc}") from exc
        except (RequestError, MergeError, TypeError, ValueError) as exc:
            if isinstance(exc, HandoffError):
                raise
            raise HandoffError(f"bad handoff: {exc}") from exc
        sampler_meta = meta.get("sampler")
        if request.ue_denoises and not isinstance(sampler_meta, dict):
            raise HandoffError(f"k={request.es_steps} < N={request.n_steps} but the handoff carries no sampler state")
        if not request.ue_denoises:
            sampler_meta = None
        roles = dict(meta.get("channel_roles") or {})
        sampler_buffers = {n: b for n, b in frame.buffers.items() if n.startswith(SOLVER_PREFIX)}
        sampler_roles = {n: roles.get(n, "values") for n in sampler_buffers}
        delivery = meta.get("delivery")
        if delivery is not None and not isinstance(delivery, dict):
            raise HandoffError(f"handoff delivery record must be an object, got {type(delivery).__name__}")
        return cls(request, merged, sampler_meta, sampler_buffers, sampler_roles, delivery)

    def to_bytes(self) -> bytes:
        """``megwire.pack(self.to_frame())``: header, raw buffers and a CRC-32."""
        return pack(self.to_frame())

    @property
    def nbytes(self) -> int:
        """``len(self.to_bytes())`` without building the bytes: what the link carries."""
        return packed_size(self.to_frame())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Handoff:
        """Inverse of :meth:`to_bytes`.

        Raises
        ------
        HandoffError
            Truncated or corrupted bytes (CRC), megwire or handoff version mismatch, bad fields.
        """
        try:
            frame = unpack(data)
        except HandoffError:
            raise
        except FrameError as exc:
            raise HandoffError(f"handoff bytes rejected: {exc}") from exc
        return cls.from_frame(frame, device=device, dtype=dtype)
