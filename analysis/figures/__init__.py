"""The report's figures. Importing this package registers the built-in ones in
:data:`megbed.analysis.figures.registry.REGISTRY`; see that module for adding more."""

from __future__ import annotations

from megbed.analysis.figures import costs, decoder, distill, energy, latency, policy, quality, timeline  # noqa: F401
from megbed.analysis.figures.registry import (  # noqa: F401
    REGISTRY,
    FigureContext,
    FigureSkipped,
    FigureSpec,
    figures,
    register_figure,
)
