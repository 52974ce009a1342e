"""Time-domain figures: raw power traces with stage boundaries, and clock synchronisation over the run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from megbed.analysis.clock import manifest_clock_models, manifest_sync_points
from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, FigureSkipped, register_figure
from megbed.analysis.load import RunData
from megbed.analysis.tables import scheme_label

WINDOW_REQUESTS = 3


def trace_window(data: RunData, n_requests: int = WINDOW_REQUESTS) -> tuple[int, int, pd.DataFrame]:
    """The span (orchestrator ns) of the first ``n_requests`` requests whose time is covered by the traces.

    Returns ``(t0_ns, t1_ns, requests)`` with the chosen requests' end-to-end rows.
    """
    tr = data.traces
    req = data.requests.sort_values("t_start_ns")
    lo, hi = int(tr["t_ns"].min()), int(tr["t_ns"].max())
    covered = req[(req["t_start_ns"] >= lo) & (req["t_end_ns"] <= hi)]
    if covered.empty:
        raise FigureSkipped(
            "the raw traces do not cover any request's time span (check the clock offsets that map node time "
            f"onto the orchestrator's: traces span {lo / 1e9:.3f}-{hi / 1e9:.3f} s, requests "
            f"{req['t_start_ns'].min() / 1e9:.3f}-{req['t_end_ns'].max() / 1e9:.3f} s)")
    chosen = covered.head(n_requests)
    t0 = int(chosen["t_start_ns"].min())
    t1 = int(chosen["t_end_ns"].max())
    pad = int(0.03 * (t1 - t0))
    return t0 - pad, t1 + pad, chosen


@register_figure("power_traces", title="Power traces with stage boundaries", section="Power",
                 requires=("requests", "stages", "traces"), order=50)
def power_traces(data: RunData, ctx: FigureContext):
    """Raw power samples (W) of every rail over the first requests the kept traces cover, one panel per node, on
    the orchestrator's timeline (node clocks mapped through clock sync). Shaded spans are the node's stages;
    dashed lines mark request boundaries, labelled with scheme, N and β."""
    t0, t1, chosen = trace_window(data)
    tr = data.traces
    tr = tr[(tr["t_ns"] >= t0) & (tr["t_ns"] <= t1)]
    nodes = [n for n in ("es", "ue", "channel", "orchestrator") if n in set(tr["node"])]
    nodes += sorted(set(tr["node"]) - set(nodes))
    fig, axes = style.figure(len(nodes), 1, height_in=1.0 + 2.0 * len(nodes), sharex=True)
    st = data.stages
    st = st[st["request_id"].isin(chosen["request_id"])]
    from matplotlib.patches import Patch

    for ax, node in zip(axes[:, 0], nodes, strict=True):
        sub = tr[tr["node"] == node]
        for (probe, rail), g in sub.groupby(["probe", "rail"]):
            ax.plot((g["t_ns"] - t0) / 1e9, g["power_mw"] / 1e3, linewidth=0.9, label=f"{rail} ({probe})")
        spans = st[st["node"] == node]
        seen = set()
        for _, r in spans.iterrows():
            color = style.stage_color(node, r["stage"])
            ax.axvspan((r["t_start_ns"] - t0) / 1e9, (r["t_end_ns"] - t0) / 1e9, color=color, alpha=0.25, lw=0)
            seen.add(r["stage"])
        for _, r in chosen.iterrows():
            for t in (r["t_start_ns"], r["t_end_ns"]):
                ax.axvline((t - t0) / 1e9, color="black", linestyle="--", linewidth=0.7)
        ax.set_ylabel(f"{node.upper()} power (W)")
        handles, labels = ax.get_legend_handles_labels()
        handles += [Patch(color=style.stage_color(node, s), alpha=0.4, label=s.replace("_", " ")) for s in sorted(seen)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    top = axes[0, 0]
    for _, r in chosen.iterrows():
        text = scheme_label(r["scheme"])
        if "n_steps" in r and pd.notna(r["n_steps"]):
            text += f" N={int(r['n_steps'])}"
        if r["scheme"] == "meg" and "merge_ratio" in r and pd.notna(r["merge_ratio"]):
            text += f" β={r['merge_ratio']:g}"
        top.annotate(text, ((r["t_start_ns"] - t0) / 1e9, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(2, 2), textcoords="offset points", fontsize=7, va="bottom")
    axes[-1, 0].set_xlabel("time since window start (s)")
    periods = []
    for (node, probe), g in data.traces.groupby(["node", "probe"]):
        t = np.sort(g[g["rail"] == g["rail"].iloc[0]]["t_ns"].to_numpy())
        if len(t) > 2:
            periods.append(f"{node.upper()} {probe}: {np.median(np.diff(t)) / 1e6:.1f} ms")
    if periods:
        ctx.note("Median sample period: " + "; ".join(periods) + ".")
    fig.tight_layout()
    return fig


def sync_series(data: RunData) -> tuple[pd.DataFrame, str]:
    """Clock-sync points per node: ``node, t_ns, offset_ns, uncertainty_ns`` and where they came from.

    Timed sync exchanges or fits recorded in the manifest are preferred when a node has at least two; otherwise the
    offsets applied to the dataset rows over the run are used (one point per row).
    """
    pts = manifest_sync_points(data.manifest)
    if not pts.empty and pts.groupby("node").size().max() >= 2:
        return pts, "the clock-sync exchanges recorded in the manifest"
    # the channel's link row spans two hosts (its offset and bound combine the ES's and the UE's): not a clock
    rows = data.rows[data.rows["node"].isin(["es", "ue"]) & data.rows["clock_offset_ns"].notna()] \
        if "clock_offset_ns" in data.rows.columns else data.rows.iloc[:0]
    if rows.empty:
        if not pts.empty:
            return pts, "the clock-sync record of the manifest"
        raise FigureSkipped("no clock-sync points with times")
    unc = rows["clock_uncertainty_ns"] if "clock_uncertainty_ns" in rows.columns else np.nan
    df = pd.DataFrame({"node": rows["node"], "t_ns": rows["t_start_ns"], "offset_ns": rows["clock_offset_ns"],
                       "uncertainty_ns": unc})
    return df, "the offsets applied to the dataset rows (clock_offset_ns, clock_uncertainty_ns)"


@register_figure("clock_sync", title="Clock synchronisation over the run", section="Clock sync",
                 requires=("requests", "clock"), order=60)
def clock_sync(data: RunData, ctx: FigureContext):
    """(a) Each node's clock offset to the orchestrator over the run, relative to its first value (µs; the first
    value is in the legend), with the ±uncertainty band (half the sync round trip); (b) the uncertainty itself (µs).
    Drift shows as a slope in (a); stage times are trustworthy to about the uncertainty in (b)."""
    df, source = sync_series(data)
    df = df.sort_values(["node", "t_ns"])
    t_origin = float(min(df["t_ns"].min(), data.rows["t_start_ns"].min()))
    fig, axes = style.figure(1, 2, height_in=3.3)
    for node, g in df.groupby("node"):
        t = (g["t_ns"].to_numpy(float) - t_origin) / 1e9
        off = g["offset_ns"].to_numpy(float)
        rel = (off - off[0]) / 1e3
        unc = g["uncertainty_ns"].to_numpy(float) / 1e3
        color = style.NODE_COLORS.get(node)
        axes[0, 0].plot(t, rel, marker=".", color=color, label=f"{node.upper()} (first offset {off[0] / 1e6:+.3f} ms)")
        if np.isfinite(unc).any():
            axes[0, 0].fill_between(t, rel - unc, rel + unc, color=color, alpha=0.2, lw=0)
            axes[0, 1].plot(t, unc, marker=".", color=color, label=node.upper())
        if len(t) >= 2 and np.ptp(t) > 0:
            slope = np.polyfit(t, off, 1)[0]
            ctx.note(f"{node.upper()}: drift {slope / 1e3:+.2f} µs/s ({slope / 1e3:+.2f} ppm) over "
                     f"{np.ptp(t):.1f} s, median uncertainty {np.nanmedian(unc):.1f} µs.")
    axes[0, 0].set_xlabel("run time (s)")
    axes[0, 0].set_ylabel("offset change (µs)")
    axes[0, 0].set_title("(a) offset to the orchestrator")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_xlabel("run time (s)")
    axes[0, 1].set_ylabel("uncertainty (µs)")
    axes[0, 1].set_title("(b) uncertainty (half round trip)")
    if axes[0, 1].get_legend_handles_labels()[0]:
        axes[0, 1].legend(fontsize=7)
    ctx.note(f"Source: {source}.")
    for node, m in manifest_clock_models(data.manifest).items():
        ctx.note(f"{node.upper()} clock map in the manifest: offset {m.offset_ns / 1e6:+.3f} ms, drift "
                 f"{m.drift * 1e6:+.2f} ppm, uncertainty {m.uncertainty_ns / 1e3:.1f} µs"
                 + (f" from {m.samples} exchanges" if m.samples else "") + (f" ({m.method})" if m.method else "")
                 + ".")
    fig.tight_layout()
    return fig
