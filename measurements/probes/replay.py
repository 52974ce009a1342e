"""Replay a recorded trace as a live probe: re-run analyses, benchmarks and tests on real recorded power.

The trace is a table (pandas DataFrame, or a Parquet/CSV file) with a time column ``t_ns`` (or ``t_s``) and one
``power_mw_<rail>`` column per rail, optionally ``energy_mj_<rail>`` counters and ``valid`` (the sampler's own trace
format, see ``TraceArrays.to_frame``). Playback starts at the probe's first read: a read at clock time ``t`` returns
the last recorded sample at or before ``t0_trace + (t - t_first_read)`` -- what the original sensor would have shown
-- so the replayed probe has the recorded sensor's refresh period and lag. With energy columns the probe is a counter
probe and interpolates the counter linearly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from megbed.measurements.probes import base


def _load(trace: Any):
    import pandas as pd

    if isinstance(trace, pd.DataFrame):
        return trace
    path = Path(trace)
    if not path.is_file():
        raise base.ProbeUnavailable(f"replay trace {path} not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise base.ProbeUnavailable(f"replay trace {path}: expected .parquet or .csv")


class ReplayProbe(base.PowerProbe):
    """A recorded trace played back in real time (or on an injected clock).

    Parameters
    ----------
    trace : pandas.DataFrame or path
        The recording (see the module docstring).
    clock : callable
        Monotonic clock (ns) driving playback.
    loop : bool
        Start over at the end instead of failing reads.
    averaging_lag_s : float
        The recorded sensor's averaging lag (s), if it was an averaging sensor (e.g. from the original probe's
        ``settings()`` in the run manifest); passed on to window integration.
    sensor_period_s : float, optional
        The recorded sensor's refresh period; default: the median step of the trace.
    """

    name = "replay"

    def __init__(self, trace: Any, *, clock: base.Clock = time.monotonic_ns, loop: bool = False,
                 averaging_lag_s: float = 0.0, sensor_period_s: float | None = None) -> None:
        df = _load(trace)
        if "t_ns" in df.columns:
            t = df["t_ns"].to_numpy(dtype=np.int64)
        elif "t_s" in df.columns:
            t = np.round(df["t_s"].to_numpy(dtype=np.float64) * 1e9).astype(np.int64)
        else:
            raise base.ProbeUnavailable("replay trace needs a t_ns or t_s column")
        rails = [c[len("power_mw_"):] for c in df.columns if c.startswith("power_mw_")]
        if not rails or len(t) < 2:
            raise base.ProbeUnavailable("replay trace needs power_mw_<rail> columns and at least two samples")
        order = np.argsort(t, kind="stable")
        valid = df["valid"].to_numpy(dtype=bool)[order] if "valid" in df.columns else np.ones(len(t), bool)
        self._t = t[order]
        self._p = np.stack([df[f"power_mw_{r}"].to_numpy(dtype=np.float64) for r in rails], axis=1)[order]
        self._p[~valid] = np.nan
        energy_cols = [f"energy_mj_{r}" for r in rails]
        self._e = (np.stack([df[c].to_numpy(dtype=np.float64) for c in energy_cols], axis=1)[order]
                   if all(c in df.columns for c in energy_cols) else None)
        self.method = base.METHOD_COUNTER if self._e is not None else base.METHOD_INTEGRATED
        self.rails = tuple(base.Rail(r, r.upper(), True, "replayed") for r in rails)
        self.clock = clock
        self.loop = loop
        self._lag_s = float(averaging_lag_s)
        steps = np.diff(self._t)
        self._period_s = sensor_period_s if sensor_period_s is not None else float(np.median(steps)) / 1e9
        self._start: int | None = None
        self.source = str(trace) if isinstance(trace, (str, os.PathLike)) else "DataFrame"

    @property
    def duration_s(self) -> float:
        return float(self._t[-1] - self._t[0]) / 1e9

    def _trace_time(self) -> int:
        now = self.clock()
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        span = int(self._t[-1] - self._t[0])
        if elapsed > span:
            if not self.loop:
                raise base.ProbeReadError(f"replay trace ended after {span / 1e9:.3f} s")
            elapsed %= span
        return int(self._t[0]) + elapsed

    def read(self):
        tt = self._trace_time()
        i = int(np.searchsorted(self._t, tt, side="right")) - 1
        power = {r.key: float(self._p[i, j]) for j, r in enumerate(self.rails)}
        if any(np.isnan(v) for v in power.values()):
            raise base.ProbeReadError("recorded sample was invalid")
        energy = None
        if self._e is not None:
            energy = {r.key: float(np.interp(tt, self._t, self._e[:, j])) for j, r in enumerate(self.rails)}
        return power, energy, {}

    def sensor_period_s(self) -> float | None:
        return self._period_s

    def averaging_lag_s(self) -> float:
        return self._lag_s

    def settings(self):
        out = super().settings()
        out.update({"source": self.source, "duration_s": self.duration_s, "loop": self.loop})
        return out
