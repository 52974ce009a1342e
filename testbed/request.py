"""The request contract: one generation request, as campaigns build it, the wire carries it, the runtime serves it
and the dataset records it.

Every field is named as its dataset column (``megbed.measurements.schema``), so a request's configuration columns are its
fields (:meth:`Request.columns`). The request is validated once, when it is built (:meth:`Request.from_meta` builds
it from a frame's meta): a bad field raises :class:`RequestError` naming it, which nodes turn into a ``bad_request``
error frame.

Fields that do not apply to a scheme are made neutral when the request is built, as the dataset records them: a CEG
request runs all N steps on the ES (``es_steps == n_steps``) and merges nothing, a UE-local one runs none on the ES
(``es_steps == 0``) over no link; ``merge_method`` is ``"none"`` outside MEG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import replace as _replace
from operator import attrgetter
from typing import Any

from megbed.channel_emu.config import MODELS as LINK_MODELS
from megbed.channel_emu.config import MODES as TX_MODES
from megbed.channel_emu.config import SNR_DB_RANGE
from megbed.megwire.vocab import MAX_MERGE_RATIO, MAX_TOME_RATIO, SCHEMES, WIRE_DTYPES
from megbed.testbed.ldm.errors import LdmError
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS

# Samplers the runtime can stop on one node and resume on the other (megbed.testbed.ldm.schedulers builds them; a test
# keeps the two lists equal). "" in a request means the model folder's own.
SCHEDULER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "lcm")
NO_LINK = "none"  # link_model / tx_mode of a request that crosses no link (UE-local), as the dataset records it
NO_MERGE = "none"  # merge_method outside MEG
MAX_ID_CHARS = 256
MAX_STEPS = 1000
MAX_SIDE_PX = 8192
MAX_SEED = 2**63
MAX_DISTANCE_M = 1e7
MAX_GUIDANCE = 100.0


class RequestError(LdmError):
    """A request field is missing, unknown or out of its range.

    Attributes
    ----------
    field : str
        The field at fault (its dataset column name), or ``"request"`` for the whole object.
    request_id : str or None
        The request's id when it was readable.
    """

    def __init__(self, message: str, *, field: str = "request", request_id: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request (fields named as their dataset columns; defaults are the campaign defaults).

    Attributes
    ----------
    prompt, negative_prompt : str
        Text prompts (``negative_prompt`` ``""``: the pipeline's default, empty text or zeros for SDXL).
    scheme : str
        ``meg`` (the ES runs k of N steps, merges, sends the latent), ``ceg`` (the ES sends the image) or
        ``ue_local`` (the UE does everything).
    seed : int
        Seed of the initial noise, ancestral samplers' noise and the merge layout, in [0, 2**63).
    n_steps : int
        N, denoising steps, in [1, 1000].
    es_steps : int or None
        k, steps the ES runs, in [0, N]; None: k = N for MEG (the UE only decodes). Always N for CEG, 0 for UE-local.
    merge_ratio : float
        beta, share of latent tokens merged away before sending, in [0, 0.75] (MEG only).
    merge_method : str
        ``megbed.testbed.ldm.merge_methods.MERGE_METHODS`` (MEG only; ``"none"`` otherwise).
    tome_ratio_es, tome_ratio_ue : float
        tomesd ratio inside the U-Net on each node, in [0, 0.75] (0 = off).
    guidance_scale : float
        Classifier-free guidance scale, in [0, 100].
    scheduler : str
        Sampler name (:data:`SCHEDULER_NAMES`) or ``""`` for the model folder's own.
    height_px, width_px : int or None
        Image size (px), a multiple of 8 in [8, 8192]; None: the model's native size.
    wire_dtype : str
        Dtype of the latent values on the wire (``megbed.megwire.vocab.WIRE_DTYPES``).
    vae_tiling : bool
        The UE decodes in tiles (bounded memory on small boards).
    decoder : str
        The UE decoder asked for (``base``, ``distilled``, ``auto`` or a decoder folder); ``""``: the UE's default.
    link_model, tx_mode : str
        Link condition (``megbed.channel_emu.config.MODELS`` / ``MODES``), ``"none"`` for no link.
    distance_m : float or None
        ES-UE distance (m) of a path-loss link; None for a fixed-SNR link or no link.
    snr_db_set : float or None
        Fixed SNR (dB) of the link; None for a distance-based link or no link.
    request_id : str
        Unique per request (grid point x prompt x seed x repetition), at most 256 characters.
    point_id : str
        The campaign grid point the request belongs to.
    repetition : int
        Repetition index (>= 0).
    """

    prompt: str
    scheme: str = "meg"
    seed: int = 0
    n_steps: int = 8
    es_steps: int | None = None
    merge_ratio: float = 0.0
    merge_method: str = DEFAULT_MERGE_METHOD
    tome_ratio_es: float = 0.0
    tome_ratio_ue: float = 0.0
    guidance_scale: float = 5.0
    scheduler: str = ""
    negative_prompt: str = ""
    height_px: int | None = None
    width_px: int | None = None
    wire_dtype: str = "float16"
    vae_tiling: bool = False
    decoder: str = ""
    link_model: str = NO_LINK
    tx_mode: str = NO_LINK
    distance_m: float | None = None
    snr_db_set: float | None = None
    request_id: str = ""
    point_id: str = ""
    repetition: int = 0

    def __post_init__(self) -> None:
        rid = _check_request_id(self.request_id)
        put = object.__setattr__
        scheme = self.scheme
        if scheme not in SCHEMES:
            _bad("scheme", f"={_short(scheme)} is not one of {SCHEMES}", rid)
        for name in ("prompt", "negative_prompt"):
            if type(getattr(self, name)) is not str:
                _bad(name, f" must be a string, got {type(getattr(self, name)).__name__}", rid)
        _int(self.seed, "seed", 0, MAX_SEED - 1, rid)
        n = _int(self.n_steps, "n_steps", 1, MAX_STEPS, rid)
        if scheme == "meg":
            k = n if self.es_steps is None else _int(self.es_steps, "es_steps", 0, n, rid)
            beta = _number(self.merge_ratio, "merge_ratio", 0.0, MAX_MERGE_RATIO, rid)
            if self.merge_method not in MERGE_METHODS:
                _bad("merge_method", f"={_short(self.merge_method)} is not one of {MERGE_METHODS}", rid)
        else:
            if self.es_steps is not None:
                _int(self.es_steps, "es_steps", 0, n, rid)
            _number(self.merge_ratio, "merge_ratio", 0.0, MAX_MERGE_RATIO, rid)
            if self.merge_method != NO_MERGE and self.merge_method not in MERGE_METHODS:
                _bad("merge_method", f"={_short(self.merge_method)} is not one of {MERGE_METHODS}", rid)
            k, beta = (n if scheme == "ceg" else 0), 0.0
            put(self, "merge_method", NO_MERGE)
        put(self, "es_steps", k)
        put(self, "merge_ratio", beta)
        put(self, "tome_ratio_es", _number(self.tome_ratio_es, "tome_ratio_es", 0.0, MAX_TOME_RATIO, rid))
        put(self, "tome_ratio_ue", _number(self.tome_ratio_ue, "tome_ratio_ue", 0.0, MAX_TOME_RATIO, rid))
        put(self, "guidance_scale", _number(self.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE, rid))
        if self.scheduler != "" and self.scheduler not in SCHEDULER_NAMES:
            _bad("scheduler", f"={_short(self.scheduler)} is not one of {SCHEDULER_NAMES} (or \"\")", rid)
        for name in ("height_px", "width_px"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 8 <= value <= MAX_SIDE_PX or value % 8):
                _bad(name, f"={_short(value)} must be a multiple of 8 in [8, {MAX_SIDE_PX}]", rid)
        if self.wire_dtype not in WIRE_DTYPES:
            _bad("wire_dtype", f"={_short(self.wire_dtype)} is not one of {WIRE_DTYPES}", rid)
        if type(self.vae_tiling) is not bool:
            _bad("vae_tiling", " must be true or false", rid)
        for name in ("decoder", "point_id"):
            value = getattr(self, name)
            if not _is_id(value):
                _bad(name, f" must be a string of at most {MAX_ID_CHARS} characters", rid)
        _int(self.repetition, "repetition", 0, 2**31 - 1, rid)
        self._check_link(rid)

    def _check_link(self, rid: str) -> None:
        if self.scheme == "ue_local":  # no link to cross: recorded as none
            put = object.__setattr__
            put(self, "link_model", NO_LINK)
            put(self, "tx_mode", NO_LINK)
            put(self, "distance_m", None)
            put(self, "snr_db_set", None)
            return
        model, mode, dist, snr = self.link_model, self.tx_mode, self.distance_m, self.snr_db_set
        if model == NO_LINK and mode == NO_LINK and dist is None and snr is None:
            return  # an in-process request (megbed generate): nodes require a link (megbed.testbed.nodes.protocol)
        if model not in LINK_MODELS:
            _bad("link_model", f"={_short(model)} is not one of {LINK_MODELS}", rid)
        if mode not in TX_MODES:
            _bad("tx_mode", f"={_short(mode)} is not one of {TX_MODES}", rid)
        if (dist is None) == (snr is None):
            _bad("distance_m", ": exactly one of distance_m and snr_db_set must be set", rid)
        if dist is not None:
            dist = _number(dist, "distance_m", 0.0, MAX_DISTANCE_M, rid)
            if dist <= 0:
                _bad("distance_m", f"={dist} must be > 0", rid)
            object.__setattr__(self, "distance_m", dist)
        else:
            object.__setattr__(self, "snr_db_set", _number(snr, "snr_db_set", *SNR_DB_RANGE, rid))

    # --- derived views ----------------------------------------------------------------------------------------------

    @property
    def has_link(self) -> bool:
        """Whether the request crosses the emulated link (every node-served MEG / CEG request does)."""
        return self.link_model != NO_LINK

    @property
    def ue_denoises(self) -> bool:
        """Whether the UE runs denoising steps after a MEG handoff (k < N: a hybrid split)."""
        return self.scheme == "meg" and self.es_steps < self.n_steps

    def link_meta(self) -> dict[str, Any] | None:
        """The link condition as the channel broker reads it (``megbed.channel_emu.emulator.OVERRIDE_KEYS``)."""
        if not self.has_link:
            return None
        return {"link_model": self.link_model, "tx_mode": self.tx_mode, "distance_m": self.distance_m,
                "snr_db": self.snr_db_set}

    def columns(self) -> dict[str, Any]:
        """The request's dataset columns (``megbed.measurements.schema`` names; a missing distance / SNR is NaN)."""
        out = dict(zip(_COLUMN_FIELDS, _get_columns(self), strict=True))
        if out["distance_m"] is None:
            out["distance_m"] = math.nan
        if out["snr_db_set"] is None:
            out["snr_db_set"] = math.nan
        return out

    def reference(self, n_max: int) -> Request:
        """The quality reference of this request: N_max steps, beta = 0, no tomesd, all on the ES, no link."""
        if type(n_max) is not int or n_max < 1:
            raise RequestError(f"reference steps N_max={n_max!r} must be an integer >= 1", field="n_steps",
                               request_id=self.request_id or None)
        return _replace(self, scheme="ceg", n_steps=n_max, es_steps=None, merge_ratio=0.0, merge_method=NO_MERGE,
                        tome_ratio_es=0.0, tome_ratio_ue=0.0, link_model=NO_LINK, tx_mode=NO_LINK, distance_m=None,
                        snr_db_set=None)

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed (validated again; ``es_steps`` is re-derived when N or the scheme
        changes and it is not given)."""
        if ("n_steps" in changes or "scheme" in changes) and "es_steps" not in changes:
            changes["es_steps"] = None if self.es_steps == self.n_steps else self.es_steps
        if changes.get("scheme", self.scheme) == "meg" and self.merge_method == NO_MERGE:
            changes.setdefault("merge_method", DEFAULT_MERGE_METHOD)
        return _replace(self, **changes)

    # --- the wire ---------------------------------------------------------------------------------------------------

    def to_meta(self) -> dict[str, Any]:
        """JSON-able form: every field, by name (what frames carry under ``meta["request"]``)."""
        return dict(zip(FIELDS, _get_all(self), strict=True))

    def runtime_meta(self) -> dict[str, Any]:
        """The fields the runtime on the far node computes with (:data:`RUNTIME_FIELDS`): what a handoff or image
        frame carries, without the link, decoder and campaign bookkeeping the orchestrator already holds (each
        handoff's bytes are counted on the link and in the dataset)."""
        return dict(zip(RUNTIME_FIELDS, _get_runtime(self), strict=True))

    @classmethod
    def from_meta(cls, meta: Any, *, runtime: bool = False) -> Request:
        """Inverse of :meth:`to_meta` (``runtime``: of :meth:`runtime_meta`): no field may be unknown, and only
        :data:`OPTIONAL_ON_WIRE` ones (with ``runtime``, also those :meth:`runtime_meta` leaves out) missing.

        Raises
        ------
        RequestError
            Not an object, a missing or unknown field, or a bad value; the message and ``field`` name it.
        """
        if not isinstance(meta, Mapping):
            raise RequestError(f"request must be an object, got {type(meta).__name__}")
        keys = meta.keys()
        rid = meta.get("request_id")
        rid = rid if type(rid) is str else None
        exact = len(keys) == len(FIELDS) and keys == _FIELD_SET  # exactly what to_meta writes
        key = None
        if exact:
            # The configuration of a request repeats across a campaign point's requests: once validated, its
            # normalised values are reused, and only the fields that differ per request are checked.
            values = tuple(map(meta.__getitem__, _CONFIG_FIELDS))
            key = (values, tuple(map(type, values)))  # 1, 1.0 and True are different keys
            try:
                config = _VALID_CONFIGS.get(key)
            except TypeError:  # an unhashable value (a list, an object): the full check names it
                config, key = None, None
            if config is not None:
                return cls._with_config(meta, config, rid)
        else:
            unknown = sorted(str(k)[:60] for k in keys if k not in _FIELD_SET)
            if unknown:
                raise RequestError(f"unknown field {unknown[0]!r}", field=unknown[0], request_id=rid)
            optional = _OPTIONAL_IN_RUNTIME if runtime else OPTIONAL_ON_WIRE
            missing = [f for f in FIELDS if f not in keys and f not in optional]
            if missing:
                raise RequestError(f"missing field {missing[0]!r}", field=missing[0], request_id=rid)
        try:
            req = cls(**meta)
        except RequestError as exc:
            if exc.request_id is None and exc.field != "request_id":
                exc.request_id = rid
            raise
        if key is not None:
            if len(_VALID_CONFIGS) >= MAX_CACHED_CONFIGS:
                _VALID_CONFIGS.clear()
            _VALID_CONFIGS[key] = _get_config(req)
        return req

    @classmethod
    def _with_config(cls, meta: Mapping[str, Any], config: tuple, rid: str | None) -> Request:
        """A request of ``meta`` whose configuration fields are known valid, normalised as ``config``: the fields
        that differ per request are checked as ``__post_init__`` checks them, in its order."""
        rid_field = _check_request_id(meta["request_id"])
        try:
            for name in ("prompt", "negative_prompt"):
                if type(meta[name]) is not str:
                    _bad(name, f" must be a string, got {type(meta[name]).__name__}", rid_field)
            _int(meta["seed"], "seed", 0, MAX_SEED - 1, rid_field)
            point = meta["point_id"]
            if not _is_id(point):
                _bad("point_id", f" must be a string of at most {MAX_ID_CHARS} characters", rid_field)
            _int(meta["repetition"], "repetition", 0, 2**31 - 1, rid_field)
        except RequestError as exc:
            if exc.request_id is None:
                exc.request_id = rid
            raise
        req = object.__new__(cls)
        for put, value in zip(_PUT_CONFIG, config, strict=True):
            put(req, value)
        for name, put in _PUT_PER_REQUEST:
            put(req, meta[name])
        return req


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Request))
# Fields a sender may leave out (their defaults apply): the link of a UE-local request, the model's native size, and
# fields added after the first wire version (peers from before them meant the default).
OPTIONAL_ON_WIRE = frozenset({"merge_method", "decoder", "vae_tiling", "height_px", "width_px", "link_model",
                              "tx_mode", "distance_m", "snr_db_set"})
