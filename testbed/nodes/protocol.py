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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from megbed.channel_emu.config import MODELS as LINK_MODELS
from megbed.channel_emu.config import MODES as TX_MODES
from megbed.channel_emu.config import SNR_DB_RANGE
from megbed.megwire import Frame
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS

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

SCHEMES = ("meg", "ceg", "ue_local")
MAX_REQUEST_ID_CHARS = 256
MAX_DISTANCE_M = 1e7
WIRE_DTYPES = ("float16", "float32")

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


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def _finite(value: float, key: str, where: str, lo: float, hi: float, rid: str | None) -> float:
    try:
        value = float(value)
    except OverflowError:  # a JSON integer too large for a float
        raise ProtocolError(f"{where}: field {key!r} outside [{lo}, {hi}]", request_id=rid) from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ProtocolError(f"{where}: field {key!r}={value!r} outside [{lo}, {hi}]", request_id=rid)
    return value


# --- the request configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkSpec:
    """The link condition a request is sent under (read by the channel broker from the ES's answer).

    Attributes
    ----------
    link_model : str
        Small-scale model (``awgn``, ``rayleigh_block``, ``rayleigh_symbol``, ``tdl_a`` .. ``tdl_e``).
    tx_mode : str
        ``analog`` | ``coded`` | ``abstraction``.
    distance_m : float or None
        ES-UE distance (m) for a path-loss link; None for a fixed-SNR link.
    snr_db : float or None
        Fixed SNR (dB); None for a distance-based link.
    """

    link_model: str = "awgn"
    tx_mode: str = "analog"
    distance_m: float | None = None
    snr_db: float | None = None

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Any, where: str = "link", rid: str | None = None) -> LinkSpec:
        if not isinstance(meta, Mapping):
            raise ProtocolError(f"{where}: must be an object", request_id=rid)
        # The channel broker's vocabulary and ranges (megbed.channel_emu.config), checked here so a node refuses a
        # request the broker would refuse before computing anything.
        model = _req(meta, "link_model", str, where)
        if model not in LINK_MODELS:
            raise ProtocolError(f"{where}: field 'link_model'={_short(model)} is not one of {LINK_MODELS}",
                                request_id=rid)
        mode = _req(meta, "tx_mode", str, where)
        if mode not in TX_MODES:
            raise ProtocolError(f"{where}: field 'tx_mode'={_short(mode)} is not one of {TX_MODES}", request_id=rid)
        dist, snr = meta.get("distance_m"), meta.get("snr_db")
        if dist is not None:
            dist = _finite(_req(meta, "distance_m", (int, float), where), "distance_m", where, 0.0, MAX_DISTANCE_M,
                           rid)
            if dist <= 0:
                raise ProtocolError(f"{where}: field 'distance_m'={dist} must be > 0", request_id=rid)
        if snr is not None:
            snr = _finite(_req(meta, "snr_db", (int, float), where), "snr_db", where, *SNR_DB_RANGE, rid)
        if (dist is None) == (snr is None):
            raise ProtocolError(f"{where}: exactly one of distance_m and snr_db must be set", request_id=rid)
        return cls(model, mode, dist, snr)


