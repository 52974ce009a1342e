"""MEG next to its conventional baselines: CEG (the ES generates the image and sends it) and UE-local.

:func:`scheme_summary` reduces a run's end_to_end rows to one line per scheme (mean latency, energy and quality
with their spread over requests) and the change of MEG's latency and energy relative to CEG and to UE-local in
percent; :func:`print_summary` prints it as a table. The analysis package's report has the publication version
(confidence intervals, per-configuration breakdowns); this is what ``megbed run`` prints at the end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from megbed.megwire.vocab import SCHEMES as SCHEME_ORDER


def scheme_summary(run_dir: str | Path) -> dict[str, Any]:
    """Per-scheme means over the run's successful requests and MEG's change vs each baseline (%).

    Returns
    -------
    dict
        ``{"schemes": {scheme: {n, failed, latency_s, latency_s_std, energy_j, energy_j_std, energy_method,
        energy_valid_share, psnr_db, neg_log_mse}}, "meg_vs": {baseline: {latency_pct, energy_pct}}}``; energy in J
        (gross, every node and the modeled transmit energy of the link).
    """
    from megbed.measurements.dataset import read_dataset

    df = read_dataset(run_dir, validate=False)
    e2e = df[df["stage"] == "end_to_end"]
    out: dict[str, Any] = {"schemes": {}, "meg_vs": {}}
    for scheme in [s for s in SCHEME_ORDER if s in set(e2e["scheme"])]:
        rows = e2e[e2e["scheme"] == scheme]
        ok = rows[rows["status"] == "ok"]
        lat = ok["latency_s"].to_numpy(dtype=float)
        energy = ok["energy_mj_total"].to_numpy(dtype=float) / 1e3
        methods = sorted(set(ok["energy_method"].astype(str)))
        out["schemes"][scheme] = {
            "n": int(len(ok)), "failed": int((rows["status"] != "ok").sum()),
            "latency_s": _mean(lat), "latency_s_std": _std(lat),
            "energy_j": _mean(energy), "energy_j_std": _std(energy),
            "energy_method": "+".join(methods) if methods else "none",
            "energy_valid_share": float(ok["energy_valid"].astype(bool).mean()) if len(ok) else math.nan,
            "psnr_db": _mean(ok["q_psnr_db"].to_numpy(dtype=float)) if "q_psnr_db" in ok else math.nan,
            "neg_log_mse": _mean(ok["q_neg_log_mse"].to_numpy(dtype=float)) if "q_neg_log_mse" in ok else math.nan,
        }
    meg = out["schemes"].get("meg")
    for base in ("ceg", "ue_local"):
        ref = out["schemes"].get(base)
        if meg and ref:
            out["meg_vs"][base] = {"latency_pct": _pct(meg["latency_s"], ref["latency_s"]),
                                   "energy_pct": _pct(meg["energy_j"], ref["energy_j"])}
    return out


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _std(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def _pct(value: float, base: float) -> float:
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return math.nan
    return 100.0 * (value - base) / base


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """The per-scheme table and MEG's change vs CEG and UE-local (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Latency and energy per scheme (end to end, mean +- std over requests)")
    for col in ("scheme", "requests", "failed", "latency (s)", "energy (J)", "energy method", "PSNR (dB)"):
        table.add_column(col, justify="right" if col not in ("scheme", "energy method") else "left")
    for scheme, s in summary["schemes"].items():
        table.add_row(scheme, str(s["n"]), str(s["failed"]),
                      f"{_fmt(s['latency_s'])} +- {_fmt(s['latency_s_std'], 2)}",
                      f"{_fmt(s['energy_j'])} +- {_fmt(s['energy_j_std'], 2)}",
                      f"{s['energy_method']} ({_fmt(100 * s['energy_valid_share'], 3)}% valid)",
                      _fmt(s["psnr_db"]))
    console.print(table)
    for base, d in summary["meg_vs"].items():
        console.print(f"MEG vs {base.upper() if base == 'ceg' else 'UE-local'}: latency {_signed(d['latency_pct'])}, "
                      f"energy {_signed(d['energy_pct'])}")


def _signed(pct: float) -> str:
    return "n/a" if not math.isfinite(pct) else f"{pct:+.1f} %"
