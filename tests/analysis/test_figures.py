"""Every registered figure renders from the fixture run; the registry skips figures whose data is missing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megbed.analysis.figures import REGISTRY, FigureContext, FigureSkipped, figures, register_figure
from megbed.analysis.figures.quality import pareto_front
from megbed.analysis.load import load_run
from megbed.analysis.report import render_figures

BUILTIN = {"latency_breakdown", "energy_nodes", "energy_rails", "quality_sweeps", "pareto", "power_traces",
           "clock_sync", "cost_model", "policy_training", "decoder_comparison"}


def test_builtin_figures_are_registered():
    assert BUILTIN <= {s.name for s in figures()}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_figure_rendered_in_the_full_report(full_report, name):
    assert full_report.failed == {}
    assert name in full_report.figures, full_report.skipped.get(name)
    fig = full_report.figures[name]
    with Image.open(fig.path) as im:
        w, h = im.size
        grey = np.asarray(im.convert("L"), dtype=float)
    assert w >= 600 and h >= 300
    assert grey.std() > 20  # drawn, not blank
    assert fig.caption and fig.title


def test_figure_notes_carry_the_numbers(full_report):
    notes = " ".join(full_report.figures["cost_model"].notes)
    assert "R² =" in notes and "UE/ES latency slope ratio: 2.4" in notes
    assert "Source: the clock-sync exchanges recorded in the manifest" in " ".join(full_report.figures["clock_sync"].notes)
    assert "ppm" in " ".join(full_report.figures["clock_sync"].notes)


def test_missing_data_skips_with_the_reason(bare_report):
    skipped = bare_report.skipped
    assert "raw power traces" in skipped["power_traces"]
    assert "training log" in skipped["policy_training"]
    assert "single value" in skipped["decoder_comparison"]
    assert bare_report.failed == {}
    assert {"latency_breakdown", "energy_nodes", "quality_sweeps", "pareto", "cost_model"} <= set(bare_report.figures)
    fallback = " ".join(bare_report.figures["cost_model"].notes)
    assert "per-step proportional model" in fallback


def test_pareto_front_closed_form():
    cost = np.array([1.0, 2.0, 3.0, 2.5, 4.0])
    quality = np.array([1.0, 3.0, 2.0, 3.0, 5.0])
    # (3, 2) is beaten by (2, 3); (2.5, 3) ties quality at higher cost
    assert pareto_front(cost, quality).tolist() == [0, 1, 4]


def test_registry_extension_skip_and_failure(full_run, tmp_path):
    data = load_run(full_run, with_traces=False)
    calls = []

    @register_figure("test_extra_ok", title="extra", section="Test", requires=("requests",), order=999)
    def extra_ok(data, ctx):
        from megbed.analysis.figures import style

        calls.append(1)
        fig, axes = style.figure(1, 1)
        axes[0, 0].plot([0, 1], [0, 1])
        ctx.note("drawn")
        return fig

    @register_figure("test_extra_skip", title="skip", section="Test", requires=("requests",), order=999)
    def extra_skip(data, ctx):
        raise FigureSkipped("nothing to compare")

    @register_figure("test_extra_fail", title="fail", section="Test", requires=("requests",), order=999)
    def extra_fail(data, ctx):
        raise KeyError("no_such_column")

    @register_figure("test_extra_needs", title="needs", section="Test", requires=("traces",), order=999)
    def extra_needs(data, ctx):
        raise AssertionError("must not be called")

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_figure("test_extra_ok", title="x", section="Test")(lambda d, c: None)
        done, skipped, failed = render_figures(
            data, tmp_path, FigureContext(),
            ["test_extra_ok", "test_extra_skip", "test_extra_fail", "test_extra_needs"])
        assert list(done) == ["test_extra_ok"] and done["test_extra_ok"].notes == ["drawn"]
        assert (tmp_path / "test_extra_ok.png").is_file() and calls == [1]
        assert skipped["test_extra_skip"] == "nothing to compare"
        assert "raw traces not loaded" in skipped["test_extra_needs"]
        assert failed["test_extra_fail"].startswith("KeyError")
        with pytest.raises(ValueError, match="unknown figures"):
            render_figures(data, tmp_path, FigureContext(), ["no_such_figure"])
    finally:
        for name in ("test_extra_ok", "test_extra_skip", "test_extra_fail", "test_extra_needs"):
            REGISTRY.pop(name, None)
