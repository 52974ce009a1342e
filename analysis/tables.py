"""Derived tables: per-request costs, per-stage means, and the MEG vs CEG vs UE-local comparison with CIs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import RunData
from analysis.stats import DEFAULT_BOOT, DEFAULT_LEVEL, Estimate, mean_ci, relative_change_ci
from measurements import schema

SCHEME_LABELS = {"meg": "MEG", "ceg": "CEG", "ue_local": "UE-local"}
BASELINES = ("ceg", "ue_local")
QUALITY_METRICS = (
    ("q_psnr_db", "PSNR (dB)"),
    ("q_ms_ssim", "MS-SSIM"),
    ("q_neg_log_mse", "−log MSE"),
)


def scheme_label(s: str) -> str:
    return SCHEME_LABELS.get(s, s)


def request_costs(data: RunData) -> pd.DataFrame:
    """One row per successful request with ``latency_s``, ``energy_j`` (gross, NaN when not valid), ``energy_net_j``
    and every configuration/quality column of its ``end_to_end`` row."""
    req = data.requests.drop_duplicates("request_id").copy()
    valid = req["energy_valid"].astype(bool) & req["energy_method"].ne("none")
    req["energy_j"] = np.where(valid, req["energy_mj_total"].astype(float) / 1e3, np.nan)
    req["energy_net_j"] = np.where(valid, req["energy_net_mj_total"].astype(float) / 1e3, np.nan)
    return req


def quality_metric(req: pd.DataFrame) -> tuple[str, str] | None:
    """The first quality column with data: PSNR, then MS-SSIM, then −log MSE."""
    for col, label in QUALITY_METRICS:
        if col in req.columns and req[col].notna().any():
            return col, label
    return None


def stage_sums(stages: pd.DataFrame, value: str = "latency_s") -> pd.DataFrame:
    """Per request x (node, stage): the sum of ``value`` (repeated rows add up); columns ``node:stage``."""
    keyed = stages.assign(segment=stages["node"] + ":" + stages["stage"])
    wide = keyed.pivot_table(index="request_id", columns="segment", values=value, aggfunc="sum", fill_value=0.0)
    return wide


def segment_order(segments) -> list[str]:
    """``node:stage`` labels in pipeline order (schema stage order, then node order)."""
    stage_rank = {s: i for i, s in enumerate(schema.STAGES)}
    node_rank = {n: i for i, n in enumerate(schema.NODES)}

    def key(seg: str):
        node, _, stage = seg.partition(":")
        return stage_rank.get(stage, 99), node_rank.get(node, 99), seg

    return sorted(segments, key=key)


def setting_columns(req: pd.DataFrame) -> list[str]:
    """Configuration columns that define a comparison setting (those that vary in the run)."""
    cols = []
    for col in ("n_steps", "merge_ratio", "decoder"):
        if col in req.columns and req[col].nunique(dropna=True) > 1:
            cols.append(col)
    return cols


@dataclass
class Comparison:
    """The scheme comparison table.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (scheme, setting): ``scheme, n_steps, merge_ratio, n, latency_s, energy_j`` (:class:`Estimate`)
        and ``dlat_vs_<baseline>``, ``den_vs_<baseline>`` (:class:`Estimate` in %) for MEG rows.
    headline : dict of str to Estimate
        MEG pooled against each baseline over the N values both have: ``latency_vs_ceg``, ``energy_vs_ceg``, ...
    method : str
        How the intervals were computed.
    """

    table: pd.DataFrame
    headline: dict[str, Estimate]
    method: str


def _group_keys(req: pd.DataFrame, scheme: str) -> list[str]:
    keys = []
    if "n_steps" in req.columns and req["n_steps"].notna().any():
        keys.append("n_steps")
    if scheme == "meg" and "merge_ratio" in req.columns and req["merge_ratio"].notna().any():
        keys.append("merge_ratio")
    if "decoder" in req.columns and req["decoder"].nunique(dropna=True) > 1:
        keys.append("decoder")
    return keys


def comparison(data: RunData, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Comparison:
    """MEG vs CEG vs UE-local: end-to-end latency and energy per setting, with 95% CIs and MEG's change in %.

    MEG at (N, β) is compared with each baseline at the same N (and decoder, when several were run); the change is
    ``100 · (MEG / baseline − 1)`` so a negative value means MEG is cheaper.
    """
    req = request_costs(data)
    records = []
    for scheme in data.schemes:
        sub = req[req["scheme"] == scheme]
        keys = _group_keys(req, scheme)
        groups = sub.groupby(keys, dropna=False, sort=True) if keys else [((), sub)]
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            rec = {"scheme": scheme, **dict(zip(keys, key, strict=True)), "n": len(g),
                   "latency_s": mean_ci(g["latency_s"], level), "energy_j": mean_ci(g["energy_j"], level),
                   "_lat": g["latency_s"].to_numpy(float), "_en": g["energy_j"].to_numpy(float)}
            records.append(rec)
    table = pd.DataFrame.from_records(records)
    boot_seed = seed
    for base in BASELINES:
        for what, col in (("dlat", "_lat"), ("den", "_en")):
            out = []
            for _, row in table.iterrows():
                if row["scheme"] != "meg" or base not in data.schemes:
                    out.append(None)
                    continue
                match = table["scheme"] == base
                for k in ("n_steps", "decoder"):
                    if k in table.columns and k in row and not _isnan(row[k]):
                        match &= table[k] == row[k]
                cand = table[match]
                if len(cand) != 1:
                    out.append(None)
                    continue
                out.append(relative_change_ci(row[col], cand.iloc[0][col], level, n_boot, boot_seed))
                boot_seed += 1
            table[f"{what}_vs_{base}"] = out
    headline: dict[str, Estimate] = {}
    meg = req[req["scheme"] == "meg"]
    for base in BASELINES:
        b = req[req["scheme"] == base]
        if meg.empty or b.empty:
            continue
        if "n_steps" in req.columns:
            common = set(meg["n_steps"].dropna()) & set(b["n_steps"].dropna())
            if not common:
                continue
            m_sel, b_sel = meg[meg["n_steps"].isin(common)], b[b["n_steps"].isin(common)]
        else:
            m_sel, b_sel = meg, b
        headline[f"latency_vs_{base}"] = relative_change_ci(m_sel["latency_s"], b_sel["latency_s"], level, n_boot,
                                                            seed + 10_000)
        headline[f"energy_vs_{base}"] = relative_change_ci(m_sel["energy_j"], b_sel["energy_j"], level, n_boot,
                                                           seed + 20_000)
    table = table.drop(columns=["_lat", "_en"])
    method = (f"{int(level * 100)}% CIs over repetitions: Student-t interval for means; percentile bootstrap "
              f"({n_boot} resamples per cell, seeded from {seed}) for the change in %, groups resampled independently")
    return Comparison(table=table, headline=headline, method=method)


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def comparison_frame(comp: Comparison) -> pd.DataFrame:
    """The comparison as plain numbers (one column per estimate part), for CSV export."""
    flat = {}
    for col in comp.table.columns:
        vals = comp.table[col]
        if vals.map(lambda v: isinstance(v, Estimate)).any():
            flat[col] = vals.map(lambda v: v.value if isinstance(v, Estimate) else np.nan)
            flat[f"{col}_ci_low"] = vals.map(lambda v: v.low if isinstance(v, Estimate) else np.nan)
            flat[f"{col}_ci_high"] = vals.map(lambda v: v.high if isinstance(v, Estimate) else np.nan)
        else:
            flat[col] = vals
    return pd.DataFrame(flat)
