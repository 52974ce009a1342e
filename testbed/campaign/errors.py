"""The error types of the campaign package live here: a bad spec, a bad ``emulate:`` value, a campaign that cannot
start or continue.

The module imports nothing, so the spec parser, the emulation setup and the runner raise them without importing one
another. Each type is also importable from the module that raises it (``SpecError`` from ``spec``,
``EmulationError`` from ``emulate``, ``CampaignError`` from ``runner``).
"""

from __future__ import annotations

# A spec with hundreds of problems (a wrong key in a long grid) shows the first ones and counts the rest.
MAX_PROBLEMS_SHOWN = 30


class EmulationError(ValueError):
    """A bad ``emulate:`` value; the message names the campaign key."""


class CampaignError(RuntimeError):
    """The campaign cannot start or continue; the message says why and what to do."""


class SpecError(ValueError):
    """A campaign spec is invalid; ``problems`` lists every problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"invalid campaign spec {source}: {problems[0]}")
        else:
            shown = problems[:MAX_PROBLEMS_SHOWN]
            more = len(problems) - len(shown)
            tail = f"\n  ... and {more} more problems" if more else ""
            super().__init__(f"invalid campaign spec {source}:\n  - " + "\n  - ".join(shown) + tail)


__all__ = ["CampaignError", "EmulationError", "MAX_PROBLEMS_SHOWN", "SpecError"]
