"""The testbed's messages: frame kinds, their meta fields, and the request configuration they carry.

Every message is a :class:`megwire.Frame`. This module names the kinds, builds them, and validates the meta of the
ones a node receives, so that a handler never indexes an unchecked dict. A bad field raises
:class:`ProtocolError` naming it; the node answers with an ``error`` frame and keeps serving.

Flow (UE requests, ES answers)::

    orchestrator --generate--> UE --request--> [broker] --> ES
    ES --handoff | image--> [broker: channel] --> UE --result--> orchestrator
    orchestrator --reference--> ES --reference_image--> orchestrator      (quality references, direct)
    orchestrator --heartbeat | hello | clock_sync--> any node              (direct control connections)

Correlation: every client call carries ``meta["msg_id"]``; the server loop copies it into the reply, so a client
can drop stale replies (a reply that arrives after its call timed out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from megbed.megwire import Frame
from megbed.testbed.request import MAX_ID_CHARS, Request, RequestError

# Frame kinds.
HEARTBEAT = "heartbeat"
HELLO = "hello"
CLOCK_SYNC = "clock_sync"
GENERATE = "generate"  # orchestrator -> UE
REQUEST = "request"  # UE -> ES
HANDOFF = "handoff"  # ES -> UE (MEG)
IMAGE = "image"  # ES -> UE (CEG)
RESULT = "result"  # UE -> orchestrator
REFERENCE = "reference"  # orchestrator -> ES
REFERENCE_IMAGE = "reference_image"  # ES -> orchestrator
ERROR = "error"
CANCEL = "cancel"  # orchestrator -> UE: stop waiting for the ES on this request (the ES died)

MAX_REQUEST_ID_CHARS = MAX_ID_CHARS

# Error codes carried in error frames' meta["code"].
CODE_MALFORMED = "malformed"
CODE_VERSION = "version"
CODE_OVERSIZED = "oversized"
CODE_UNKNOWN_KIND = "unknown_kind"
CODE_BAD_REQUEST = "bad_request"
CODE_BUSY = "busy"
CODE_INTERNAL = "internal"
CODE_TIMEOUT = "timeout"
CODE_UPSTREAM = "upstream"
CODE_CANCELLED = "cancelled"


class ProtocolError(ValueError):
    """A frame is well formed but its content is not what its kind requires; the message names the field."""

    def __init__(self, message: str, *, request_id: str | None = None, code: str = CODE_BAD_REQUEST) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code


def classify_frame_error(message: str) -> str:
    """Error code for a :class:`megwire.FrameError` message (so the sender can tell *why* it was refused)."""
    text = message.lower()
    if "version mismatch" in text:
        return CODE_VERSION
    if "exceed" in text or "oversized" in text:
        return CODE_OVERSIZED
    return CODE_MALFORMED


# --- typed field access --------------------------------------------------------------------------------------------


def _req(meta: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in meta:
        raise ProtocolError(f"{where}: missing field {key!r}", request_id=_rid(meta))
    value = meta[key]
    # bool is an int subclass: refuse it where a number is expected.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProtocolError(f"{where}: field {key!r} must be {_names(kinds)}, got a bool", request_id=_rid(meta))
    if not isinstance(value, kinds):
        raise ProtocolError(
            f"{where}: field {key!r} must be {_names(kinds)}, got {type(value).__name__}", request_id=_rid(meta)
        )
    return value


def _names(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(k.__name__ for k in kinds)


def _rid(meta: Mapping[str, Any]) -> str | None:
    rid = meta.get("request_id") if isinstance(meta, Mapping) else None
    return rid if isinstance(rid, str) else None


# --- the request ----------------------------------------------------------------------------------------------------

# A request is a :class:`megbed.testbed.request.Request` (the contract: its fields are its dataset columns); it validates
# itself, and :func:`parse_request_meta` turns its RequestError into this module's ProtocolError.


@dataclass(frozen=True)
class RequestBounds:
    """What one node agrees to compute: requests outside these are refused before any work.

    Attributes
    ----------
    max_side_px : int
        Largest image height / width (px).
    max_pixels : int
        Largest height x width (px).
    max_steps : int
        Most denoising steps N (a reference's N_max included).
    """

    max_side_px: int
    max_pixels: int
    max_steps: int = 200

    @classmethod
    def for_native(cls, native_px: int, *, max_steps: int = 200, side_factor: int = 2) -> RequestBounds:
        """Safe defaults for a model whose native resolution is ``native_px``: sides up to ``side_factor`` x
        native (square at most)."""
        side = int(native_px) * int(side_factor)
        return cls(max_side_px=side, max_pixels=side * side, max_steps=int(max_steps))

    def check(self, spec: Request, native_px: int, *, n_steps: int | None = None) -> None:
        """Raise :class:`ProtocolError` when ``spec`` (or a reference of ``n_steps``) is over a bound."""
        rid = spec.request_id
        h = spec.height_px or native_px
        w = spec.width_px or native_px
        if h > self.max_side_px or w > self.max_side_px or h * w > self.max_pixels:
            raise ProtocolError(f"{h}x{w} px is over this node's bounds (sides <= {self.max_side_px} px, "
                                f"<= {self.max_pixels} px in all)", request_id=rid)
        steps = spec.n_steps if n_steps is None else n_steps
        if steps > self.max_steps:
            raise ProtocolError(f"{steps} denoising steps is over this node's bound of {self.max_steps}",
                                request_id=rid)


# --- stage records --------------------------------------------------------------------------------------------------

# Keys a node puts in each stage record; energy columns come from the meter as ``megbed.measurements.schema`` names.
RECORD_KEYS = ("node", "stage", "t_start_ns", "t_end_ns", "latency_s")


def check_records(value: Any, where: str, rid: str | None = None) -> list[dict[str, Any]]:
    """Validate a list of stage records carried in a frame's meta."""
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: stage records must be a list", request_id=rid)
    out = []
    for i, rec in enumerate(value):
        if not isinstance(rec, Mapping):
            raise ProtocolError(f"{where}[{i}]: stage record must be an object", request_id=rid)
        for key, kinds in (("node", str), ("stage", str), ("t_start_ns", int), ("t_end_ns", int),
                           ("latency_s", (int, float))):
            _req(rec, key, kinds, f"{where}[{i}]")
        if rec["t_end_ns"] < rec["t_start_ns"]:
            raise ProtocolError(f"{where}[{i}]: t_end_ns before t_start_ns", request_id=rid)
        out.append(dict(rec))
    return out


# --- builders -------------------------------------------------------------------------------------------------------


def image_to_buffer(image: Any) -> np.ndarray:
    """An image as a ``uint8 [H, W, 3]`` array (accepts PIL images, float arrays in [0, 1], uint8 arrays)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        values = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=0.0)
        array = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W, C] with C in (1, 3, 4), got shape {array.shape}")
    return np.ascontiguousarray(array)


def generate_frame(spec: Request) -> Frame:
    return Frame(GENERATE, meta={"request_id": spec.request_id, "request": spec.to_meta()})


def request_frame(spec: Request, t_send_ns: int) -> Frame:
    # The link condition rides along (as channel_emu spells it) so the broker can apply it to the answer without
    # knowing the campaign.
    meta: dict[str, Any] = {"request_id": spec.request_id, "request": spec.to_meta(), "link": spec.link_meta(),
                            "t_send_ns": int(t_send_ns)}
    return Frame(REQUEST, meta=meta)


def reference_frame(spec: Request) -> Frame:
    return Frame(REFERENCE, meta={"request_id": spec.request_id, "request": spec.to_meta()})


def parse_request_meta(frame: Frame) -> Request:
    """The :class:`~megbed.testbed.request.Request` of a ``generate``, ``request`` or ``reference`` frame.

    Raises
    ------
    ProtocolError
        The request's own :class:`~megbed.testbed.request.RequestError` (naming the field), an empty ``request_id``, a
        MEG / CEG request without a link, or a frame ``link`` / ``request_id`` that differs from the request's.
    """
    meta = frame.meta
    rid = _rid(meta)
    where = f"{frame.kind}.request"
    if "request" not in meta:
        raise ProtocolError(f"{frame.kind}: missing field 'request'", request_id=rid)
    try:
        spec = Request.from_meta(meta["request"])
    except RequestError as exc:
        raise ProtocolError(f"{where}: {exc}", request_id=exc.request_id) from None
    if not spec.request_id:
        raise ProtocolError(f"{where}: field 'request_id' must be 1..{MAX_ID_CHARS} characters")
    if spec.scheme != "ue_local" and not spec.has_link:
        raise ProtocolError(f"{where}: scheme {spec.scheme!r} needs a link (link_model, tx_mode and distance_m or "
                            "snr_db_set)", request_id=spec.request_id)
    # The broker applies meta["link"]; the dataset records the request's: a frame where they differ is refused.
    if "link" in meta and meta["link"] != spec.link_meta():
        raise ProtocolError(f"{frame.kind}: field 'link' differs from the request's link", request_id=spec.request_id)
    if rid is not None and rid != spec.request_id:
        raise ProtocolError(f"{frame.kind}: request_id {rid!r} differs from request.request_id", request_id=rid)
    return spec


def parse_result(frame: Frame) -> dict[str, Any]:
    """Validate a ``result`` frame; returns its meta with checked records (and the image array under ``image``)."""
    if frame.kind != RESULT:
        raise ProtocolError(f"expected a 'result' frame, got {frame.kind!r}", request_id=_rid(frame.meta))
    meta = dict(frame.meta)
    rid = _req(meta, "request_id", str, "result")
    meta["es_records"] = check_records(meta.get("es_records", []), "result.es_records", rid)
    meta["ue_records"] = check_records(meta.get("ue_records", []), "result.ue_records", rid)
    image = frame.buffers.get("image")
    if image is None or image.dtype != np.uint8 or image.ndim != 3:
        raise ProtocolError("result: buffer 'image' must be uint8 [H, W, C]", request_id=rid)
    meta["image"] = image
    return meta
