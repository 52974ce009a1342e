"""Measured vs modeled compute costs: the paper's linear FLOP model fitted per node, with residuals."""

from __future__ import annotations

import numpy as np

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, FigureSkipped, register_figure
from megbed.analysis.load import RunData

STAGE_MARKERS = {"text_encode": "v", "denoise": "o", "decode": "s"}
PAPER_UE_SLOWDOWN = 2.0


@register_figure("cost_model", title="Measured vs modeled costs (linear FLOP model)", section="Cost model",
                 requires=("requests", "stages"), order=70)
def cost_model(data: RunData, ctx: FigureContext):
    """The paper's cost model, ``cost = a · work + b`` per node, fitted by least squares to the measured compute
    stages (text encode, denoise, decode). Left: measured against modeled (the diagonal is a perfect fit);
    right: residuals (measured − modeled) against the work. Top row latency (s), bottom row energy (J, gross,
    valid rows only). Work is the stage's FLOPs counted on the model's configs, or, when the model folder is not
    available, the number of U-Net steps (then only denoise stages are fitted)."""
    res = ctx.cost_model(data)
    if res.rows.empty or not res.fits:
        raise FigureSkipped("no compute stage with enough rows to fit (need >= 2 per node): " + res.note)
    costs = [c for c in ("latency_s", "energy_j") if any(f.cost == c for f in res.fits)]
    fig, axes = style.figure(len(costs), 2, height_in=3.2 * len(costs))
    for row, cost in enumerate(costs):
        unit = "s" if cost == "latency_s" else "J"
        name = "latency" if cost == "latency_s" else "energy"
        ax_fit, ax_res = axes[row, 0], axes[row, 1]
        for node in ("es", "ue"):
            fit = res.fit(node, cost)
            if fit is None:
                continue
            sub = res.rows[(res.rows["node"] == node) & res.rows[f"{cost}_model"].notna()]
            color = style.NODE_COLORS[node]
            for stage, g in sub.groupby("stage"):
                kw = {"color": color, "marker": STAGE_MARKERS.get(stage, "x"), "s": 14, "alpha": 0.7}
                ax_fit.scatter(g[f"{cost}_model"], g[cost], label=f"{node.upper()} {stage.replace('_', ' ')}", **kw)
                ax_res.scatter(g["work"], g[f"{cost}_residual"], **kw)
            slope_unit = f"{unit}/{res.work_unit.rstrip('s') if res.basis == 'steps' else res.work_unit}"
            ctx.note(f"{node.upper()} {name}: {fit.slope:.4g} {slope_unit} · work + {fit.intercept:.3g} {unit}, "
                     f"R² = {fit.r2:.3f}, RMSE = {fit.rmse:.3g} {unit}, n = {fit.n}.")
        lim = np.array([ax_fit.get_xlim(), ax_fit.get_ylim()])
        lo, hi = float(lim.min()), float(lim.max())
        ax_fit.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--", label="measured = modeled")
        ax_fit.set_xlabel(f"modeled {name} ({unit})")
        ax_fit.set_ylabel(f"measured {name} ({unit})")
        ax_fit.set_title(f"({'ab'[row]}) {name}: measured vs modeled")
        ax_fit.legend(fontsize=7)
        ax_res.axhline(0, color="black", linewidth=0.8)
        ax_res.set_xlabel(f"work ({res.work_unit})")
        ax_res.set_ylabel(f"residual ({unit})")
        ax_res.set_title(f"({'cd'[row]}) {name} residuals")
        work = res.rows["work"].to_numpy(float)
        if res.basis == "flops" and (work > 0).all() and work.max() / work.min() > 30:
            ax_res.set_xscale("log")  # text encoders, U-Net and VAE differ by orders of magnitude
    es, ue = res.fit("es", "latency_s"), res.fit("ue", "latency_s")
    if es is not None and ue is not None and es.slope > 0:
        ctx.note(f"Measured UE/ES latency slope ratio: {ue.slope / es.slope:.2f} (the paper assumes "
                 f"{PAPER_UE_SLOWDOWN:.0f}x).")
    ctx.note(res.note)
    if res.basis == "steps":
        fig.suptitle("FLOPs unavailable: per-step proportional model (denoise stages only)", fontsize=9,
                     color="#B00000")
    fig.tight_layout()
    return fig
