"""Link configuration: one dataclass tree, loadable from YAML / TOML / a dict, with errors that name the bad key.

Layout (every section optional; defaults are the paper's link)::

    mode: analog            # analog | coded | abstraction | shannon (the paper's: bits at capacity + analog noise)
    model: awgn             # awgn | rayleigh_block | rayleigh_symbol | tdl_a .. tdl_e
    snr_db: null            # set -> fixed-SNR link (path loss ignored); null -> distance-based path loss
    bandwidth_hz: 1.0e6
    symbol_rate_hz: null    # null -> = bandwidth (Nyquist signalling, one complex symbol per 1/B)
    mcs: 9                  # 5G NR MCS index (PDSCH table 1) or "auto" (link adaptation for bler_target)
    bler_target: 0.1
    residual: corrupt       # corrupt | harq
    max_retransmissions: 3
    side_mcs: 3             # robust MCS for side information (always HARQ-protected, never corrupted)
    pathloss: {intercept_db: 35.3, slope_db: 37.6, tx_power_dbm: 30, noise_dbm: -94}
    process:  {distance: uniform, d_min_m: 200, d_max_m: 300, fading: auto, doppler_hz: 0.05,
               request_interval_s: 3.0, ...}
    ofdm:     {fft_size: 64, num_ofdm_symbols: 14, cp_length: 8, pilot_ofdm_symbols: [2, 11],
               delay_spread_s: 1.0e-7, csi: ls_lmmse}
    decoder:  {kind: fast, num_iter: 20, device: auto, threads: 1}
    impl: fast              # fast | sionna: hand-written equivalents of Sionna's blocks, or Sionna's own
    analog:   {equalizer: mmse}
    uplink_delay_s: 0.0
    scale_to_latent: null   # e.g. [4, 128, 128]: bandwidth x (model latent elements / these), see bandwidth_scale
    model_latent: null      # the model's latent [C, H, W]; the campaign runner fills it in
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

try:  # Python 3.11+; tomli is the same parser, for 3.10 (JetPack 6)
    import tomllib  # novermin (tomli below on 3.10)
except ModuleNotFoundError:  # pragma: no cover - exercised under Python 3.10
    import tomli as tomllib

MODES = ("analog", "coded", "abstraction", "shannon")
MODELS = ("awgn", "rayleigh_block", "rayleigh_symbol", "tdl_a", "tdl_b", "tdl_c", "tdl_d", "tdl_e")
RESIDUALS = ("corrupt", "harq")
DISTANCES = ("uniform", "random_walk", "fixed")
FADINGS = ("auto", "rayleigh", "none")
CSI = ("perfect", "ls_lmmse")
DECODERS = ("fast", "sionna")
IMPLS = ("fast", "sionna")
EQUALIZERS = ("mmse", "zf")
# 5G NR PDSCH MCS table 1 (38.214 Table 5.1.3.1-1). Indices 0-2 have code rates below 1/5, which Sionna's
# LDPC5GEncoder refuses (and its BLER tables leave empty), so the usable range starts at 3.
MIN_MCS, MAX_MCS = 3, 28
# Fixed-SNR range a link accepts (dB): the broker refuses others, the ES checks requests against it first.
SNR_DB_RANGE = (-50.0, 80.0)


class LinkConfigError(ValueError):
    """A link configuration is invalid; the message names the key (``process.d_min_m``) and what is wrong."""


@dataclass
class PathLossConfig:
    """Log-distance path loss and the link budget (the paper: PL = 35.3 + 37.6 log10(d/m), 30 dBm, -94 dBm)."""

    intercept_db: float = 35.3
    slope_db: float = 37.6
    tx_power_dbm: float = 30.0
    noise_dbm: float = -94.0


@dataclass
class ProcessConfig:
    """The request-to-request channel process (see :mod:`megbed.channel_emu.process`).

    Attributes
    ----------
    distance : {"uniform", "random_walk", "fixed"}
        ``uniform``: i.i.d. U[d_min, d_max] per request (the paper); ``random_walk``: a reflected Gaussian walk in
        [d_min, d_max] with ``distance_step_m`` standard deviation per request; ``fixed``: ``distance_m``.
    fading : {"auto", "rayleigh", "none"}
        Block fading across requests (AR(1) on the complex gain). ``auto``: Rayleigh for ``rayleigh_block``,
        none for the other models (AWGN has no fading; per-symbol and TDL fading happen inside a frame).
    doppler_hz, request_interval_s : float
        Set the AR(1) coefficient rho = J0(2 pi f_D T) (Jakes); ``rho`` overrides it when given.
    """

    distance: str = "uniform"
    d_min_m: float = 200.0
    d_max_m: float = 300.0
    distance_m: float = 250.0
    distance_step_m: float = 5.0
    fading: str = "auto"
    doppler_hz: float = 0.05
    request_interval_s: float = 3.0
    rho: float | None = None


@dataclass
class OfdmConfig:
    """OFDM resource grid for the TDL models (subcarrier spacing = bandwidth / fft_size)."""

    fft_size: int = 64
    num_ofdm_symbols: int = 14
    cp_length: int = 8
    pilot_ofdm_symbols: list[int] = field(default_factory=lambda: [2, 11])
    delay_spread_s: float = 100e-9
    carrier_hz: float = 2.4e9
    csi: str = "ls_lmmse"


@dataclass
class DecoderConfig:
    """LDPC decoding: ``fast`` (layered normalised min-sum with early stop) or ``sionna`` (LDPC5GDecoder).

    ``threads``: numba threads for the fast encoder and decoder (codewords in parallel); 0 = all cores. 1 by default:
    on two cores shared with other work a second thread rarely finds a free core and the first then waits for it.
    """

    kind: str = "fast"
    num_iter: int = 20
    device: str = "auto"
    threads: int = 1


@dataclass
class AnalogConfig:
    """Analog transmission: equaliser for the fading models (``mmse`` gives NMSE 1/(1+SNR) on AWGN, ``zf`` 1/SNR)."""

    equalizer: str = "mmse"


@dataclass
class LinkConfig:
    """Everything that defines the emulated ES -> UE link (see the module docstring for the file layout).

    ``impl`` picks how the physical-layer blocks run: ``fast`` (default) uses hand-written equivalents where Sionna's
    blocks cost far more than the work (analog noise, CRC, LDPC encoding and rate matching, QAM mapping, APP
    demapping, LDPC rate recovery, BLER look-ups; each checked against Sionna's own in the tests); ``sionna`` uses
    Sionna's blocks as they come, for side-by-side comparison. The LDPC decoder is chosen by ``decoder.kind``.
    """

    mode: str = "analog"
    model: str = "awgn"
    snr_db: float | None = None
    bandwidth_hz: float = 1e6
    symbol_rate_hz: float | None = None
    mcs: int | str = 9
    bler_target: float = 0.1
    residual: str = "corrupt"
    max_retransmissions: int = 3
    side_mcs: int = 3
    side_max_retransmissions: int = 16
    max_cb_bits: int = 8448
    uplink_delay_s: float = 0.0
    impl: str = "fast"
    scale_to_latent: list[int] | None = None
    model_latent: list[int] | None = None
    pathloss: PathLossConfig = field(default_factory=PathLossConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    ofdm: OfdmConfig = field(default_factory=OfdmConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    analog: AnalogConfig = field(default_factory=AnalogConfig)

    def __post_init__(self) -> None:
        # Sections may be given as mappings (LinkConfig(process={"distance": "fixed"})): build them here.
        for name, cls in (("pathloss", PathLossConfig), ("process", ProcessConfig), ("ofdm", OfdmConfig),
                          ("decoder", DecoderConfig), ("analog", AnalogConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, _build(cls, value, name))
            elif not isinstance(value, cls):
                raise LinkConfigError(f"{name}: must be a mapping or {cls.__name__}, got {type(value).__name__}")
        validate(self)

    @property
    def symbol_rate(self) -> float:
        """Complex symbols per second (defaults to the bandwidth)."""
        return float(self.symbol_rate_hz or self.bandwidth_hz)

    @property
    def bandwidth_scale(self) -> float:
        """Factor on ``bandwidth_hz`` (and the symbol rate): model latent elements / reference latent elements.

        1 without ``scale_to_latent``. With it, a payload of the model's latent size takes the airtime a payload of
        the reference latent's size (e.g. SDXL's 4x128x128) would take at ``bandwidth_hz``: airtime scales as
        1 / bandwidth, so every byte counts as reference/model bytes would.
        """
        if not self.scale_to_latent:
            return 1.0
        if not self.model_latent:
            raise LinkConfigError("model_latent: scale_to_latent needs the model's latent shape (the campaign "
                                  "runner fills it in from the model)")
        return float(math.prod(self.model_latent)) / float(math.prod(self.scale_to_latent))

    @property
    def effective_bandwidth_hz(self) -> float:
        """The bandwidth airtime is charged at (Hz): ``bandwidth_hz * bandwidth_scale``."""
        return self.bandwidth_hz * self.bandwidth_scale

    @property
    def fixed_snr(self) -> bool:
        return self.snr_db is not None

    @property
    def block_fading(self) -> bool:
        """Whether the process draws a block-fading gain per request."""
        f = self.process.fading
        return f == "rayleigh" or (f == "auto" and self.model == "rayleigh_block")

    def replace(self, **changes: Any) -> LinkConfig:
        """A validated copy with top-level fields changed (nested sections as dicts or dataclasses)."""
        data = to_dict(self)
        for key, value in changes.items():
            if dataclasses.is_dataclass(value):
                value = to_dict(value)
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LinkConfig:
        return from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> LinkConfig:
        return load(path)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check and convert one leaf value against its annotation (strings from ``from __future__`` resolved)."""
    text = str(hint)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise LinkConfigError(f"{where}: must be a table/mapping, got {type(value).__name__}")
        return _build(hint, value, where)
    if value is None:
        if "None" in text:
            return None
        raise LinkConfigError(f"{where}: must not be null")
    if text.startswith("list"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value):
            raise LinkConfigError(f"{where}: must be a list of integers, got {value!r}")
        return [int(v) for v in value]
    if "int | str" in text:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LinkConfigError(f"{where}: must be an integer or a string, got {value!r}")
    if text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LinkConfigError(f"{where}: must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise LinkConfigError(f"{where}: must be finite, got {value!r}")
        return float(value)
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise LinkConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if text.startswith("str"):
        if not isinstance(value, str):
            raise LinkConfigError(f"{where}: must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise LinkConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                              f"allowed: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any] | None) -> LinkConfig:
    """Build and validate a :class:`LinkConfig`; unknown or mistyped keys raise :class:`LinkConfigError`."""
    if data is None:
        return LinkConfig()
    if not isinstance(data, Mapping):
        raise LinkConfigError(f"link configuration must be a mapping, got {type(data).__name__}")
    if "link" in data and len(data) == 1 and isinstance(data["link"], Mapping):
        data = data["link"]  # allow a file with a top-level [link] table
    return _build(LinkConfig, data, "")


