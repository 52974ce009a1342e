"""megbed analysis: turn a run directory into validated tables, figures and one self-contained HTML report.

Public entry points (imported lazily, so ``import analysis`` stays cheap)::

    from analysis import build_report, load_run
    result = build_report("runs/2026-11-26")      # -> ReportResult (html_path, figures, skipped, missing, summary)
    data = load_run("runs/2026-11-26")            # -> RunData (rows, requests, stages, traces, training_logs, ...)

Figures live in :mod:`megbed.analysis.figures` (a registry: add one with ``register_figure``); the CLI is
``megbed report RUN_DIR`` (:mod:`megbed.testbed.cli.report`). This package reads datasets only: it never imports node code.
"""

from __future__ import annotations

_EXPORTS = {
    "build_report": "megbed.analysis.report", "ReportResult": "megbed.analysis.report", "load_run": "megbed.analysis.load",
    "RunData": "megbed.analysis.load", "RunDataError": "megbed.analysis.load", "SchemaVersionError": "megbed.analysis.load",
    "register_figure": "megbed.analysis.figures.registry", "comparison": "megbed.analysis.tables",
    "fit_cost_model": "megbed.analysis.costfit",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
