"""Learning-rate schedule (a pure function of the step, so resuming needs no scheduler state)."""

from __future__ import annotations

import math


def lr_at(step: int, *, total: int, lr: float, lr_min: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``lr_min`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    frac = min(max(step - warmup, 0) / span, 1.0)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * frac))


def cycle_total(step: int, total: int, restarts: tuple[int, ...] = ()) -> int:
    """The ``total`` of :func:`lr_at` at ``step`` when the cosine decay first ends at each of ``restarts`` in turn
    and then at ``total``: the first of them that ``step`` has not reached (a warm restart at each, to the rate the
    longer decay has there)."""
    return min(m for m in (*restarts, total) if m > step) if step < total else total


def set_lr(optimizer, value: float) -> None:
    """Set every parameter group's rate to ``value`` times its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
