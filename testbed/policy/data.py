"""Campaign datasets -> one row per request, the form the policy's cost model learns from.

A campaign run directory holds tidy rows (one per request x node x stage, see :mod:`megbed.measurements.schema`). The
environment needs, per successful request of one scheme: the action it was run with (N, beta, optional extras),
the realised channel (SNR), the end-to-end latency split into airtime and everything else, the energy, and the
quality. :func:`request_table` builds exactly that and refuses, with a message naming the problem, datasets it
cannot learn from.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

QUALITY_COLUMNS = ("q_neg_log_mse", "q_psnr_db", "q_ms_ssim", "q_mse")
ACTION_COLUMNS = ("n_steps", "merge_ratio")
# Configuration columns that must not vary inside one action cell (else the cell mixes two experiments).
CONFIG_COLUMNS = (
    "model", "es_steps", "tome_ratio_es", "tome_ratio_ue", "guidance_scale", "scheduler", "height_px", "width_px",
    "decoder", "wire_dtype", "link_model", "tx_mode",
)
ENERGY_SCOPES = ("total", "es", "ue")


class PolicyDatasetError(ValueError):
    """A campaign dataset the policy cannot be trained from; the message says why and what to do."""


def read_campaign_rows(run_dir: str | Path):
    """All rows of a campaign run directory, validated against the schema.

    Read with :func:`megbed.measurements.dataset.read_dataset` (append-only parts or a compacted copy, validated).

    Raises
    ------
    PolicyDatasetError
        No such directory, no parts, or rows that do not match the schema.
    """
    from megbed.measurements.dataset import read_dataset
    from megbed.measurements.schema import SchemaError

    run = Path(run_dir)
    if not run.is_dir():
        raise PolicyDatasetError(f"campaign run directory {run} does not exist")
    try:
        df = read_dataset(run)  # the measurement layer's validating reader (parts or compacted copy)
    except SchemaError as exc:
        raise PolicyDatasetError(f"{run}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise PolicyDatasetError(f"cannot read the dataset of {run}: {exc}") from exc
    if len(df) == 0:
        raise PolicyDatasetError(f"the dataset of {run} is empty")
    return df


def _first(df, column: str):
    """Per request_id, the first non-null value of ``column`` (NaN series when absent)."""
    if column not in df.columns:
        return None
    return df.dropna(subset=[column]).groupby("request_id")[column].first()


def request_table(rows, *, scheme: str = "meg", energy_scope: str = "total",
                  fixed: dict[str, object] | None = None, extra_action_columns: tuple[str, ...] = ()):
    """One row per successful request of ``scheme``, with the quantities the cost model needs.

    Parameters
    ----------
    rows : pandas.DataFrame
        Tidy campaign rows (schema v1).
    scheme : str
        Scheme to keep (``meg``: the split the policy controls).
    energy_scope : {"total", "es", "ue"}
        ``total``: the end-to-end row's ``energy_mj_total``; ``es`` / ``ue``: the sum of that node's stage rows.
    fixed : dict, optional
        Keep only rows whose configuration column equals the value (e.g. ``{"tome_ratio_es": 0.5}``), for
        campaigns that sweep more than the policy controls.
    extra_action_columns : tuple of str
        Configuration columns the policy also chooses (e.g. ``("tome_ratio_es",)``).

    Returns
    -------
    pandas.DataFrame
        Columns: ``request_id, point_id, n_steps, merge_ratio, <extras>, snr_db, link_key, latency_s,
        airtime_s, link_latency_s, payload_bits, energy_j, energy_valid`` and the quality columns present.
        ``airtime_s``/``payload_bits``/``snr_db`` are NaN where the dataset lacks them.

    Raises
    ------
    PolicyDatasetError
        Missing columns, no successful request of the scheme, or configuration that varies within an action.
    """
    import pandas as pd

    if energy_scope not in ENERGY_SCOPES:
        raise PolicyDatasetError(f"energy_scope must be one of {ENERGY_SCOPES}, not {energy_scope!r}")
    needed = ("node", "stage", "status", "scheme", "request_id", "latency_s", *ACTION_COLUMNS, *extra_action_columns)
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise PolicyDatasetError(
            f"the dataset lacks columns the policy environment needs: {', '.join(missing)} "
            "(a campaign of the meg scheme records n_steps and merge_ratio on every row)")
    if not any(c in rows.columns for c in QUALITY_COLUMNS):
        raise PolicyDatasetError(f"the dataset has no quality column (one of {', '.join(QUALITY_COLUMNS)})")

    rows = rows[rows["scheme"].astype(str) == scheme]
    for col, value in (fixed or {}).items():
        if col not in rows.columns:
            raise PolicyDatasetError(f"fixed column {col!r} is not in the dataset")
        if isinstance(value, float) or isinstance(value, int):
            rows = rows[np.isclose(rows[col].astype(float), float(value))]
        else:
            rows = rows[rows[col].astype(str) == str(value)]
    e2e = rows[(rows["node"] == "orchestrator") & (rows["stage"] == "end_to_end")]
    ok = e2e[e2e["status"].astype(str) == "ok"].copy()
    n_failed = len(e2e) - len(ok)
    if n_failed:
        log.info("dropping %d failed %s requests", n_failed, scheme)
    ok = ok.dropna(subset=["latency_s", *ACTION_COLUMNS])
    if ok.empty:
        raise PolicyDatasetError(
            f"the dataset has no successful end-to-end request of scheme {scheme!r}"
            + (f" matching {fixed}" if fixed else "") + f" ({len(e2e)} end-to-end rows, {n_failed} failed)")
    if ok["request_id"].duplicated().any():
        dup = ok.loc[ok["request_id"].duplicated(), "request_id"].iloc[0]
        raise PolicyDatasetError(f"request {dup!r} has more than one end_to_end row")

    # The same configuration column must not vary inside one action cell.
    action_cols = [*ACTION_COLUMNS, *extra_action_columns]
    for col in CONFIG_COLUMNS:
        if col in ok.columns and col not in action_cols and ok[col].notna().any():
            per_cell = ok.groupby(action_cols, dropna=False)[col].nunique(dropna=False)
            if (per_cell > 1).any():
                values = sorted(map(str, ok[col].dropna().unique()))[:6]
                raise PolicyDatasetError(
                    f"column {col!r} varies within one (N, beta) point (values {values}): the policy does not choose "
                    f"it -- pass fixed={{{col!r}: value}} (--fixed {col}=VALUE) or make it an action column")

    out = pd.DataFrame({"request_id": ok["request_id"].astype(str).to_numpy()})
    out["point_id"] = ok["point_id"].astype(str).to_numpy() if "point_id" in ok.columns else out["request_id"]
    for col in action_cols:
        out[col] = ok[col].astype(float).to_numpy()
    out["latency_s"] = ok["latency_s"].astype(float).to_numpy()
    idx = pd.Index(out["request_id"])

    link_rows = rows[(rows["node"] == "channel") & (rows["stage"] == "link")]

    def pick(column: str, source) -> np.ndarray:
        vals = np.full(len(out), np.nan)
        e2e_series = _first(ok, column)
        if e2e_series is not None:
            vals = e2e_series.reindex(idx).to_numpy(dtype=float, na_value=np.nan)
        if source is not None and len(source):
            other = _first(source, column)
            if other is not None:
                fill = other.reindex(idx).to_numpy(dtype=float, na_value=np.nan)
                vals = np.where(np.isnan(vals), fill, vals)
        return vals

    snr = pick("ch_snr_db", link_rows)
    snr_set = pick("snr_db_set", link_rows)
    out["snr_db"] = np.where(np.isnan(snr), snr_set, snr)
    out["airtime_s"] = pick("ch_airtime_s", link_rows)
    payload = pick("ch_payload_bits", link_rows)
    payload_bytes = pick("payload_bytes", link_rows)
    out["payload_bits"] = np.where(np.isnan(payload), 8.0 * payload_bytes, payload)
    if len(link_rows):
        link_lat = link_rows.groupby("request_id")["latency_s"].sum()
        out["link_latency_s"] = link_lat.reindex(idx).to_numpy(dtype=float, na_value=np.nan)
    else:
        out["link_latency_s"] = np.nan
    # One link condition = one configured distance / fixed SNR of the campaign grid.
    dist = pick("distance_m", None)
    out["link_key"] = [
        f"d={d:g}" if not math.isnan(d) else (f"snr={s:g}" if not math.isnan(s) else "single")
        for d, s in zip(dist, snr_set, strict=True)
    ]
    out["distance_m"] = dist

    # Energy (J): the end-to-end total, or one node's stage rows summed.
    if "energy_mj_total" in ok.columns:
        if energy_scope == "total":
            e_mj = ok["energy_mj_total"].astype(float).to_numpy()
            valid = ok["energy_valid"].astype(bool).to_numpy() if "energy_valid" in ok.columns else ~np.isnan(e_mj)
        else:
            node_rows = rows[(rows["node"] == energy_scope) & (rows["status"].astype(str) == "ok")]
            grouped = node_rows.groupby("request_id")
            e_mj = grouped["energy_mj_total"].sum(min_count=1).reindex(idx).to_numpy(dtype=float, na_value=np.nan)
            if "energy_valid" in node_rows.columns:
                valid = grouped["energy_valid"].all().reindex(idx).fillna(False).to_numpy(dtype=bool)
            else:
                valid = ~np.isnan(e_mj)
        valid = valid & np.isfinite(e_mj)
        out["energy_j"] = np.where(valid, e_mj / 1000.0, np.nan)
        out["energy_valid"] = valid
    else:
        out["energy_j"] = np.nan
        out["energy_valid"] = False
    for col in QUALITY_COLUMNS:
        if col in ok.columns:
            out[col] = ok[col].astype(float).to_numpy()
    return out
