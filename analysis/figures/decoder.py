"""Decoder comparison (base vs distilled, or any set of UE decoders the dataset's ``decoder`` column holds)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, register_figure
from megbed.analysis.load import RunData
from megbed.analysis.stats import mean_ci
from megbed.analysis.tables import quality_metric, request_costs, scheme_label


def _bars(ax, groups: dict[str, dict[str, np.ndarray]], decoders: list[str], colors, ylabel: str) -> None:
    """Grouped bars: x = scheme, one bar per decoder, 95% t-CI error bars."""
    schemes = list(groups)
    width = 0.8 / max(len(decoders), 1)
    for j, dec in enumerate(decoders):
        xs, ms, err = [], [], [[], []]
        for i, s in enumerate(schemes):
            est = mean_ci(groups[s].get(dec, np.array([])))
            if not np.isfinite(est.value):
                continue
            xs.append(i + (j - (len(decoders) - 1) / 2) * width)
            ms.append(est.value)
            err[0].append(est.value - est.low if np.isfinite(est.low) else 0)
            err[1].append(est.high - est.value if np.isfinite(est.high) else 0)
        ax.bar(xs, ms, width * 0.92, yerr=err, capsize=2, color=colors[j], label=dec)
    ax.set_xticks(range(len(schemes)), [scheme_label(s) for s in schemes])
    ax.set_ylabel(ylabel)
    ax.legend(title="decoder", fontsize=7)


@register_figure("decoder_comparison", title="Decoder comparison", section="Decoder",
                 requires=("requests", "decoders"), order=90)
def decoder_comparison(data: RunData, ctx: FigureContext):
    """UE decoders compared on the same requests: (a) UE decode-stage latency (s); (b) energy per request (J,
    gross); (c) quality against the merging ratio β for MEG, one line per decoder. Bars and error bars: mean and
    95% Student-t CI over repetitions."""
    req = request_costs(data)
    decoders = sorted(req["decoder"].dropna().astype(str).unique())
    colors = plt.get_cmap("Set2").colors
    st = data.stages
    dec_rows = st[(st["stage"] == "decode") & (st["node"] == "ue")]
    fig, axes = style.figure(1, 3, height_in=3.4)
    lat = {s: {d: g["latency_s"].to_numpy(float) for d, g in dec_rows[dec_rows["scheme"] == s].groupby("decoder")}
           for s in data.schemes if (dec_rows["scheme"] == s).any()}
    if lat:
        _bars(axes[0, 0], lat, decoders, colors, "UE decode latency (s)")
    else:
        style.empty_panel(axes[0, 0], "no UE decode stage rows")
    axes[0, 0].set_title("(a) UE decode latency")
    en = {s: {d: g["energy_j"].to_numpy(float) for d, g in req[req["scheme"] == s].groupby("decoder")}
          for s in data.schemes}
    if req["energy_j"].notna().any():
        _bars(axes[0, 1], en, decoders, colors, "energy per request (J)")
    else:
        style.empty_panel(axes[0, 1], "no valid end-to-end energy")
    axes[0, 1].set_title("(b) energy per request")
    ax = axes[0, 2]
    metric = quality_metric(req)
    meg = req[req["scheme"] == "meg"]
    if metric and not meg.empty and "merge_ratio" in meg.columns:
        col, label = metric
        for j, dec in enumerate(decoders):
            g = meg[meg["decoder"] == dec].groupby("merge_ratio")[col]
            pts = [(b, mean_ci(v)) for b, v in g]
            xs = [b for b, _ in pts]
            ys = [e.value for _, e in pts]
            lo = [e.value - e.low if np.isfinite(e.low) else 0 for _, e in pts]
            hi = [e.high - e.value if np.isfinite(e.high) else 0 for _, e in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, color=colors[j], label=dec)
        style.label_axes(ax, "merging ratio β", label, "decoder")
    else:
        style.empty_panel(ax, "no MEG quality to compare")
    ax.set_title("(c) MEG quality vs β")
    fig.tight_layout()
    return fig