_FIELD_SET = frozenset(FIELDS)
# Fields that differ between the requests of one campaign point (checked on every from_meta); the others are its
# configuration, whose validated, normalised values from_meta keeps (at most MAX_CACHED_CONFIGS of them).
PER_REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "request_id", "point_id", "repetition")
_CONFIG_FIELDS = tuple(f for f in FIELDS if f not in PER_REQUEST_FIELDS)
_get_config = attrgetter(*_CONFIG_FIELDS)
MAX_CACHED_CONFIGS = 1024
_VALID_CONFIGS: dict[tuple, tuple] = {}
# The slots' own setters: they bypass the frozen dataclass's __setattr__ (object.__setattr__ per field costs more).
_PUT_CONFIG = tuple(Request.__dict__[f].__set__ for f in _CONFIG_FIELDS)
_PUT_PER_REQUEST = tuple((f, Request.__dict__[f].__set__) for f in PER_REQUEST_FIELDS)
_get_all = attrgetter(*FIELDS)
# What the far node's runtime needs of a request (Request.runtime_meta): not the link (the broker applies it), the
# decoder asked for (the UE chose it before running), VAE tiling (set on the UE by the generate frame) or the ids
# of the campaign point.
RUNTIME_FIELDS = tuple(f for f in FIELDS if f not in (
    "link_model", "tx_mode", "distance_m", "snr_db_set", "decoder", "vae_tiling", "point_id", "repetition"))
