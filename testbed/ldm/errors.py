"""The runtime's error types, in a module that imports nothing, so every ``megbed.testbed.ldm`` module can raise them
without importing another (the request contract and the schedulers both raise them)."""

from __future__ import annotations


class LdmError(ValueError):
    """Base of the runtime's user-facing errors; the message names the problem."""


__all__ = ["LdmError"]
