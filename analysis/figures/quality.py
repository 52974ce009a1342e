"""Quality against the reference as N, β and the link SNR vary; Pareto fronts of quality against cost."""

from __future__ import annotations

import numpy as np
import pandas as pd

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, FigureSkipped, register_figure
from megbed.analysis.load import RunData
from megbed.analysis.stats import mean_ci
from megbed.analysis.tables import quality_metric, request_costs, scheme_label


def _line_ci(ax, df: pd.DataFrame, x: str, y: str, **kw) -> None:
    g = df.groupby(x)[y]
    xs, ms, lo, hi = [], [], [], []
    for key, vals in g:
        est = mean_ci(vals)
        if not np.isfinite(est.value):
            continue
        xs.append(key)
        ms.append(est.value)
        lo.append(est.value - est.low if np.isfinite(est.low) else 0.0)
        hi.append(est.high - est.value if np.isfinite(est.high) else 0.0)
    if xs:
        ax.errorbar(xs, ms, yerr=[lo, hi], capsize=2, linewidth=1.2, markersize=4, **kw)


def _beta_colors(betas):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("Blues")
    return {b: cmap(0.45 + 0.55 * i / max(len(betas) - 1, 1)) for i, b in enumerate(betas)}


@register_figure("quality_sweeps", title="Quality vs N, β and SNR", section="Quality",
                 requires=("requests", "quality"), order=30)
