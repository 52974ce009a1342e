"""The runtime's error base (its own module so the request contract and the runtime share it without a cycle)."""

from __future__ import annotations


class LdmError(ValueError):
    """Base of the runtime's user-facing errors; the message names the problem."""


__all__ = ["LdmError"]
