"""Derived tables: per-request costs, per-stage means, and the MEG vs CEG vs UE-local comparison with CIs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from megbed.analysis.load import RunData
from megbed.analysis.stats import DEFAULT_BOOT, DEFAULT_LEVEL, Estimate, mean_ci, relative_change_ci
from megbed.measurements import schema

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
    # Peak memory per node over the request: the largest mem_peak_mb of its stage rows (ES / UE process RSS).
    stages = data.stages
    for node in ("es", "ue"):
        for col in ("mem_peak_mb", "gpu_mem_peak_mb"):
            name = f"{node}_{col}"
            if col in stages.columns:
                peak = stages[stages["node"] == node].groupby("request_id")[col].max()
                req[name] = req["request_id"].map(peak).astype(float)
            else:
                req[name] = np.nan
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


# Configuration columns that define a comparison setting, in display order, with their table headings.
SETTING_COLUMNS = {
    "n_steps": "N", "es_steps": "k", "merge_ratio": "β", "decoder": "decoder", "tome_ratio_es": "ToMe ES",
    "tome_ratio_ue": "ToMe UE", "wire_dtype": "wire", "height_px": "H (px)", "link_model": "link", "tx_mode": "tx",
    "distance_m": "d (m)", "snr_db_set": "SNR set (dB)",
}


def setting_keys(rows: pd.DataFrame) -> list[str]:
    """The setting columns that vary within ``rows`` (one scheme's requests); ``n_steps`` whenever present.

    A column that is a function of the keys already chosen (e.g. ``es_steps`` = N when the UE only decodes) adds
    nothing and is left out.
    """
    keys: list[str] = []
    for col in SETTING_COLUMNS:
        if col not in rows.columns or not rows[col].notna().any():
            continue
        if col == "n_steps":
            keys.append(col)
            continue
        if rows[col].nunique(dropna=False) <= 1:
            continue
        if keys and (rows.groupby(keys, dropna=False)[col].nunique(dropna=False) <= 1).all():
            continue
        keys.append(col)
    return keys


@dataclass
class Comparison:
    """The scheme comparison table.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (scheme, setting): ``scheme``, the setting columns that vary (``n_steps``, ``merge_ratio``,
        link condition, ...), ``n``, ``latency_s`` and ``energy_j`` (:class:`Estimate`), and for MEG rows
        ``dlat_vs_<baseline>`` / ``den_vs_<baseline>`` (:class:`Estimate`, %).
    keys : list of str
        The setting columns of the table.
    headline : dict of str to Estimate
        MEG pooled against each baseline over the N values both have: ``latency_vs_ceg``, ``energy_vs_ceg``, ...
    method : str
        How the intervals were computed.
    """

    table: pd.DataFrame
    keys: list[str]
    headline: dict[str, Estimate]
    method: str
    matched: dict[str, MatchedQuality] = field(default_factory=dict)


@dataclass
class MatchedQuality:
    """MEG against one baseline at matched quality.

    For each setting of the baseline (its N, and its link condition where it crosses a link), the MEG settings over
    the same link condition whose quality CI reaches the baseline's (MEG's upper bound >= the baseline's lower bound)
    match it; the one of lowest mean latency stands for MEG. The chosen MEG requests are then pooled against the
    baseline's requests of the settings that found a match.

    Attributes
    ----------
    metric : str
        The quality column matched on (``q_psnr_db``, ...), and ``label`` its name in text.
    latency, energy : Estimate
        MEG's change against the baseline in % (bootstrap CI); negative: MEG is cheaper.
    quality_meg, quality_base : Estimate
        Mean quality of the pooled MEG and baseline requests (t CI).
    matched, settings : int
        Baseline settings that found a matching MEG setting, of all the baseline's settings.
    chosen : list of dict
        Per matched baseline setting: its setting columns and the MEG setting chosen (``meg_<column>``).
    """

    metric: str
    label: str
    latency: Estimate
    energy: Estimate
    quality_meg: Estimate
    quality_base: Estimate
    matched: int
    settings: int
    chosen: list[dict]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def comparison(data: RunData, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Comparison:
    """MEG vs CEG vs UE-local: end-to-end latency and energy per setting, with 95% CIs and MEG's change in %.

    Each scheme's requests are grouped by the setting columns that vary among them (N always; β, decoder, link
    condition, ... when several values were run). A MEG setting is compared with the baseline setting that agrees
    on every column the baseline varies (so UE-local, which has no link, is matched on N alone). The change is
    ``100 · (MEG / baseline − 1)``: negative means MEG is cheaper.
    """
    req = request_costs(data)
    records = []
    scheme_keys = {}
    for scheme in data.schemes:
        sub = req[req["scheme"] == scheme]
        keys = setting_keys(sub)
        scheme_keys[scheme] = keys
        for setting, g in _groups(sub, keys):
            rec = {"scheme": scheme, **setting, "n": len(g),
                   "latency_s": mean_ci(g["latency_s"], level), "energy_j": mean_ci(g["energy_j"], level),
                   "_lat": g["latency_s"].to_numpy(float), "_en": g["energy_j"].to_numpy(float)}
            records.append(rec)
    all_keys = [k for k in SETTING_COLUMNS if any(k in v for v in scheme_keys.values())]
    table = pd.DataFrame.from_records(records)
    table = table[["scheme", *all_keys, *[c for c in table.columns if c not in all_keys and c != "scheme"]]]
    boot_seed = seed
    for base in BASELINES:
        base_rows = table[table["scheme"] == base]
        for what, col in (("dlat", "_lat"), ("den", "_en")):
            out = []
            for _, row in table.iterrows():
                if row["scheme"] != "meg" or base_rows.empty:
                    out.append(None)
                    continue
                match = [r for _, r in base_rows.iterrows()
                         if all(_same(r[k], row[k]) for k in scheme_keys[base] if k != "merge_ratio")]
                if len(match) != 1:
                    out.append(None)
                    continue
                out.append(relative_change_ci(row[col], match[0][col], level, n_boot, boot_seed))
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
    matched = {base: m for base in BASELINES
               if (m := matched_quality(req, base, level, n_boot, seed + 30_000)) is not None}
    method = (f"{int(level * 100)}% CIs over repetitions: Student-t interval for means; percentile bootstrap "
              f"({n_boot} resamples per cell, seeded from {seed}) for the change in %, groups resampled independently")
    return Comparison(table=table, keys=all_keys, headline=headline, method=method, matched=matched)


def _groups(rows: pd.DataFrame, keys: list[str]):
    if not keys:
        yield {}, rows
        return
    for key, g in rows.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(keys, key, strict=True)), g


def matched_quality(req: pd.DataFrame, base: str, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT,
                    seed: int = 0) -> MatchedQuality | None:
    """MEG against ``base`` at matched quality (see :class:`MatchedQuality`); None without quality data or rows.

    Parameters
    ----------
    req : pandas.DataFrame
        :func:`request_costs` rows (``scheme``, setting columns, ``latency_s``, ``energy_j``, quality columns).
    base : str
        The baseline scheme (``ceg`` or ``ue_local``).
    """
    quality = quality_metric(req)
    meg, b = req[req["scheme"] == "meg"], req[req["scheme"] == base]
    if quality is None or meg.empty or b.empty:
        return None
    metric, label = quality
    meg_keys, base_keys = setting_keys(meg), setting_keys(b)
    link_keys = [k for k in base_keys if k in ("link_model", "tx_mode", "distance_m", "snr_db_set")]
    meg_groups = [(k, g, mean_ci(g[metric], level), float(g["latency_s"].mean())) for k, g in _groups(meg, meg_keys)]
    chosen, meg_parts, base_parts = [], [], []
    settings = 0
    for bkey, bg in _groups(b, base_keys):
        settings += 1
        bq = mean_ci(bg[metric], level)
        floor = bq.low if math.isfinite(bq.low) else bq.value
        best = None
        for mkey, mg, mq, mlat in meg_groups:
            if any(k in mkey and not _same(mkey[k], bkey[k]) for k in link_keys):
                continue
            reach = mq.high if math.isfinite(mq.high) else mq.value
            if math.isfinite(reach) and reach >= floor and (best is None or mlat < best[2]):
                best = (mkey, mg, mlat)
        if best is None:
            continue
        chosen.append({**bkey, **{f"meg_{k}": v for k, v in best[0].items()}})
        meg_parts.append(best[1])
        base_parts.append(bg)
    if not chosen:
        return MatchedQuality(metric, label, Estimate(math.nan, math.nan, math.nan, 0, "none"),
                              Estimate(math.nan, math.nan, math.nan, 0, "none"), mean_ci(meg[metric], level),
                              mean_ci(b[metric], level), 0, settings, [])
    m_all, b_all = pd.concat(meg_parts), pd.concat(base_parts)
    return MatchedQuality(
        metric, label,
        relative_change_ci(m_all["latency_s"], b_all["latency_s"], level, n_boot, seed),
        relative_change_ci(m_all["energy_j"], b_all["energy_j"], level, n_boot, seed + 1),
        mean_ci(m_all[metric], level), mean_ci(b_all[metric], level), len(chosen), settings, chosen)


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
