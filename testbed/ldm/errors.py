"""The runtime's error types, in a module that imports nothing, so every ``megbed.testbed.ldm`` module can raise them
without importing another (``request`` validates scheduler names from ``schedulers``, which raises these)."""

from __future__ import annotations


class LdmError(ValueError):
    """Base of the runtime's user-facing errors; the message names the problem."""


class RequestError(LdmError):
    """A request that cannot be served as given (bad N, k, beta, scheduler name, ...)."""
