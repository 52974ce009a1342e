"""Offline distortion of the base vs the distilled UE decoder (``megbed distill eval`` / benchmarks/distill_table.py).

Unlike the other figures this one does not come from the run's rows: it reads the distortion summary the
distillation wrote (columns ``decoder, beta, condition, kind, snr_db, sigma, steps, n_images, neg_log_mse_mean,
neg_log_mse_ci95, psnr_db_mean, psnr_db_ci95, mse_mean``), looked up in this order:

1. ``RUN_DIR/distortion.csv`` or ``RUN_DIR/distill/distortion.csv`` (copy one there to pin it to a run);
2. ``<model>/ue_decoder/distortion.csv`` of the model the run's manifest names (the shipped decoder's own table).

Skipped, with the places looked at, when none exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from megbed.analysis.figures import style
from megbed.analysis.figures.registry import FigureContext, FigureSkipped, register_figure
from megbed.analysis.load import RunData

FILE = "distortion.csv"
NEEDED = {"decoder", "beta", "condition", "kind", "snr_db", "neg_log_mse_mean", "psnr_db_mean"}


def find_table(data: RunData, ctx: FigureContext) -> tuple[Path | None, list[Path]]:
    """The distortion summary for this run, and every path tried."""
    tried = [data.run_dir / FILE, data.run_dir / "distill" / FILE]
    model_dir = ctx.model_dir
    if model_dir is None:
        from megbed.analysis.model_folder import find_model_dir

        model_dir = find_model_dir(data.manifest, None, data.run_dir, ctx.named_models)[0]
    if model_dir is not None:
        tried.append(Path(model_dir) / "ue_decoder" / FILE)
    for path in tried:
        if path.is_file():
            return path, tried
    return None, tried


def _x_of(df: pd.DataFrame) -> pd.Series:
    """Link axis: SNR in dB, noiseless drawn to the right of the highest SNR."""
    top = df["snr_db"].max()
    top = 20.0 if not np.isfinite(top) else top
    return df["snr_db"].where(df["kind"] != "none", top + 10.0)


@register_figure("decoder_distortion", title="Distilled vs base UE decoder (offline distortion)", section="Decoder",
                 requires=(), order=91)
def decoder_distortion(data: RunData, ctx: FigureContext):
    """Distortion against the N_ref-step reference on held-out prompts, from the distillation's evaluation (not
    from this run's requests): (a) -ln MSE against the merging ratio β, solid = distilled, dashed = base, one colour
    per link condition (analog AWGN SNR through the channel emulator, or noiseless); (b) the paired gain of the
    distilled decoder in PSNR (dB) against the link SNR, one line per β ("∞" = noiseless). Means over prompts and
    the N listed in the table; error bars: 95 % Student-t CI."""
    path, tried = find_table(data, ctx)
    if path is None:
        raise FigureSkipped("no distillation distortion table (looked for " + ", ".join(str(p) for p in tried) + ")")
    df = pd.read_csv(path)
    missing = NEEDED - set(df.columns)
    if missing or not {"base", "distilled"} <= set(df["decoder"]):
        raise FigureSkipped(f"{path} lacks {sorted(missing) or 'base and distilled rows'}")
    df = df[df["kind"].isin(["none", "snr"])].copy()
    df["x"] = _x_of(df)
    ctx.note(f"Source: {path} (N in {{{df['steps'].iloc[0] if 'steps' in df else '?'}}}, "
             f"{int(df['n_images'].iloc[0]) if 'n_images' in df else '?'} images per cell).")
    fig, axes = style.figure(1, 2, height_in=3.6)
    import matplotlib.pyplot as plt

    conds = list(dict.fromkeys(df.sort_values("x", ascending=False)["condition"]))
    cmap = plt.get_cmap("viridis")
    ax = axes[0, 0]
    for k, cond in enumerate(conds):
        color = cmap(k / max(len(conds) - 1, 1))
        for dec, ls in (("distilled", "-"), ("base", "--")):
            g = df[(df["condition"] == cond) & (df["decoder"] == dec)].sort_values("beta")
            err = g["neg_log_mse_ci95"].fillna(0) if "neg_log_mse_ci95" in g else None
            ax.errorbar(g["beta"], g["neg_log_mse_mean"], yerr=err, color=color, linestyle=ls, marker="o",
                        markersize=3, capsize=2, label=cond if dec == "distilled" else None)
    ax.set_xlabel("merging ratio β")
    ax.set_ylabel("−ln MSE vs reference")
    ax.set_title("(a) quality vs β (solid: distilled, dashed: base)")
    ax.legend(fontsize=7, title="link")
    ax = axes[0, 1]
    wide = df.pivot_table(index=["beta", "x"], columns="decoder", values="psnr_db_mean").reset_index()
    betas = sorted(wide["beta"].unique())
    bmap = plt.get_cmap("Blues")
    for k, beta in enumerate(betas):
        g = wide[wide["beta"] == beta].sort_values("x")
        color = bmap(0.4 + 0.6 * k / max(len(betas) - 1, 1))
        ax.plot(g["x"], g["distilled"] - g["base"], marker="o", markersize=3, color=color, label=f"β = {beta:g}")
        if "auto" in g:  # the calibrated gate between the two (megbed.testbed.ldm.gate)
            ax.plot(g["x"], g["auto"] - g["base"], marker="x", markersize=3, color=color, linestyle=":")
    ax.axhline(0.0, color="k", linewidth=0.8)
    xs = sorted(df["x"].unique())
    ax.set_xticks(xs, [("∞" if df.loc[df["x"] == x, "kind"].iloc[0] == "none" else f"{x:g}") for x in xs])
    ax.set_xlabel("link SNR (dB)")
    ax.set_ylabel("PSNR gain, distilled − base (dB)")
    ax.set_title("(b) gain of the distilled decoder" + (" (dotted: auto gate)" if "auto" in wide else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
