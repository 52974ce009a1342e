"""The figure registry: each figure declares the data it needs and is skipped, with the reason, when it is missing.

Adding a figure (e.g. a later decoder-distillation comparison)::

    from megbed.analysis.figures.registry import register_figure

    @register_figure("my_figure", title="...", section="Decoder", requires=("requests", "decoders"))
    def my_figure(data, ctx):
        fig, axes = style.figure(1, 2)
        ...
        return fig

A figure function may also raise :class:`FigureSkipped` when it finds, after looking closer, that the data cannot
support it, and may call ``ctx.note(...)`` to attach remarks shown under the figure in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megbed.analysis.load import RunData
from megbed.measurements import schema


class FigureSkipped(Exception):
    """The data cannot support a figure; the message is the reason shown in the report."""


@dataclass
class FigureContext:
    """Shared state of one report build: settings, notes, and results computed once (cost fits, comparison).

    Attributes
    ----------
    seed : int
        Seed of every resampling.
    model_dir : Path or None
        Model folder for FLOP counting (None: look where the manifest says).
    out_dir : Path or None
        The report folder (holds ``flops_cache.json`` between builds).
    flop_counter : megbed.analysis.costfit.FlopCounter or None
        Counts the model's FLOPs for the cost model (None: the per-step fallback).
    named_models : dict
        Model folders known by name (``{"default": <embedded model>}``), searched after the manifest's paths.
    cache : dict
        Results shared between figures and tables.
    """

    seed: int = 0
    model_dir: Path | None = None
    out_dir: Path | None = None
    flop_counter: Any = None
    named_models: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    _notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Attach a remark to the figure being drawn."""
        self._notes.append(text)

    def take_notes(self) -> list[str]:
        out, self._notes = self._notes, []
        return out

    def cost_model(self, data: RunData):
        from megbed.analysis.costfit import fit_cost_model

        if "cost_model" not in self.cache:
            cache = self.out_dir / "flops_cache.json" if self.out_dir is not None else None
            self.cache["cost_model"] = fit_cost_model(data, self.model_dir, flop_cache=cache,
                                                      flop_counter=self.flop_counter, named_models=self.named_models)
        return self.cache["cost_model"]


def _has_values(df, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _clock_available(data: RunData) -> str | None:
    from megbed.analysis.clock import manifest_sync_points

    if not manifest_sync_points(data.manifest).empty:
        return None
    rows = data.rows[data.rows["node"] != "orchestrator"]
    if _has_values(rows, "clock_offset_ns"):
        return None
    return "no clock-sync record (manifest 'clock_sync' absent and no clock_offset_ns in the rows)"


def _energy_available(data: RunData) -> str | None:
    st = data.stages
    ok = st["energy_valid"].astype(bool) & st["energy_method"].ne("none") & st["energy_mj_total"].notna()
    if ok.any():
        return None
    reasons = st["energy_invalid_reason"].replace("", np.nan).dropna().value_counts()
    top = f" (most often: {reasons.index[0]!r}, {int(reasons.iloc[0])} rows)" if len(reasons) else ""
    return "no valid energy measurement in any stage row" + top


def _rails_available(data: RunData) -> str | None:
    rails = schema.rail_columns(data.rows.columns)
    if not rails or not any(data.stages[c].notna().any() for c in rails):
        return "no per-rail energy columns (energy_mj_<rail>) with data"
    return None


def _quality_available(data: RunData) -> str | None:
    req = data.requests
    if any(_has_values(req, c) for c in ("q_psnr_db", "q_ms_ssim", "q_neg_log_mse", "q_mse")):
        return None
    return "no quality columns (q_psnr_db, q_ms_ssim, q_neg_log_mse) with data"


def _decoders_available(data: RunData) -> str | None:
    req = data.requests
    if "decoder" not in req.columns or req["decoder"].nunique(dropna=True) < 2:
        return "the dataset's decoder column has a single value (no decoder comparison to make)"
    return None


# requirement name -> check returning None when satisfied, else the reason
REQUIREMENTS: dict[str, Callable[[RunData], str | None]] = {
    "requests": lambda d: None if len(d.requests) else "no successful request",
    "stages": lambda d: None if len(d.stages) else "no per-stage rows of successful requests",
    "energy": _energy_available,
    "rails": _rails_available,
    "quality": _quality_available,
    "traces": lambda d: None if d.traces is not None else d.missing.get("traces", "no raw power traces"),
    "clock": _clock_available,
    "training_logs": lambda d: None if d.training_logs else d.missing.get("training_logs", "no training log"),
    "decoders": _decoders_available,
}


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure.

    Attributes
    ----------
    name : str
        File stem of the PNG (``report/<name>.png``).
    title : str
        Heading in the report.
    section : str
        Report section it appears in.
    requires : tuple of str
        Names in :data:`REQUIREMENTS`.
    render : callable
        ``render(data, ctx) -> matplotlib.figure.Figure``.
    caption : str
        What the figure shows, with units and how the numbers were made.
    order : int
        Position in the report (lower first).
    """

    name: str
    title: str
    section: str
    requires: tuple[str, ...]
    render: Callable
    caption: str = ""
    order: int = 100

    def unmet(self, data: RunData) -> str | None:
        """The first unmet requirement's reason, or None when the figure can be drawn."""
        for req in self.requires:
            check = REQUIREMENTS.get(req)
            if check is None:
                return f"unknown requirement {req!r}"
            reason = check(data)
            if reason:
                return reason
        return None


REGISTRY: dict[str, FigureSpec] = {}


def register_figure(name: str, *, title: str, section: str, requires: tuple[str, ...] = ("requests",),
                    caption: str = "", order: int = 100):
    """Decorator adding a figure function to :data:`REGISTRY` (a name registered twice is an error)."""

    def wrap(fn: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].render is not fn:
            raise ValueError(f"figure {name!r} is already registered")
        REGISTRY[name] = FigureSpec(name, title, section, tuple(requires), fn, caption or (fn.__doc__ or "").strip(),
                                    order)
        return fn

    return wrap


def figures() -> list[FigureSpec]:
    """Every registered figure, in report order. The built-in ones are registered by the time this runs: importing
    this module imports its package first, whose ``__init__`` imports every figure module."""
    return sorted(REGISTRY.values(), key=lambda s: (s.order, s.name))


def finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]
