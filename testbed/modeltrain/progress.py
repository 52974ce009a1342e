"""Progress lines and phase clocks (wall and CPU time, carried across resumes)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def fmt_s(seconds: float) -> str:
    """``3725`` -> ``"1h02m05s"``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def stdout_log(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


@dataclass
class PhaseClock:
    """Wall time (``perf_counter``) and process CPU time (all threads) of one phase, plus what earlier runs of
    the same phase spent before a resume (``wall_before_s`` / ``cpu_before_s``)."""

    wall_before_s: float = 0.0
    cpu_before_s: float = 0.0
    _wall0: float = field(default_factory=time.perf_counter)
    _cpu0: float = field(default_factory=time.process_time)

    @property
    def wall_s(self) -> float:
        return self.wall_before_s + time.perf_counter() - self._wall0

    @property
    def cpu_s(self) -> float:
        return self.cpu_before_s + time.process_time() - self._cpu0

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3)}


class Progress:
    """Prints ``[phase] step i/n loss ... | s/step | elapsed | eta`` every ``every`` steps (and the last one)."""

    def __init__(self, phase: str, total: int, clock: PhaseClock, start: int = 0, every: int = 25,
                 log: Callable[[str], None] = stdout_log) -> None:
        self.phase, self.total, self.clock, self.every, self.log = phase, total, clock, every, log
        self._start, self._wall0, self._cpu0 = start, clock.wall_s, clock.cpu_s
        self._smooth: dict[str, float] = {}

    def update(self, step: int, **values: float) -> None:
        """``step`` is the number of steps done; ``values`` are smoothed (EMA 0.9) for display."""
        for k, v in values.items():
            prev = self._smooth.get(k)
            self._smooth[k] = v if prev is None or not math.isfinite(prev) else 0.9 * prev + 0.1 * v
        if step % self.every and step != self.total:
            return
        done = step - self._start
        wall = self.clock.wall_s - self._wall0
        cpu = self.clock.cpu_s - self._cpu0
        per = wall / done if done else float("nan")
        eta = per * (self.total - step)
        shown = " ".join(f"{k} {v:.4g}" for k, v in self._smooth.items())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        self.log(f"[{self.phase}] step {step}/{self.total} {shown} | {per:.2f} s/step wall, "
                 f"{(cpu / done if done else float('nan')):.2f} cpu-s/step | elapsed {fmt_s(self.clock.wall_s)} "
                 f"(cpu {fmt_s(self.clock.cpu_s)}) | eta {fmt_s(eta)} | load {load:.1f}")