_get_runtime = attrgetter(*RUNTIME_FIELDS)
_OPTIONAL_IN_RUNTIME = frozenset(FIELDS) - frozenset(RUNTIME_FIELDS) | OPTIONAL_ON_WIRE
# The columns a request fills in every one of its rows: all its fields but the decoder (the dataset records the one
# the UE answers it used, not the one asked for) and the negative prompt (not recorded, as the prompt's companion).
NOT_COLUMNS = ("decoder", "negative_prompt")
_COLUMN_FIELDS = tuple(f for f in FIELDS if f not in NOT_COLUMNS)
_get_columns = attrgetter(*_COLUMN_FIELDS)


# --- checks (each raises RequestError naming the field) -------------------------------------------------------------


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def _bad(name: str, what: str, rid: str | None) -> None:
    raise RequestError(f"field {name!r}{what}", field=name, request_id=rid or None)


def _int(value: Any, name: str, lo: int, hi: int, rid: str | None) -> int:
    if type(value) is not int:  # bool, float and numpy scalars are refused alike
        _bad(name, f" must be an integer, got {type(value).__name__}", rid)
    if not lo <= value <= hi:
        _bad(name, f"={value} outside [{lo}, {hi}]", rid)
    return value


def _is_id(value: Any) -> bool:
    """An id field's rule (request_id, point_id, decoder): a string of at most MAX_ID_CHARS, no NUL."""
    return type(value) is str and len(value) <= MAX_ID_CHARS and "\x00" not in value


def _check_request_id(value: Any) -> str:
    if not _is_id(value):
        raise RequestError(f"field 'request_id' must be a string of at most {MAX_ID_CHARS} characters",
                           field="request_id")
    return value


def _number(value: Any, name: str, lo: float, hi: float, rid: str | None) -> float:
    kind = type(value)
    if kind is not float and kind is not int and (isinstance(value, bool) or not isinstance(value, int | float)):
        _bad(name, f" must be a number, got {kind.__name__}", rid)
    try:
        value = float(value) + 0.0  # -0.0 is recorded as 0.0: one value, one spelling (and one cache key)
    except OverflowError:  # a JSON integer too large for a float
        _bad(name, f" outside [{lo}, {hi}]", rid)
    if not lo <= value <= hi:  # NaN fails too
        _bad(name, f"={value!r} outside [{lo}, {hi}]", rid)
    return value


__all__ = ["FIELDS", "RUNTIME_FIELDS", "NO_LINK", "NO_MERGE", "SCHEDULER_NAMES", "Request", "RequestError"]
