"""The modeled fallback: CPU time x a firmware profile's power figures. Always labelled ``modeled``.

Per component ``c`` of the profile's ``[power_model]``: ``P_c = idle_w + (active_w - idle_w) * u_c`` where ``u_c`` is

* for ``source = "cpu_time"``: CPU utilisation over the last read interval, ``d(cpu time) / (d(wall) x n_cpus)``
  (this process's CPU time by default, the whole system's from ``/proc/stat`` with ``cpu_time="system"``);
* for ``source = "none"``: 0, the component is held at its idle figure (so a GPU workload is *under*-estimated;
  the probe says so in its settings).

The model is integrated exactly between reads into a cumulative modeled energy, so windows are a difference of
that counter: energy = sum(idle) x duration + sum((active - idle) x CPU-seconds / n_cpus). It is a placeholder for a
measurement, never a measurement: the method column says ``modeled``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from megbed.measurements.probes import base

NS = 1_000_000_000


def system_cpu_time_ns(proc_root: str | os.PathLike = "/") -> int:
    """Busy CPU time of the whole system (all cores, ns) from ``/proc/stat`` (user+nice+system+irq+softirq+steal)."""
    path = Path(proc_root) / "proc/stat"
    try:
        first = path.read_text().splitlines()[0].split()
    except (OSError, IndexError) as exc:
        raise base.ProbeReadError(f"cannot read {path}: {exc}") from exc
    ticks = [int(x) for x in first[1:]]
    busy = ticks[0] + ticks[1] + ticks[2] + sum(ticks[5:8])
    return busy * NS // os.sysconf("SC_CLK_TCK")


class ModeledProbe(base.PowerProbe):
    """Modeled power from CPU time and per-component figures.

    Parameters
    ----------
    power_model : mapping
        Component -> figure with ``idle_w``, ``active_w`` and ``source`` (``cpu_time`` or ``none``); attributes or
        dict keys (a ``firmware_profiles.PowerFigure`` or the TOML table).
    cpu_time : ``"process"``, ``"system"`` or callable
        Where CPU time comes from; a callable returns cumulative CPU ns (injected in tests).
    n_cpus : int, optional
        Cores the utilisation is normalised by (default: ``os.cpu_count()``).
    profile_name : str
        Named in the settings, for provenance.
    """

    name = "modeled"
    method = base.METHOD_MODELED

    def __init__(self, power_model: Mapping[str, Any], *, cpu_time: str | Callable[[], int] = "process",
                 n_cpus: int | None = None, clock: base.Clock = time.monotonic_ns, profile_name: str = "") -> None:
        if not power_model:
            raise base.ProbeUnavailable("no power figures to model with (the firmware profile has no [power_model])")
        self.clock = clock
        self.figures: dict[str, tuple[float, float, str]] = {}
        for comp, fig in power_model.items():
            get = fig.get if isinstance(fig, Mapping) else lambda k, d=None, f=fig: getattr(f, k, d)
            idle, active = float(get("idle_w")), float(get("active_w"))
            source = str(get("source", "none") or "none")
            if source not in ("cpu_time", "none"):
                raise ValueError(f"power_model.{comp}.source must be cpu_time or none, got {source!r}")
            self.figures[comp] = (idle, active, source)
        if cpu_time == "process":
            self._cpu: Callable[[], int] = time.process_time_ns
        elif cpu_time == "system":
            self._cpu = system_cpu_time_ns
        elif callable(cpu_time):
            self._cpu = cpu_time
        else:
            raise ValueError(f"cpu_time must be 'process', 'system' or a callable, got {cpu_time!r}")
        self.cpu_time_source = cpu_time if isinstance(cpu_time, str) else "injected"
        self.n_cpus = int(n_cpus or os.cpu_count() or 1)
        self.profile_name = profile_name
        self.rails = tuple(base.Rail(c, c.upper(), True, "modeled" + (" (idle figure only)" if s == "none" else ""))
                           for c, (_, _, s) in self.figures.items())
        self._last_t = self.clock()
        self._last_cpu = self._cpu()
        self._energy = {c: 0.0 for c in self.figures}
        self._power = {c: idle for c, (idle, _, _) in self.figures.items()}

    def read(self):
        now, cpu = self.clock(), self._cpu()
        dt = now - self._last_t
        if dt > 0:
            util = min(max((cpu - self._last_cpu) / (dt * self.n_cpus), 0.0), 1.0)
            for comp, (idle, active, source) in self.figures.items():
                p_mw = (idle + (active - idle) * (util if source == "cpu_time" else 0.0)) * 1000.0
                self._power[comp] = p_mw
                self._energy[comp] += p_mw * dt / NS
            self._last_t, self._last_cpu = now, cpu
        return dict(self._power), dict(self._energy), {}

    def settings(self):
        out = super().settings()
        out.update({
            "profile": self.profile_name, "cpu_time": self.cpu_time_source, "n_cpus": self.n_cpus,
            "figures_w": {c: {"idle_w": i, "active_w": a, "source": s} for c, (i, a, s) in self.figures.items()},
            "note": "modeled from CPU time and the profile's power figures, not measured; components without a "
                    "utilisation source are held at their idle figure",
        })
        return out
