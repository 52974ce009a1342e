"""One look for every figure: print-readable sizes, colour-blind-safe colours, consistent labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

# Okabe-Ito: distinguishable in colour-blind vision and in greyscale print (with the markers below).
SCHEME_COLORS = {"meg": "#0072B2", "ceg": "#E69F00", "ue_local": "#009E73"}
SCHEME_MARKERS = {"meg": "o", "ceg": "s", "ue_local": "^"}
NODE_COLORS = {"es": "#0072B2", "ue": "#D55E00", "channel": "#999999", "orchestrator": "#000000"}
OTHER_COLOR = "#D9D9D9"
# One hue per stage (no greys: grey is "other"); the UE's shade of a stage is the ES's mixed with white.
STAGE_COLORS = {
    "text_encode": "#4C72B0", "denoise": "#DD8452", "merge": "#55A868", "serialize": "#C44E52", "link": "#8172B3",
    "deserialize": "#937860", "unmerge": "#DA8BC3", "decode": "#B8A229", "image_encode": "#3E9BB8",
    "image_decode": "#2CA089",
}

RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
}
WIDTH_IN = 10.0


def stage_color(node: str, stage: str):
    """A stable colour per (node, stage): one hue per stage, full on the ES (and channel), light on the UE."""
    from matplotlib.colors import to_rgb

    base = to_rgb(STAGE_COLORS.get(stage, "#7F7F7F"))
    if node == "ue":
        return tuple(0.5 * c + 0.5 for c in base)
    return base


def segment_label(segment: str) -> str:
    node, _, stage = segment.partition(":")
    if node == "channel":
        return f"{stage.replace('_', ' ')} (channel)"
    return f"{node.upper()} {stage.replace('_', ' ')}"


def figure(nrows: int = 1, ncols: int = 1, height_in: float = 3.6, width_in: float = WIDTH_IN, **kw):
    """A new figure and its axes under the report's rc settings."""
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, height_in), squeeze=False, **kw)
    return fig, axes


def apply_rc():
    """Apply the report's rc settings (the figure functions draw inside this context)."""
    return plt.rc_context(RC)


def label_axes(ax, xlabel: str, ylabel: str, legend_title: str | None = None) -> None:
    """Name a drawn panel's axes and add its legend (small type, so it fits a third of a figure's width)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(title=legend_title, fontsize=7)


def empty_panel(ax, message: str) -> None:
    """A panel with nothing to show says why, instead of staying blank."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9,
            color="#555555")
