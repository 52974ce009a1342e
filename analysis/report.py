"""Build a campaign report from a run directory: PNG figures, CSV tables, one self-contained HTML file, a summary.

``build_report(run_dir)`` is what ``megbed report RUN_DIR`` and ``make run`` call. A figure whose data is missing is
skipped with its reason; a figure that fails is reported with its error and the rest of the report still builds.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from megbed.analysis.costfit import FlopCounter
from megbed.analysis.figures.registry import FigureContext, FigureSkipped, figures
from megbed.analysis.load import RunData, load_run
from megbed.analysis.stats import DEFAULT_BOOT, mean_ci
from megbed.analysis.tables import Comparison, comparison, comparison_frame, request_costs, scheme_label

log = logging.getLogger(__name__)

REPORT_DIR = "report"
HTML_NAME = "report.html"


@dataclass
class RenderedFigure:
    """A figure written to disk.

    Attributes
    ----------
    name, title, section, caption : str
    path : Path
        The PNG.
    notes : list of str
        Remarks the figure made while drawing (fits, sources, dropped rows).
    seconds : float
        Time to draw and save.
    """

    name: str
    title: str
    section: str
    caption: str
    path: Path
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ReportResult:
    """What :func:`build_report` produced.

    Attributes
    ----------
    run_dir, out_dir, html_path : Path
    figures : dict of str to RenderedFigure
    skipped : dict of str to str
        Figure name -> why its data was missing.
    failed : dict of str to str
        Figure name -> error (a bug or unexpected data; the report says so).
    missing : dict of str to str
        Optional run parts that were absent.
    warnings : list of str
    tables : dict of str to Path
        CSV files written (``comparison``, ``cost_model``).
    summary : str
        The short text summary (also printed by the CLI and written to ``summary.txt``).
    matched : list of str
        The summary's lines comparing MEG with each baseline at matched quality (its headline, shown by
        ``megbed run``).
    """

    run_dir: Path
    out_dir: Path
    html_path: Path
    figures: dict[str, RenderedFigure]
    skipped: dict[str, str]
    failed: dict[str, str]
    missing: dict[str, str]
    warnings: list[str]
    tables: dict[str, Path]
    summary: str
    matched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No figure failed."""
        return not self.failed


def render_figures(data: RunData, out_dir: Path, ctx: FigureContext, names: list[str] | None = None
                   ) -> tuple[dict[str, RenderedFigure], dict[str, str], dict[str, str]]:
    """Draw every registered figure (or those named) into ``out_dir/<name>.png``."""
    from megbed.analysis.figures import style

    done: dict[str, RenderedFigure] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    specs = figures()
    if names is not None:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"unknown figures {unknown}; known: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in names]
    for spec in specs:
        reason = spec.unmet(data)
        if reason:
            skipped[spec.name] = reason
            continue
        t0 = time.perf_counter()
        ctx.take_notes()
        try:
            with style.apply_rc():
                fig = spec.render(data, ctx)
                path = out_dir / f"{spec.name}.png"
                fig.savefig(path)
            plt.close(fig)
        except FigureSkipped as exc:
            skipped[spec.name] = str(exc)
            plt.close("all")
            continue
        except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the whole report
            log.error("figure %s failed:\n%s", spec.name, traceback.format_exc())
            failed[spec.name] = f"{type(exc).__name__}: {exc}"
            plt.close("all")
            continue
        done[spec.name] = RenderedFigure(spec.name, spec.title, spec.section, spec.caption, path, ctx.take_notes(),
                                         time.perf_counter() - t0)
    return done, skipped, failed


def matched_lines(comp: Comparison) -> list[str]:
    """One line per baseline: MEG against it at matched quality (:func:`megbed.analysis.tables.matched_quality`)."""
    lines = []
    for base, m in comp.matched.items():
        m_label = m.label.split(" (")[0]
        if not m.matched:
            lines.append(f"  MEG vs {scheme_label(base)} at matched {m_label}: no MEG setting reaches the baseline's "
                         f"{m_label} CI (MEG {m.quality_meg.fmt(3)}, {scheme_label(base)} {m.quality_base.fmt(3)})")
            continue
        lines.append(f"  MEG vs {scheme_label(base)} at matched {m_label} (per {scheme_label(base)} setting, the fastest "
                     f"MEG setting on its link whose {m_label} CI reaches the baseline's; {m.matched} of {m.settings} "
                     f"settings matched; {m.label} MEG {m.quality_meg.fmt(3)} vs {m.quality_base.fmt(3)}): latency "
                     f"{m.latency.fmt_pct()}, energy {m.energy.fmt_pct()}")
    return lines