def quality_sweeps(data: RunData, ctx: FigureContext):
    """Image quality against the reference (N_max steps, β = 0, noiseless link): (a) against the number of
    denoising steps N, one line per scheme (MEG: per β); (b) against the merging ratio β for MEG, one line per N;
    (c) against the realised link SNR for MEG requests, coloured by β, with binned means. Error bars: 95%
    Student-t CI over repetitions."""
    req = request_costs(data)
    metric = quality_metric(req)
    col, label = metric
    fig, axes = style.figure(1, 3, height_in=3.5)
    meg = req[req["scheme"] == "meg"]
    betas = sorted(meg["merge_ratio"].dropna().unique()) if "merge_ratio" in meg.columns else []
    bcol = _beta_colors(betas)
    ax = axes[0, 0]
    if "n_steps" in req.columns and req["n_steps"].nunique() >= 1:
        for s in data.schemes:
            sub = req[req["scheme"] == s]
            if s == "meg" and len(betas) > 1:
                for b in betas:
                    _line_ci(ax, sub[sub["merge_ratio"] == b], "n_steps", col, color=bcol[b],
                             marker=style.SCHEME_MARKERS["meg"], label=f"MEG β={b:g}")
            else:
                _line_ci(ax, sub, "n_steps", col, color=style.SCHEME_COLORS.get(s), marker=style.SCHEME_MARKERS.get(s),
                         label=scheme_label(s), linestyle="-" if s == "meg" else "--")
        style.label_axes(ax, "denoising steps N", label)
    else:
        style.empty_panel(ax, "no n_steps column")
    ax.set_title("(a) vs N")
    ax = axes[0, 1]
    if len(betas) > 1:
        ns = sorted(meg["n_steps"].dropna().unique()) if "n_steps" in meg.columns else [None]
        import matplotlib.pyplot as plt

        cmap = plt.get_cmap("viridis")
        for i, n in enumerate(ns):
            sub = meg if n is None else meg[meg["n_steps"] == n]
            _line_ci(ax, sub, "merge_ratio", col, color=cmap(i / max(len(ns) - 1, 1)), marker="o",
                     label="all N" if n is None else f"N = {int(n)}")
        style.label_axes(ax, "merging ratio β", label, "MEG")
    else:
        style.empty_panel(ax, "MEG was run at a single β (or not at all)")
    ax.set_title("(b) vs β (MEG)")
    ax = axes[0, 2]
    snr = meg["ch_snr_db"] if "ch_snr_db" in meg.columns else pd.Series(dtype=float)
    if snr.notna().sum() >= 2:
        for b in betas or [None]:
            sub = meg if b is None else meg[meg["merge_ratio"] == b]
            ax.scatter(sub["ch_snr_db"], sub[col], s=10, alpha=0.6, color=bcol.get(b, style.SCHEME_COLORS["meg"]),
                       label=f"β={b:g}" if b is not None else "MEG")
        edges = np.unique(np.quantile(snr.dropna(), np.linspace(0, 1, 7)))
        if len(edges) > 2:
            binned = meg.assign(bin=pd.cut(meg["ch_snr_db"], edges, include_lowest=True))
            g = binned.groupby("bin", observed=True).agg(x=("ch_snr_db", "mean"), y=(col, "mean"))
            ax.plot(g["x"], g["y"], color="black", linewidth=1.5, label="binned mean")
        style.label_axes(ax, "realised link SNR (dB)", label)
    else:
        style.empty_panel(ax, "no realised SNR (ch_snr_db) on MEG requests")
    ax.set_title("(c) vs SNR (MEG)")
    ctx.note(f"Quality metric: {label} ({col}).")
    fig.tight_layout()
    return fig


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal cost and higher or equal quality, one strictly),
    sorted by cost."""
    order = np.lexsort((-quality, cost))
    front, best = [], -np.inf
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.asarray(front, dtype=int)


def _point_means(req: pd.DataFrame, qcol: str) -> pd.DataFrame:
    keys = ["scheme", *[c for c in ("n_steps", "merge_ratio", "decoder") if c in req.columns]]
    g = req.groupby(keys, dropna=False).agg(latency_s=("latency_s", "mean"), energy_j=("energy_j", "mean"),
                                            quality=(qcol, "mean"), n=("request_id", "count"))
    return g.reset_index()


def _label(row) -> str:
    parts = []
    if "n_steps" in row and np.isfinite(row["n_steps"]):
        parts.append(f"N{int(row['n_steps'])}")
    if row["scheme"] == "meg" and "merge_ratio" in row and np.isfinite(row["merge_ratio"]):
        parts.append(f"β{row['merge_ratio']:g}")
    return ",".join(parts)


@register_figure("pareto", title="Pareto fronts: quality vs latency and energy", section="Trade-offs",
                 requires=("requests", "quality"), order=40)
def pareto(data: RunData, ctx: FigureContext):
    """Each marker is one configuration (mean over its repetitions): quality against end-to-end latency (s) and
    against energy per request (J, gross, all nodes). Lines join each scheme's Pareto-optimal configurations
    (no other configuration of the scheme is both cheaper and better); the dashed black line is the front over
    all schemes. MEG front points are labelled with N and β."""
    req = request_costs(data)
    col, label = quality_metric(req)
    pts = _point_means(req, col)
    has_energy = pts["energy_j"].notna().any()
    fig, axes = style.figure(1, 2, height_in=3.8)
    for ax, cost, xlabel in ((axes[0, 0], "latency_s", "end-to-end latency (s)"),
                             (axes[0, 1], "energy_j", "energy per request (J)")):
        if cost == "energy_j" and not has_energy:
            style.empty_panel(ax, "no valid end-to-end energy")
            continue
        sub_all = pts[pts[cost].notna() & pts["quality"].notna()]
        if sub_all.empty:
            raise FigureSkipped(f"no configuration has both {cost} and {col}")
        for s in data.schemes:
            sub = sub_all[sub_all["scheme"] == s]
            if sub.empty:
                continue
            ax.scatter(sub[cost], sub["quality"], color=style.SCHEME_COLORS.get(s), marker=style.SCHEME_MARKERS.get(s),
                       s=22, alpha=0.75, label=scheme_label(s))
            idx = pareto_front(sub[cost].to_numpy(float), sub["quality"].to_numpy(float))
            front = sub.iloc[idx]
            ax.step(front[cost], front["quality"], where="post", color=style.SCHEME_COLORS.get(s), linewidth=1)
            if s == "meg":
                for _, r in front.iterrows():
                    ax.annotate(_label(r), (r[cost], r["quality"]), textcoords="offset points", xytext=(3, 3),
                                fontsize=6.5, color=style.SCHEME_COLORS["meg"])
        idx = pareto_front(sub_all[cost].to_numpy(float), sub_all["quality"].to_numpy(float))
        front = sub_all.iloc[idx]
        ax.step(front[cost], front["quality"], where="post", color="black", linestyle="--", linewidth=0.9,
                label="front, all schemes")
        style.label_axes(ax, xlabel, label)
    axes[0, 0].set_title("(a) quality vs latency")
    axes[0, 1].set_title("(b) quality vs energy")
    fig.tight_layout()
    return fig
