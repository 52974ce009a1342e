"""Link configuration: one pydantic model tree, loadable from YAML / TOML / a dict, with errors that name the bad key
(its JSON Schema: ``megbed campaign schema --link`` -> ``campaigns/link.schema.json``).

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

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, ValidationInfo, WithJsonSchema, field_validator

from megbed.megwire.safe_yaml import YamlError, load_yaml_text, read_text_file
from megbed.megwire.validation import ConfigModel, StrictModel, not_below, number

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


class _Section(ConfigModel):
    # Sections are built by the code too (PathLossConfig(...)): their failures are LinkConfigErrors as well.
    # Defaults are validated too: a check comparing two keys runs when only one of them is given.
    model_config = ConfigModel.model_config | {"validate_default": True}
    error = LinkConfigError


def _mcs(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer in [{MIN_MCS}, {MAX_MCS}] or 'auto', got {value!r}")
    if not MIN_MCS <= value <= MAX_MCS:
        raise ValueError(f"{value} outside [{MIN_MCS}, {MAX_MCS}] (PDSCH table 1; indices 0-2 have code rates below "
                         "1/5, unsupported by the 5G LDPC encoder)")
    return value


Mcs = Annotated[int | str, PlainValidator(_mcs), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": MIN_MCS, "maximum": MAX_MCS}, {"const": "auto"}]})]
LatentShape = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
Positive = number(gt=0.0)
NonNegative = number(0.0)


class PathLossConfig(_Section):
    """Log-distance path loss and the link budget (the paper: PL = 35.3 + 37.6 log10(d/m), 30 dBm, -94 dBm)."""

    intercept_db: number() = 35.3
    slope_db: number() = 37.6
    tx_power_dbm: number() = 30.0
    noise_dbm: number() = -94.0


class ProcessConfig(_Section):
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

    distance: Literal[DISTANCES] = "uniform"
    d_min_m: Positive = 200.0
    d_max_m: Annotated[Positive, not_below("d_min_m")] = 300.0
    distance_m: Positive = 250.0
    distance_step_m: NonNegative = 5.0
    fading: Literal[FADINGS] = "auto"
    doppler_hz: NonNegative = 0.05
    request_interval_s: Positive = 3.0
    rho: number(-1.0, 1.0) | None = None



class OfdmConfig(_Section):
    """OFDM resource grid for the TDL models (subcarrier spacing = bandwidth / fft_size)."""

    fft_size: Annotated[int, Field(ge=8, le=4096)] = 64
    num_ofdm_symbols: Annotated[int, Field(ge=2)] = 14
    cp_length: Annotated[int, Field(ge=0)] = 8
    pilot_ofdm_symbols: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [2, 11], min_length=1)
    delay_spread_s: Positive = 100e-9
    carrier_hz: Positive = 2.4e9
    csi: Literal[CSI] = "ls_lmmse"

    @field_validator("cp_length")
    @classmethod
    def _cp(cls, cp_length: int, info: ValidationInfo) -> int:
        if cp_length >= info.data.get("fft_size", 4097):
            raise ValueError(f"must be in [0, fft_size), got {cp_length}")
        return cp_length

    @field_validator("pilot_ofdm_symbols")
    @classmethod
    def _pilots(cls, pilots: list[int], info: ValidationInfo) -> list[int]:
        n = info.data.get("num_ofdm_symbols")
        if n is not None and not (all(i < n for i in pilots) and len(set(pilots)) == len(pilots) < n):
            raise ValueError("need distinct indices within the slot, fewer than num_ofdm_symbols")
        return pilots


class DecoderConfig(_Section):
    """LDPC decoding: ``fast`` (layered normalised min-sum with early stop) or ``sionna`` (LDPC5GDecoder).

    ``threads``: the most numba threads for the fast encoder and decoder (codewords in parallel); 0 = all cores. 1 by
    default: on two cores shared with other work a second thread rarely finds a free core and the first then waits for
    it. A delivery gets fewer when it has fewer code blocks or the load average leaves no core idle
    (:func:`megbed.channel_emu.numba_setup.kernel_threads`).
    """

    kind: Literal[DECODERS] = "fast"
    num_iter: Annotated[int, Field(ge=1, le=200)] = 20
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda.*)$")] = "auto"
    threads: Annotated[int, Field(ge=0, le=256)] = 1


class AnalogConfig(_Section):
    """Analog transmission: equaliser for the fading models (``mmse`` gives NMSE 1/(1+SNR) on AWGN, ``zf`` 1/SNR)."""

    equalizer: Literal[EQUALIZERS] = "mmse"


class LinkConfig(ConfigModel):
    """Everything that defines the emulated ES -> UE link (see the module docstring for the file layout).

    ``impl`` picks how the physical-layer blocks run: ``fast`` (default) uses hand-written equivalents where Sionna's
    blocks cost far more than the work (analog noise, CRC, LDPC encoding and rate matching, QAM mapping, APP
    demapping, LDPC rate recovery, BLER look-ups; each checked against Sionna's own in the tests); ``sionna`` uses
    Sionna's blocks as they come, for side-by-side comparison. The LDPC decoder is chosen by ``decoder.kind``.
    """

    model_config = ConfigModel.model_config | {"title": "megbed link configuration"}
    error = LinkConfigError

    mode: Literal[MODES] = "analog"
    model: Literal[MODELS] = "awgn"
    snr_db: number(*SNR_DB_RANGE) | None = None
    bandwidth_hz: Positive = 1e6
    symbol_rate_hz: Positive | None = None
    mcs: Mcs = 9
    bler_target: number(gt=0.0, lt=1.0) = 0.1
    residual: Literal[RESIDUALS] = "corrupt"
    max_retransmissions: Annotated[int, Field(ge=0, le=32)] = 3
    side_mcs: Annotated[int, Field(ge=MIN_MCS, le=MAX_MCS)] = 3
    side_max_retransmissions: Annotated[int, Field(ge=0, le=64)] = 16
    max_cb_bits: Annotated[int, Field(ge=100, le=8448)] = 8448  # 5G LDPC base graph 1's limit
    uplink_delay_s: NonNegative = 0.0
    impl: Literal[IMPLS] = "fast"
    scale_to_latent: LatentShape | None = None
    model_latent: LatentShape | None = None
    pathloss: PathLossConfig = Field(default_factory=PathLossConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    ofdm: OfdmConfig = Field(default_factory=OfdmConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    analog: AnalogConfig = Field(default_factory=AnalogConfig)

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
        """A validated copy with top-level fields changed (nested sections as mappings merged into the current ones,
        or section objects)."""
        data = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, StrictModel):
                value = value.model_dump()
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) \
                else value
        return from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Any) -> LinkConfig:
        return from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> LinkConfig:
        return load(path)


def to_dict(obj: StrictModel) -> dict[str, Any]:
    return obj.model_dump()


def from_dict(data: Any) -> LinkConfig:
    """Build and validate a :class:`LinkConfig`; unknown or mistyped keys raise :class:`LinkConfigError`."""
    if data is None:
        return LinkConfig()
    if isinstance(data, dict) and "link" in data and len(data) == 1 and isinstance(data["link"], dict):
        data = data["link"]  # allow a file with a top-level [link] table
    return LinkConfig.parse(data, what="link configuration")


def load(path: str | Path) -> LinkConfig:
    """Load a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON file."""
    path = Path(path)
    text = read_text_file(path, kind="link configuration file", error=LinkConfigError)
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = load_yaml_text(text, str(path))  # duplicate keys refused, 1.0e6 read as a number
    except YamlError as exc:
        raise LinkConfigError(f"cannot parse: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a config error naming the file
        raise LinkConfigError(f"{path}: cannot parse: {exc}") from exc
    try:
        return from_dict(data)
    except LinkConfigError as exc:
        raise LinkConfigError(f"{path}: {exc}") from exc


def link_json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a link file (``megbed campaign schema --link``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **LinkConfig.model_json_schema()}