def summary_text(data: RunData, comp: Comparison, result_figs: dict, skipped: dict, failed: dict,
                 html_path: Path | None) -> str:
    """A few lines a researcher reads in the terminal."""
    m = data.manifest
    req = request_costs(data)
    lines = [f"megbed report: {data.run_dir}"]
    ident = [f"run {m.get('run_id', data.rows['run_id'].iloc[0])}"]
    if m.get("schema_version"):
        ident.append(f"schema v{m['schema_version']}")
    ident.append(f"{len(req)} requests ok, {data.n_failed} failed")
    ident.append("schemes " + ", ".join(scheme_label(s) for s in data.schemes))
    lines.append("  " + "; ".join(ident))
    lines += setup_lines(data)
    costs = [("latency_s", "s", "latency"), ("energy_j", "J", "energy")]
    costs += [(f"{node}_{col}", "MB", f"{node.upper()} peak {what}") for node in ("es", "ue")
              for col, what in (("mem_peak_mb", "RSS"), ("gpu_mem_peak_mb", "GPU memory"))
              if req[f"{node}_{col}"].notna().any()]
    for col, unit, name in costs:
        parts = []
        for s in data.schemes:
            est = mean_ci(req.loc[req["scheme"] == s, col])
            parts.append(f"{scheme_label(s)} {est.fmt(3)}")
        lines.append(f"  {name} per request ({unit}, mean [95% CI], all settings pooled): " + "; ".join(parts))
    for base in ("ceg", "ue_local"):
        lat = comp.headline.get(f"latency_vs_{base}")
        en = comp.headline.get(f"energy_vs_{base}")
        if lat is not None:
            lines.append(f"  MEG vs {scheme_label(base)} (same N, pooled over the rest): latency {lat.fmt_pct()}, "
                         f"energy {en.fmt_pct() if en else 'n/a'}")
    lines += matched_lines(comp)
    for name, reason in data.missing.items():
        lines.append(f"  missing {name}: {reason}")
    lines.append(f"  figures: {len(result_figs)} written, {len(skipped)} skipped, {len(failed)} failed")
    for name, reason in skipped.items():
        lines.append(f"    skipped {name}: {reason}")
    for name, err in failed.items():
        lines.append(f"    FAILED {name}: {err}")
    if data.warnings:
        lines.append(f"  {len(data.warnings)} data warnings (see the report)")
    if html_path is not None:
        lines.append(f"  report: {html_path}")
    return "\n".join(lines)


def _first(rows: pd.DataFrame, col: str) -> Any:
    if col not in rows.columns:
        return None
    vals = rows[col].dropna()
    return None if vals.empty else vals.iloc[0]


def setup_lines(data: RunData) -> list[str]:
    """How the link was charged and how the UE ran (manifest sections ``link`` / ``ue_emulation``, else columns)."""
    m, rows = data.manifest, data.rows
    out = []
    link = m.get("link") or {}
    modes = sorted(set(rows["tx_mode"].dropna()) - {"none", ""}) if "tx_mode" in rows.columns else []  # UE-local: none
    phys = link.get("bandwidth_physical_hz", _first(rows, "ch_bandwidth_physical_hz"))
    scale = link.get("bandwidth_scale", _first(rows, "ch_bandwidth_scale"))
    bw = link.get("bandwidth_hz", _first(rows, "ch_bandwidth_hz"))
    if modes or bw is not None:
        text = f"  link: mode {'/'.join(modes) or link.get('mode', '?')}"
        if bw is not None and scale is not None and float(scale) != 1.0:
            ref = link.get("scale_to_latent")
            text += (f", bandwidth {float(phys or math.nan) / 1e6:.3g} MHz physical scaled x{float(scale):.4g} to "
                     f"{float(bw) / 1e3:.4g} kHz (model latent {link.get('model_latent', '?')} charged as "
                     f"{ref if ref else 'the reference latent'})")
        elif bw is not None:
            text += f", bandwidth {float(bw) / 1e6:.3g} MHz (physical, unscaled)"
        out.append(text)
    emu = m.get("ue_emulation") or {}
    method = emu.get("method", _first(rows, "ue_emulation"))
    if method and method != "none":
        target = emu.get("target_slowdown", _first(rows, "ue_slowdown_target"))
        achieved = emu.get("achieved_slowdown", _first(rows, "ue_slowdown_achieved"))
        out.append(f"  UE: emulated ({method}), target {float(target):.2f}x slower than the ES, achieved "
                   f"{float(achieved):.2f}x on the U-Net step; UE energy modeled"
                   + (f" from {emu['power_profile']}'s power figures" if emu.get("power_profile") else ""))
    return out