@dataclass(frozen=True)
class RequestSpec:
    """One generation request as it travels between the nodes.

    Attributes
    ----------
    request_id : str
        Unique per request (a grid point x prompt x seed x repetition).
    scheme : str
        ``meg`` (split: ES runs k of N steps, merges, sends the latent), ``ceg`` (ES generates the image and sends it)
        or ``ue_local`` (the UE does everything).
    prompt, negative_prompt : str
        Text prompts.
    seed : int
        Generation seed.
    height_px, width_px : int or None
        Image size (px); None: the model's native size.
    guidance_scale : float
        Classifier-free guidance scale.
    scheduler : str
        Scheduler name (as the runtime knows it) or ``""`` for the model folder's own.
    n_steps : int
        Total denoising steps N.
    es_steps : int
        Steps run on the ES, k (k == N: the UE only decodes). Ignored by ``ceg`` (ES runs all) and ``ue_local``.
    merge_ratio : float
        Feature-merging ratio beta in [0, 0.75] (MEG only).
    merge_method : str
        Feature-merging method (``megbed.testbed.ldm.merge_methods.MERGE_METHODS``; MEG only).
    tome_ratio_es, tome_ratio_ue : float
        tomesd ratios in the U-Net on each node.
    wire_dtype : str
        Latent dtype on the wire.
    link : LinkSpec or None
        Link condition (None for ``ue_local``).
    point_id : str
        The grid point the request belongs to.
    repetition : int
        Repetition index.
    decoder : str
        The UE decoder for MEG / UE-local (``base``, ``distilled`` or a decoder folder); "" = the UE's default.
        The UE reports the one it used in its result (``decoder``), which is what the dataset records.
    """

    request_id: str
    scheme: str
    prompt: str
    seed: int
    n_steps: int
    es_steps: int
    merge_ratio: float = 0.0
    merge_method: str = DEFAULT_MERGE_METHOD
    negative_prompt: str = ""
    height_px: int | None = None
    width_px: int | None = None
    guidance_scale: float = 5.0
    scheduler: str = ""
    tome_ratio_es: float = 0.0
    tome_ratio_ue: float = 0.0
    wire_dtype: str = "float16"
    link: LinkSpec | None = None
    point_id: str = ""
    repetition: int = 0
    decoder: str = ""
    vae_tiling: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        out = asdict(self)
        out["link"] = None if self.link is None else self.link.to_meta()
        return out

    @classmethod
    def from_meta(cls, meta: Any, where: str = "request") -> RequestSpec:
        """Validate a request's fields; raises :class:`ProtocolError` naming the first bad one."""
        if not isinstance(meta, Mapping):
            raise ProtocolError(f"{where}: request must be an object")
        rid = _req(meta, "request_id", str, where)
        if not rid or len(rid) > MAX_REQUEST_ID_CHARS:
            raise ProtocolError(f"{where}: field 'request_id' must be 1..{MAX_REQUEST_ID_CHARS} characters",
                                request_id=None)
        scheme = _req(meta, "scheme", str, where)
        if scheme not in SCHEMES:
            raise ProtocolError(f"{where}: field 'scheme'={_short(scheme)} is not one of {SCHEMES}", request_id=rid)
        n = _req(meta, "n_steps", int, where)
        if not 1 <= n <= 1000:
            raise ProtocolError(f"{where}: field 'n_steps'={n} outside [1, 1000]", request_id=rid)
        k = _req(meta, "es_steps", int, where)
        if not 0 <= k <= n:
            raise ProtocolError(f"{where}: field 'es_steps'={k} outside [0, n_steps={n}]", request_id=rid)
        beta = _finite(_req(meta, "merge_ratio", (int, float), where), "merge_ratio", where, 0.0, 0.75, rid)
        method = meta.get("merge_method", DEFAULT_MERGE_METHOD)
        if not isinstance(method, str) or method not in MERGE_METHODS:
            raise ProtocolError(f"{where}: field 'merge_method'={method!r} is not one of {MERGE_METHODS}",
                                request_id=rid)
        height = None if meta.get("height_px") is None else _req(meta, "height_px", int, where)
        width = None if meta.get("width_px") is None else _req(meta, "width_px", int, where)
        for key, value in (("height_px", height), ("width_px", width)):
            if value is not None and (not 8 <= value <= 8192 or value % 8):
                raise ProtocolError(f"{where}: field {key!r}={value} must be a multiple of 8 in [8, 8192]",
                                    request_id=rid)
        wire = _req(meta, "wire_dtype", str, where)
        if wire not in WIRE_DTYPES:
            raise ProtocolError(f"{where}: field 'wire_dtype'={_short(wire)} is not one of {WIRE_DTYPES}",
                                request_id=rid)
        link_meta = meta.get("link")
        link = None if link_meta is None else LinkSpec.from_meta(link_meta, f"{where}.link", rid)
        if scheme != "ue_local" and link is None:
            raise ProtocolError(f"{where}: scheme {scheme!r} needs a 'link'", request_id=rid)
        extra = meta.get("extra", {})
        if not isinstance(extra, Mapping):
            raise ProtocolError(f"{where}: field 'extra' must be an object", request_id=rid)
        decoder = meta.get("decoder", "")
        if not isinstance(decoder, str) or len(decoder) > 256 or "\x00" in decoder:
            raise ProtocolError(f"{where}: field 'decoder' must be a string of at most 256 characters",
                                request_id=rid)
        vae_tiling = meta.get("vae_tiling", False)
        if not isinstance(vae_tiling, bool):
            raise ProtocolError(f"{where}: field 'vae_tiling' must be true or false", request_id=rid)
        seed = _req(meta, "seed", int, where)
        if not 0 <= seed < 2**63:
            raise ProtocolError(f"{where}: field 'seed'={seed} outside [0, 2**63)", request_id=rid)
        return cls(
            request_id=rid,
            scheme=scheme,
            prompt=_req(meta, "prompt", str, where),
            negative_prompt=_req(meta, "negative_prompt", str, where),
            seed=seed,
            height_px=height,
            width_px=width,
            guidance_scale=_finite(_req(meta, "guidance_scale", (int, float), where), "guidance_scale", where,
                                   0.0, 100.0, rid),
            scheduler=_req(meta, "scheduler", str, where),
            n_steps=n,
            es_steps=k,
            merge_ratio=beta,
            merge_method=method,
            tome_ratio_es=_finite(_req(meta, "tome_ratio_es", (int, float), where), "tome_ratio_es", where,
                                  0.0, 0.75, rid),
            tome_ratio_ue=_finite(_req(meta, "tome_ratio_ue", (int, float), where), "tome_ratio_ue", where,
                                  0.0, 0.75, rid),
            wire_dtype=wire,
            link=link,
            point_id=_req(meta, "point_id", str, where),
            repetition=_req(meta, "repetition", int, where),
            decoder=decoder,
            vae_tiling=vae_tiling,
            extra=dict(extra),
        )

    def generation_request(self, *, reference_n_steps: int | None = None) -> Any:
        """The runtime's :class:`megbed.testbed.ldm.request.GenerationRequest` for this request.

        ``reference_n_steps`` gives the quality reference instead: N_max steps, beta = 0, no tomesd, all on one node.
        """
        from megbed.testbed.ldm.request import GenerationRequest

        common = dict(prompt=self.prompt, seed=self.seed, negative_prompt=self.negative_prompt or None,
                      height=self.height_px, width=self.width_px, guidance_scale=self.guidance_scale,
                      scheduler=self.scheduler or None, wire_dtype=self.wire_dtype, request_id=self.request_id)
        if reference_n_steps is not None:
            return GenerationRequest(num_steps=reference_n_steps, split_step=None, merge_ratio=0.0, **common)
        if self.scheme == "meg":
            return GenerationRequest(num_steps=self.n_steps, split_step=self.es_steps, merge_ratio=self.merge_ratio,
                                     merge_method=self.merge_method, tome_ratio_es=self.tome_ratio_es, tome_ratio_ue=self.tome_ratio_ue, **common)
        if self.scheme == "ceg":
            return GenerationRequest(num_steps=self.n_steps, split_step=None, merge_ratio=0.0,
                                     tome_ratio_es=self.tome_ratio_es, **common)
        return GenerationRequest(num_steps=self.n_steps, split_step=None, merge_ratio=0.0,
                                 tome_ratio_es=self.tome_ratio_ue, tome_ratio_ue=self.tome_ratio_ue, **common)

    def config_columns(self) -> dict[str, Any]:
        """The request's configuration as dataset columns (``megbed.measurements.schema`` names)."""
        link = self.link
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "n_steps": self.n_steps,
            "es_steps": self.es_steps if self.scheme == "meg" else (self.n_steps if self.scheme == "ceg" else 0),
            "merge_ratio": self.merge_ratio if self.scheme == "meg" else 0.0,
            "merge_method": self.merge_method if self.scheme == "meg" else "none",
            "tome_ratio_es": self.tome_ratio_es,
            "tome_ratio_ue": self.tome_ratio_ue,
            "guidance_scale": self.guidance_scale,
            "scheduler": self.scheduler,
            "height_px": self.height_px,
            "width_px": self.width_px,
            "wire_dtype": self.wire_dtype,
            "vae_tiling": bool(self.vae_tiling),
            "link_model": link.link_model if link else "none",
            "tx_mode": link.tx_mode if link else "none",
            "distance_m": float("nan") if link is None or link.distance_m is None else link.distance_m,
            "snr_db_set": float("nan") if link is None or link.snr_db is None else link.snr_db,
        }


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

    def check(self, spec: RequestSpec, native_px: int, *, n_steps: int | None = None) -> None:
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


def generate_frame(spec: RequestSpec) -> Frame:
    return Frame(GENERATE, meta={"request_id": spec.request_id, "request": spec.to_meta()})


def request_frame(spec: RequestSpec, t_send_ns: int) -> Frame:
    # The link condition rides along so the broker can apply it to the answer without knowing the campaign.
    meta: dict[str, Any] = {"request_id": spec.request_id, "request": spec.to_meta(), "t_send_ns": int(t_send_ns)}
    return Frame(REQUEST, meta=meta)


def reference_frame(spec: RequestSpec) -> Frame:
    return Frame(REFERENCE, meta={"request_id": spec.request_id, "request": spec.to_meta()})


def parse_request_meta(frame: Frame) -> RequestSpec:
    """The :class:`RequestSpec` of a ``generate``, ``request`` or ``reference`` frame."""
    meta = frame.meta
    rid = _rid(meta)
    if "request" not in meta:
        raise ProtocolError(f"{frame.kind}: missing field 'request'", request_id=rid)
    spec = RequestSpec.from_meta(meta["request"], f"{frame.kind}.request")
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
