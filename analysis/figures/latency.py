"""Latency breakdown: mean per-stage latency stacked per scheme, per N and per β."""

from __future__ import annotations

import numpy as np
import pandas as pd

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, register_figure
from megbed.analysis.load import RunData
from megbed.analysis.stats import mean_ci
from megbed.analysis.tables import request_costs, scheme_label, segment_order, stage_sums

OTHER = "other"


def breakdown(data: RunData) -> tuple[pd.DataFrame, list[str]]:
    """Per request: latency of each ``node:stage`` segment (s) plus ``other`` = end-to-end − sum of segments.

    ``other`` is orchestration, queueing and hand-over time; it is clipped at 0 when stages overlap (then the
    stacked bar is the sum of stages and exceeds the end-to-end latency).
    """
    seg = stage_sums(data.stages)
    req = request_costs(data).set_index("request_id")
    seg = seg.reindex(req.index).fillna(0.0)
    segments = segment_order(seg.columns)
    seg = seg[segments]
    seg[OTHER] = (req["latency_s"] - seg.sum(axis=1)).clip(lower=0.0)
    keep = [c for c in req.columns if c in ("scheme", "n_steps", "merge_ratio", "decoder", "latency_s")]
    return seg.join(req[keep]), [*segments, OTHER]


def _color(segment: str):
    if segment == OTHER:
        return style.OTHER_COLOR
    node, _, stage = segment.partition(":")
    return style.stage_color(node, stage)


def _stacked(ax, x: float, means: pd.Series, segments: list[str], width: float, hatch: str | None = None) -> None:
    bottom = 0.0
    for s in segments:
        v = float(means.get(s, 0.0))
        if v <= 0:
            continue
        ax.bar(x, v, width, bottom=bottom, color=_color(s), edgecolor="white" if hatch is None else "black",
               linewidth=0.4, hatch=hatch)
        bottom += v


def _total_ci(ax, x: float, values, width: float) -> None:
    est = mean_ci(values)
    if np.isfinite(est.low):
        ax.errorbar(x, est.value, yerr=[[est.value - est.low], [est.high - est.value]], fmt="none", ecolor="black",
                    capsize=3, linewidth=1)


@register_figure("latency_breakdown", title="Latency breakdown per stage", section="Latency",
                 requires=("requests", "stages"), order=10)
def latency_breakdown(data: RunData, ctx: FigureContext):
    """Mean latency per request (s), stacked by stage in pipeline order: (a) per scheme, (b) per number of
    denoising steps N for every scheme, (c) per merging ratio β for MEG. "other" is the end-to-end latency not
    covered by any stage (orchestration, hand-over). Error bars: 95% Student-t CI of the end-to-end mean over
    repetitions."""
    table, segments = breakdown(data)
    used = [s for s in segments if table[s].sum() > 0]
    fig, axes = style.figure(1, 3, height_in=4.0, gridspec_kw={"width_ratios": [1, 2.2, 1.4]})
    schemes = data.schemes
    # (a) per scheme
    ax = axes[0, 0]
    for i, s in enumerate(schemes):
        sub = table[table["scheme"] == s]
        _stacked(ax, i, sub[used].mean(), used, 0.6)
        _total_ci(ax, i, sub["latency_s"], 0.6)
    ax.set_xticks(range(len(schemes)), [scheme_label(s) for s in schemes])
    ax.set_ylabel("latency per request (s)")
    ax.set_title("(a) per scheme")
    # (b) per N, schemes side by side
    ax = axes[0, 1]
    if "n_steps" in table.columns and table["n_steps"].notna().any():
        ns = sorted(table["n_steps"].dropna().unique())
        width = 0.8 / max(len(schemes), 1)
        hatches = {"meg": None, "ceg": "//", "ue_local": ".."}
        for j, n in enumerate(ns):
            for i, s in enumerate(schemes):
                sub = table[(table["scheme"] == s) & (table["n_steps"] == n)]
                if sub.empty:
                    continue
                x = j + (i - (len(schemes) - 1) / 2) * width
                _stacked(ax, x, sub[used].mean(), used, width * 0.92, hatches.get(s))
                _total_ci(ax, x, sub["latency_s"], width)
        ax.set_xticks(range(len(ns)), [f"N = {int(n)}" for n in ns])
        from matplotlib.patches import Patch

        ax.set_ylim(0, ax.get_ylim()[1] * 1.22)  # headroom for the scheme key
        ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches.get(s), label=scheme_label(s))
                           for s in schemes], loc="upper center", title="bars, left to right", ncol=len(schemes))
        ax.set_ylabel("latency per request (s)")
        ax.set_xlabel("denoising steps N")
    else:
        style.empty_panel(ax, "no n_steps column")
    ax.set_title("(b) per N")
    # (c) MEG per beta
    ax = axes[0, 2]
    meg = table[table["scheme"] == "meg"]
    if not meg.empty and "merge_ratio" in meg.columns and meg["merge_ratio"].notna().any():
        betas = sorted(meg["merge_ratio"].dropna().unique())
        for j, b in enumerate(betas):
            sub = meg[meg["merge_ratio"] == b]
            _stacked(ax, j, sub[used].mean(), used, 0.6)
            _total_ci(ax, j, sub["latency_s"], 0.6)
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("merging ratio β (MEG, all N)")
        ax.set_ylabel("latency per request (s)")
    else:
        style.empty_panel(ax, "no MEG requests: β does not apply")
    ax.set_title("(c) MEG per β")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=_color(s), label=style.segment_label(s) if s != OTHER else "other (orchestration)")
               for s in used]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(handles) > 10), 1, 1))
    stage_cols = [s for s in used if s != OTHER]
    overlap = int((table[stage_cols].sum(axis=1) > table["latency_s"] * 1.001).sum())
    if overlap:
        ctx.note(f"{overlap} requests have stages that overlap in time (their stage sum exceeds the end-to-end "
                 "latency); their 'other' segment is 0.")
    return fig