def cost_model_frame(ctx: FigureContext) -> pd.DataFrame:
    """The fitted cost model (when the cost-model figure computed it) as one row per node x cost."""
    res = ctx.cache.get("cost_model")
    if res is None:
        return pd.DataFrame()
    return pd.DataFrame([{"basis": res.basis, "work_unit": res.work_unit, **vars(f)} for f in res.fits])


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *, figure_names: list[str] | None = None,
                 seed: int = 0, n_boot: int = DEFAULT_BOOT, model_dir: str | Path | None = None,
                 with_traces: bool = True, flop_counter: FlopCounter | None = None,
                 named_models: Mapping[str, Path] | None = None) -> ReportResult:
    """Build the report of a run directory.

    Parameters
    ----------
    run_dir : path
        The run directory (``manifest.json``, ``dataset/``, optional ``traces/``, training logs, ``images/``).
    out_dir : path, optional
        Where to write (default ``RUN_DIR/report``); created if needed.
    figure_names : list of str, optional
        Only these figures (default: all registered).
    seed : int
        Seed of the bootstrap intervals.
    n_boot : int
        Bootstrap resamples per interval.
    model_dir : path, optional
        Model folder for FLOP counting (default: the one the manifest names, when present here).
    with_traces : bool
        Read raw power traces (set False to skip large traces).
    flop_counter : megbed.analysis.costfit.FlopCounter, optional
        Counts the model's FLOPs for the cost model (``megbed report`` passes ``megbed.testbed.ldm.flops``); without one
        the cost model falls back to the per-step model and says so.
    named_models : mapping of str to path, optional
        Model folders known by name (``{"default": <embedded model>}``), searched after the manifest's paths.

    Returns
    -------
    ReportResult

    Raises
    ------
    megbed.analysis.load.RunDataError, megbed.analysis.load.SchemaVersionError
        The run directory cannot be analysed (no dataset, broken schema, wrong schema version).
    """
    from megbed.analysis.html import write_html

    data = load_run(run_dir, with_traces=with_traces)
    out = Path(out_dir) if out_dir is not None else data.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    ctx = FigureContext(seed=seed, model_dir=Path(model_dir) if model_dir is not None else None, out_dir=out,
                        flop_counter=flop_counter, named_models=dict(named_models or {}))
    comp = comparison(data, n_boot=n_boot, seed=seed)
    rendered, skipped, failed = render_figures(data, out, ctx, figure_names)
    tables = {"comparison": out / "comparison.csv"}
    comparison_frame(comp).to_csv(tables["comparison"], index=False)
    costs = cost_model_frame(ctx)
    if not costs.empty:
        tables["cost_model"] = out / "cost_model.csv"
        costs.to_csv(tables["cost_model"], index=False)
    html_path = out / HTML_NAME
    summary = summary_text(data, comp, rendered, skipped, failed, html_path)
    write_html(html_path, data, comp, rendered, skipped, failed, ctx, summary)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    return ReportResult(run_dir=data.run_dir, out_dir=out, html_path=html_path, figures=rendered, skipped=skipped,
                        failed=failed, missing=dict(data.missing), warnings=list(data.warnings), tables=tables,
                        summary=summary, matched=matched_lines(comp))
