"""The megbed dataset schema: tidy rows, one per request x node x stage, units in column names.

This module is the single source of truth for column names. Writers (campaign runner, orchestrator) and readers
(analysis, policy environment) import it; nothing else spells column names out.

Row granularity: a request (``request_id``) produces one row per (``node``, ``stage``) it went through, plus one
``stage == "end_to_end"`` row on ``node == "orchestrator"`` holding the whole request's latency, summed energy and
quality. Times are on the orchestrator's monotonic timeline (remote stamps mapped through clock sync).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from megbed.megwire.vocab import SCHEMES, STAGES  # noqa: F401 - the dataset's vocabularies, read as schema.STAGES

SCHEMA_VERSION = "1.0"

NODES = ("es", "ue", "channel", "orchestrator")
ENERGY_METHODS = ("counter", "integrated", "modeled", "none")

# Families of columns, one per rail: energy_mj_<rail> (gross) and energy_net_mj_<rail> (idle subtracted).
ENERGY_PREFIX = "energy_mj_"
ENERGY_NET_PREFIX = "energy_net_mj_"


@dataclass(frozen=True)
class Column:
    """One column of the dataset.

    Attributes
    ----------
    name : str
        Column name; units are in the name.
    kind : str
        ``"string"``, ``"int"``, ``"float"`` or ``"bool"``.
    required : bool
        Must be present in every dataset.
    description : str
        What it holds, with its unit.
    """

    name: str
    kind: str
    required: bool
    description: str


def _c(name: str, kind: str, description: str, required: bool = False) -> Column:
    return Column(name, kind, required, description)


COLUMNS: tuple[Column, ...] = (
    # identity
    _c("run_id", "string", "campaign run identifier", True),
    _c("point_id", "string", "grid point identifier (stable hash of the point's configuration)", True),
    _c("request_id", "string", "one generation request (a point x repetition)", True),
    _c("repetition", "int", "repetition index of the point", True),
    _c("scheme", "string", "meg | ceg | ue_local", True),
    _c("node", "string", "es | ue | channel | orchestrator", True),
    _c("stage", "string", "stage name, or end_to_end for the whole request", True),
    _c("status", "string", "ok | failed", True),
    _c("error", "string", "error message when status is failed"),
    # timing
    _c("t_start_ns", "int", "stage start on the orchestrator's monotonic timeline (ns)", True),
    _c("t_end_ns", "int", "stage end on the orchestrator's monotonic timeline (ns)", True),
    _c("latency_s", "float", "stage duration (s), measured on the node's own monotonic clock", True),
    _c("clock_offset_ns", "int", "offset applied to map the node's clock onto the orchestrator's (ns)"),
    _c("clock_uncertainty_ns", "float", "half round-trip bound of that offset (ns)"),
    # energy
    _c("energy_mj_total", "float", "gross energy of the stage over all rails of the node's probe (mJ)", True),
    _c("energy_net_mj_total", "float", "energy minus the idle baseline over the same window (mJ)", True),
    _c("energy_method", "string", "counter | integrated | modeled | none", True),
    _c("energy_valid", "bool", "whether the energy figure can be trusted", True),
    _c("energy_invalid_reason", "string", "why not, when energy_valid is false", True),
    _c("probe", "string", "probe backend that measured the stage (nvml, rapl, jetson_ina3221, ...)"),
    # memory (megbed.measurements.memory)
    _c("mem_peak_mb", "float", "peak resident memory of the node's process during the stage (MiB)"),
    _c("mem_method", "string", "how mem_peak_mb was measured: vmhwm_reset | rss_sampled | ru_maxrss | none"),
    _c("gpu_mem_peak_mb", "float", "peak CUDA memory allocated by tensors during the stage (MiB); NaN off CUDA"),
    _c("gpu_mem_method", "string", "cuda_max_allocated | none"),
    _c("vae_tiling", "bool", "the UE decoded with VAE tiling (memory-bound UEs)"),
    # request configuration
    _c("model", "string", "model folder name"),
    _c("prompt", "string", "text prompt"),
    _c("seed", "int", "generation seed"),
    _c("n_steps", "int", "total denoising steps N"),
    _c("es_steps", "int", "denoising steps run on the ES (k); k == N: the UE only decodes"),
    _c("merge_ratio", "float", "feature-merging ratio beta"),
    _c("merge_method", "string", "feature-merging method: global_l2 | global | window (none: not MEG)"),
    _c("tome_ratio_es", "float", "tomesd token-merging ratio in the ES U-Net"),
    _c("tome_ratio_ue", "float", "tomesd token-merging ratio in the UE U-Net"),
    _c("guidance_scale", "float", "classifier-free guidance scale"),
    _c("scheduler", "string", "scheduler class"),
    _c("height_px", "int", "image height (px)"),
    _c("width_px", "int", "image width (px)"),
    _c("decoder", "string", "UE decoder: base | distilled"),
    _c("wire_dtype", "string", "latent dtype on the wire (float16 | float32)"),
    _c("payload_bytes", "int", "bytes handed to the link for this request"),
    # link configuration and realisation
    _c("link_model", "string", "small-scale model: awgn | rayleigh_block | rayleigh_symbol | tdl_a..tdl_e"),
    _c("tx_mode", "string", "analog | coded | abstraction | shannon"),
    _c("distance_m", "float", "ES-UE distance (m); NaN for a fixed-SNR link"),
    _c("snr_db_set", "float", "configured SNR (dB) for a fixed-SNR link; NaN for distance-based links"),
    _c("ch_snr_db", "float", "realised SNR of the delivery (dB)"),
    _c("ch_gain_db", "float", "realised channel gain incl. path loss and fading (dB)"),
    _c("ch_mcs", "int", "MCS index used (coded/abstraction); -1 for analog"),
    _c("ch_code_rate", "float", "code rate (coded/abstraction)"),
    _c("ch_payload_bits", "int", "payload bits delivered"),
    _c("ch_coded_bits", "int", "coded bits sent incl. retransmissions"),
    _c("ch_symbols", "int", "channel symbols sent incl. retransmissions"),
    _c("ch_airtime_s", "float", "emulated airtime (s)"),
    _c("ch_retransmissions", "int", "HARQ-style retransmissions"),
    _c("ch_ber", "float", "bit error rate after decoding"),
    _c("ch_bler", "float", "block error rate after decoding"),
    _c("ch_nmse", "float", "NMSE of the delivered analog values"),
    _c("ch_processing_s", "float", "emulator compute time for the frame (s, monotonic), overlapped with airtime"),
    _c("ch_bandwidth_hz", "float", "bandwidth the airtime is charged at (Hz): configured x ch_bandwidth_scale"),
    _c("ch_bandwidth_scale", "float", "bandwidth scale: model latent elements / reference latent elements "
       "(scale_to_latent), 1 for the physical link"),
    _c("ch_bandwidth_physical_hz", "float", "the link's configured (physical, unscaled) bandwidth (Hz)"),
    _c("ue_emulation", "string", "how the UE ran: none (its own hardware) | cgroup_v2 | cgroup_v1 | "
       "sigstop_duty (an emulated UE under a CPU-bandwidth limit or duty cycle)"),
    _c("ue_slowdown_target", "float", "emulated UE: slowdown vs the ES the emulation aims at (x); NaN when none"),
    _c("ue_slowdown_achieved", "float", "emulated UE: slowdown measured at startup on the model's U-Net step (x)"),
    _c("ue_name", "string", "which UE served the request when a campaign drives several"),
    # quality against the reference (N_max steps, beta = 0, no tomesd, noiseless link)
    _c("q_mse", "float", "mean squared error of the image in [0, 1] against the reference"),
    _c("q_neg_log_mse", "float", "-log(MSE), the paper's reward"),
    _c("q_psnr_db", "float", "PSNR against the reference (dB)"),
    _c("q_ms_ssim", "float", "MS-SSIM against the reference"),
)

COLUMN_BY_NAME = {c.name: c for c in COLUMNS}
REQUIRED = tuple(c.name for c in COLUMNS if c.required)


class SchemaError(ValueError):
    """A dataset does not match the schema; the message lists every problem found."""


def column_kind(name: str) -> str | None:
    """The kind of a known column (rail columns included), or None for an unknown one."""
    if name in COLUMN_BY_NAME:
        return COLUMN_BY_NAME[name].kind
    if name.startswith((ENERGY_PREFIX, ENERGY_NET_PREFIX)):
        return "float"
    return None


def energy_column(rail: str) -> str:
    """Gross energy column of a rail key, e.g. ``energy_mj_vdd_in``."""
    return ENERGY_PREFIX + rail


def energy_net_column(rail: str) -> str:
    """Idle-subtracted energy column of a rail key, e.g. ``energy_net_mj_vdd_in``."""
    return ENERGY_NET_PREFIX + rail


def rail_columns(columns: Iterable[str]) -> list[str]:
    """The per-rail gross energy columns present, e.g. ``energy_mj_vdd_in`` (``energy_mj_total`` excluded)."""
    return [c for c in columns if c.startswith(ENERGY_PREFIX) and c != "energy_mj_total"]


def _kind_ok(kind: str, dtype) -> bool:
    import pandas as pd

    api = pd.api.types
    if kind == "string":
        return api.is_string_dtype(dtype) or api.is_object_dtype(dtype)
    if kind == "int":
        return api.is_integer_dtype(dtype)
    if kind == "float":
        return api.is_float_dtype(dtype) or api.is_integer_dtype(dtype)
    if kind == "bool":
        return api.is_bool_dtype(dtype)
    return False


def problems(df, *, strict_extra: bool = False) -> list[str]:
    """Everything wrong with a dataframe against the schema (empty list when it conforms).

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of a dataset.
    strict_extra : bool
        Also report columns the schema does not know.
    """
    found: list[str] = []
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        found.append(f"missing required columns: {', '.join(missing)}")
    for name in df.columns:
        kind = column_kind(name)
        if kind is None:
            if strict_extra:
                found.append(f"unknown column {name!r}")
            continue
        if not _kind_ok(kind, df[name].dtype):
            found.append(f"column {name!r} should be {kind}, found {df[name].dtype}")
    for name, allowed in (("scheme", SCHEMES), ("node", NODES), ("energy_method", ENERGY_METHODS)):
        if name in df.columns:
            bad = sorted(set(df[name].dropna().astype(str)) - set(allowed))
            if bad:
                found.append(f"column {name!r} has values outside {allowed}: {bad}")
    return found


def validate(df, *, strict_extra: bool = False) -> None:
    """Raise :class:`SchemaError` listing every problem, or return quietly."""
    found = problems(df, strict_extra=strict_extra)
    if found:
        raise SchemaError("dataset does not match schema v" + SCHEMA_VERSION + ":\n  - " + "\n  - ".join(found))
