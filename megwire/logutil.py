"""Log hygiene for code that faces the network: clip attacker-controlled text, rate-limit repeated warnings.

A peer chooses a frame's ``kind``, its ``msg_id`` and much of what an error message quotes; every such string is
clipped with :func:`clip` before it reaches a log line or an error frame, and warnings a peer can trigger at will
(refused frames, refused handshakes) go through :class:`RateLimitFilter`, so a flood writes one line per interval
with a count of what it suppressed instead of megabytes of log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

MAX_TEXT_CHARS = 200


def clip(value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """``repr``-like text of ``value`` (strings without quotes), at most ``limit`` characters plus a size note."""
    text = value if isinstance(value, str) else _safe_repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def _safe_repr(value: object) -> str:
    # A huge container's repr is itself the attack: bound the work before formatting.
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 64:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - repr of an exotic object (deep nesting) must not raise in a log call
        return f"<{type(value).__name__}>"


class RateLimitFilter(logging.Filter):
    """Let through at most one record per ``(logger, message template)`` per ``interval_s``; the next one that
    passes says how many were suppressed meanwhile.

    Parameters
    ----------
    interval_s : float
        Minimum spacing of two lines with the same template (s).
    min_level : int
        Records below this level pass untouched (debug lines are off in production anyway).
    clock : callable
        Monotonic clock (s); injected in tests.
    """

    def __init__(self, interval_s: float = 5.0, min_level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.min_level, self.clock = float(interval_s), min_level, clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                self.suppressed_total += 1
                return False
            self._last[key] = now
            if len(self._last) > 1024:  # templates are code constants; this only guards against misuse
                self._last.clear()
            skipped = self._suppressed.pop(key, 0)
        if skipped:
            record.msg = f"{record.getMessage()} [+{skipped} similar lines suppressed in the last " \
                         f"{self.interval_s:g} s]"
            record.args = ()
        return True


FILTERS: dict[str, RateLimitFilter] = {}


def rate_limit(logger: logging.Logger | str, interval_s: float = 5.0) -> logging.Logger:
    """Attach one :class:`RateLimitFilter` to ``logger`` (idempotent); returns the logger."""
    logger = logging.getLogger(logger) if isinstance(logger, str) else logger
    if logger.name not in FILTERS:
        FILTERS[logger.name] = RateLimitFilter(interval_s)
        logger.addFilter(FILTERS[logger.name])
    return logger


def set_rate_limit_interval(interval_s: float) -> dict[str, float]:
    """Set every installed filter's interval (0 lets every line through: tests reading logs); returns the old
    intervals by logger name."""
    old = {}
    for name, filt in FILTERS.items():
        old[name] = filt.interval_s
        filt.interval_s = float(interval_s)
        filt._last.clear()
    return old