def load(path: str | Path) -> LinkConfig:
    """Load a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON file."""
    from megbed.megwire.safe_yaml import YamlError, load_yaml_file

    path = Path(path)
    if path.is_dir():
        raise LinkConfigError(f"link configuration {path} is a directory, not a file")
    if not path.is_file():
        raise LinkConfigError(f"link configuration file not found: {path}")
    try:
        if path.suffix in (".toml", ".json"):
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            else:
                import json

                data = json.loads(text)
        else:
            data = load_yaml_file(path)  # bounded, duplicate keys refused (megbed.megwire.safe_yaml)
    except YamlError as exc:
        raise LinkConfigError(f"cannot parse: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a config error naming the file
        raise LinkConfigError(f"{path}: cannot parse: {exc}") from exc
    try:
        return from_dict(data)
    except LinkConfigError as exc:
        raise LinkConfigError(f"{path}: {exc}") from exc


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise LinkConfigError(f"{where}: {message}")


def validate(cfg: LinkConfig) -> None:
    """Check ranges and choices; raises :class:`LinkConfigError` naming the first bad key."""
    _check(cfg.mode in MODES, "mode", f"{cfg.mode!r} is not one of {MODES}")
    _check(cfg.model in MODELS, "model", f"{cfg.model!r} is not one of {MODELS}")
    lo, hi = SNR_DB_RANGE
    _check(cfg.snr_db is None or lo <= cfg.snr_db <= hi, "snr_db", f"{cfg.snr_db} outside [{lo:g}, {hi:g}] dB")
    _check(cfg.bandwidth_hz > 0, "bandwidth_hz", "must be > 0")
    _check(cfg.symbol_rate_hz is None or cfg.symbol_rate_hz > 0, "symbol_rate_hz", "must be > 0")
    if isinstance(cfg.mcs, str):
        _check(cfg.mcs == "auto", "mcs", f"must be an integer in [{MIN_MCS}, {MAX_MCS}] or 'auto', got {cfg.mcs!r}")
    else:
        _check(MIN_MCS <= cfg.mcs <= MAX_MCS, "mcs", f"{cfg.mcs} outside [{MIN_MCS}, {MAX_MCS}] (PDSCH table 1; "
               "indices 0-2 have code rates below 1/5, unsupported by the 5G LDPC encoder)")
    _check(0 < cfg.bler_target < 1, "bler_target", "must be in (0, 1)")
    _check(cfg.residual in RESIDUALS, "residual", f"{cfg.residual!r} is not one of {RESIDUALS}")
    _check(0 <= cfg.max_retransmissions <= 32, "max_retransmissions", "must be in [0, 32]")
    _check(MIN_MCS <= cfg.side_mcs <= MAX_MCS, "side_mcs", f"outside [{MIN_MCS}, {MAX_MCS}]")
    _check(0 <= cfg.side_max_retransmissions <= 64, "side_max_retransmissions", "must be in [0, 64]")
    _check(100 <= cfg.max_cb_bits <= 8448, "max_cb_bits", "must be in [100, 8448] (5G LDPC BG1 limit)")
    _check(cfg.uplink_delay_s >= 0, "uplink_delay_s", "must be >= 0")
    _check(cfg.impl in IMPLS, "impl", f"{cfg.impl!r} is not one of {IMPLS}")
    for key in ("scale_to_latent", "model_latent"):
        shape = getattr(cfg, key)
        _check(shape is None or (len(shape) >= 1 and all(v > 0 for v in shape)), key,
               f"must be a list of positive integers (a latent shape such as [4, 128, 128]), got {shape!r}")
    p = cfg.process
    _check(p.distance in DISTANCES, "process.distance", f"{p.distance!r} is not one of {DISTANCES}")
    _check(0 < p.d_min_m <= p.d_max_m, "process.d_min_m", "need 0 < d_min_m <= d_max_m")
    _check(p.distance_m > 0, "process.distance_m", "must be > 0")
    _check(p.distance_step_m >= 0, "process.distance_step_m", "must be >= 0")
    _check(p.fading in FADINGS, "process.fading", f"{p.fading!r} is not one of {FADINGS}")
    _check(p.doppler_hz >= 0, "process.doppler_hz", "must be >= 0")
    _check(p.request_interval_s > 0, "process.request_interval_s", "must be > 0")
    _check(p.rho is None or -1 <= p.rho <= 1, "process.rho", "must be in [-1, 1]")
    o = cfg.ofdm
    _check(8 <= o.fft_size <= 4096, "ofdm.fft_size", "must be in [8, 4096]")
    _check(o.num_ofdm_symbols >= 2, "ofdm.num_ofdm_symbols", "must be >= 2")
    _check(0 <= o.cp_length < o.fft_size, "ofdm.cp_length", "must be in [0, fft_size)")
    _check(len(o.pilot_ofdm_symbols) >= 1 and all(0 <= i < o.num_ofdm_symbols for i in o.pilot_ofdm_symbols)
           and len(set(o.pilot_ofdm_symbols)) == len(o.pilot_ofdm_symbols) < o.num_ofdm_symbols,
           "ofdm.pilot_ofdm_symbols", "need distinct indices within the slot, fewer than num_ofdm_symbols")
    _check(o.delay_spread_s > 0, "ofdm.delay_spread_s", "must be > 0")
    _check(o.carrier_hz > 0, "ofdm.carrier_hz", "must be > 0")
    _check(o.csi in CSI, "ofdm.csi", f"{o.csi!r} is not one of {CSI}")
    d = cfg.decoder
    _check(d.kind in DECODERS, "decoder.kind", f"{d.kind!r} is not one of {DECODERS}")
    _check(1 <= d.num_iter <= 200, "decoder.num_iter", "must be in [1, 200]")
    _check(0 <= d.threads <= 256, "decoder.threads", "must be in [0, 256] (0: all cores)")
    _check(d.device in ("auto", "cpu") or d.device.startswith("cuda"), "decoder.device", "auto | cpu | cuda[:N]")
    _check(cfg.analog.equalizer in EQUALIZERS, "analog.equalizer",
           f"{cfg.analog.equalizer!r} is not one of {EQUALIZERS}")
