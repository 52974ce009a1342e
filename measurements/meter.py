"""The API nodes call: a :class:`Meter` owns the chosen probe(s) and their samplers and measures stage windows.

Typical use on a node::

    meter = Meter.from_profile("jetson_orin_nano_15w")      # or Meter([probe, ...])
    meter.start()
    meter.measure_idle(5.0)                                  # idle baseline for net energy
    with meter.window("decode", sync=torch.cuda.synchronize) as w:
        run_decoder()
    row.update(w.result.to_columns())                        # energy_mj_<rail>, energy_net_mj_<rail>, ...
    meter.stop()

Window energy: a probe with a cumulative counter (NVML, RAPL, modeled) is differenced between forced reads at the
two edges; a power-only probe is integrated (trapezoid, linear interpolation at the edges) over its sampled trace,
after shifting the samples back by the sensor's averaging lag. Windows shorter than ``min_window_periods`` sensor
(or counter) periods, windows with gaps in the samples, and windows whose edge reads failed are flagged invalid with
the reason; the number is still reported.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from megbed.measurements.integrate import NS_PER_S, counter_delta_mj, integrate_window
from megbed.measurements.probes.base import (
    METHOD_COUNTER,
    METHOD_INTEGRATED,
    METHOD_MODELED,
    PowerProbe,
    PowerReading,
)
from megbed.measurements.sampler import DEFAULT_RATE_HZ, Sampler
from megbed.measurements.schema import energy_column, energy_net_column

# Weakest first: a window combining a modeled and a measured probe is reported as modeled.
_METHOD_RANK = {METHOD_MODELED: 0, METHOD_INTEGRATED: 1, METHOD_COUNTER: 2}


@dataclass
class StageEnergy:
    """Energy of one stage window on one node.

    Attributes
    ----------
    stage : str
        Stage name.
    probe : str
        Probe backend(s) that measured it (``"nvml+rapl"`` when several).
    t_start_ns, t_end_ns : int
        Window edges on the node's monotonic clock (ns).
    energy_mj : dict[str, float]
        Gross energy per rail key (mJ).
    energy_net_mj : dict[str, float]
        Energy minus the idle baseline per rail (mJ); NaN without a baseline.
    total_mj : float
        Gross energy summed over the rails counted in the board total (mJ).
    net_total_mj : float
        Idle-subtracted total (mJ); NaN without a baseline.
    method : str
        ``counter``, ``integrated`` or ``modeled`` (the weakest over the probes used).
    valid : bool
        Whether the gross figure can be trusted.
    reason : str
        Why not, when ``valid`` is False; notes otherwise may also appear (empty when none).
    n_samples : int
        Power samples inside the window (integrated method), summed over probes.
    """

    stage: str
    probe: str
    t_start_ns: int
    t_end_ns: int
    energy_mj: dict[str, float]
    energy_net_mj: dict[str, float]
    total_mj: float
    net_total_mj: float
    method: str
    valid: bool
    reason: str
    n_samples: int = 0

    @property
    def duration_s(self) -> float:
        return (self.t_end_ns - self.t_start_ns) / NS_PER_S

    @property
    def mean_power_mw(self) -> float:
        return self.total_mj / self.duration_s if self.duration_s > 0 else float("nan")

    def to_columns(self) -> dict[str, Any]:
        """The dataset columns this window fills (names from :mod:`megbed.measurements.schema`)."""
        cols: dict[str, Any] = {}
        for rail, value in self.energy_mj.items():
            cols[energy_column(rail)] = float(value)
        for rail, value in self.energy_net_mj.items():
            cols[energy_net_column(rail)] = float(value)
        cols["energy_mj_total"] = float(self.total_mj)
        cols["energy_net_mj_total"] = float(self.net_total_mj)
        cols["energy_method"] = self.method
        cols["energy_valid"] = bool(self.valid)
        cols["energy_invalid_reason"] = "" if self.valid else self.reason
        cols["probe"] = self.probe
        return cols


@dataclass
class IdleBaseline:
    """Idle power per rail, measured over a quiet window.

    Attributes
    ----------
    power_mw : dict[str, float]
        Mean idle power per rail key (mW).
    total_power_mw : float
        Mean idle power over the board total (mW).
    duration_s : float
        Length of the idle window (s).
    valid : bool
        Whether the idle window itself was trustworthy.
    reason : str
        Why not.
    method : str
        How it was measured.
    """

    power_mw: dict[str, float]
    total_power_mw: float
    duration_s: float
    valid: bool = True
    reason: str = ""
    method: str = METHOD_INTEGRATED

    def to_dict(self) -> dict[str, Any]:
        return {"power_mw": self.power_mw, "total_power_mw": self.total_power_mw, "duration_s": self.duration_s,
                "valid": self.valid, "reason": self.reason, "method": self.method}


@dataclass
class _ProbeState:
    probe: PowerProbe
    sampler: Sampler
    prefix: str = ""  # added to rail keys when two probes report the same rail name


@dataclass
class Window:
    """An energy window around one stage. ``result`` is computed on first access (it may wait briefly for the
    sampler to cover the window's end when the sensor averages with a lag)."""

    stage: str
    meter: Meter
    t_start_ns: int
    start_reads: list[PowerReading]
    sync: Callable[[], Any] | None = None
    t_end_ns: int | None = None
    end_reads: list[PowerReading] = field(default_factory=list)
    _result: StageEnergy | None = None

    @property
    def closed(self) -> bool:
        return self.t_end_ns is not None

    @property
    def result(self) -> StageEnergy:
        if self.t_end_ns is None:
            raise RuntimeError(f"window {self.stage!r} is still open: call meter.end(window) first")
        if self._result is None:
            self._result = self.meter._compute(self)
        return self._result


class Meter:
    """Owns probes and their samplers; measures idle baselines and stage windows.

    Parameters
    ----------
    probes : PowerProbe or sequence of PowerProbe
        Probes measured together (e.g. NVML for the GPU and RAPL for the CPU package of a desktop ES). They must
        share one monotonic clock.
    rate_hz : float
        Sampler rate per probe (Hz); keep it at or above 100 where the sensor allows.
    keep_s : float or None
        Keep only the last ``keep_s`` s of raw samples (None: keep all, for the dataset's trace files).
    min_window_periods : float
        Windows shorter than this many sensor (integrated) or counter (counter method) periods are flagged invalid.
    coverage_timeout_s : float
        Longest wait, when a result is requested, for samples covering the window end (running samplers only).
    sleep : callable
        ``sleep(seconds)`` used by :meth:`measure_idle`; injected for tests driving a fake clock.
    """

    def __init__(
        self,
        probes: PowerProbe | Sequence[PowerProbe],
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        keep_s: float | None = None,
        min_window_periods: float = 5.0,
        coverage_timeout_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        discovery: Any = None,
    ) -> None:
        if isinstance(probes, PowerProbe):
            probes = [probes]
        if not probes:
            raise ValueError("a Meter needs at least one probe")
        self.rate_hz = float(rate_hz)
        self.min_window_periods = float(min_window_periods)
        self.coverage_timeout_s = float(coverage_timeout_s)
        self._sleep = sleep
        self.discovery = discovery
        seen: set[str] = set()
        self._states: list[_ProbeState] = []
        for probe in probes:
            prefix = f"{probe.name}_" if seen & set(probe.rail_keys) else ""
            seen |= {prefix + k for k in probe.rail_keys}
            self._states.append(_ProbeState(probe, Sampler(probe, rate_hz, keep_s=keep_s), prefix))
        self.clock = self._states[0].probe.clock
        self.idle: IdleBaseline | None = None
        self._lock = threading.Lock()

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: Any = None, *, discover_kwargs: dict | None = None, **meter_kwargs) -> Meter:
        """Discover the probes a firmware profile names (or auto-detect with ``profile=None``) and wrap them.

        The discovery record (what was tried and why it failed) is kept on ``meter.discovery``.
        """
        from megbed.measurements.probes.discovery import discover

        found = discover(profile, **(discover_kwargs or {}))
        return cls(found.probes, discovery=found, **meter_kwargs)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> Meter:
        """Start every probe's background sampler."""
        for st in self._states:
            st.sampler.start()
        return self

    def stop(self) -> None:
        for st in self._states:
            st.sampler.stop()

    def close(self) -> None:
        """Stop sampling and release the probes."""
        self.stop()
        for st in self._states:
            st.probe.close()

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tick(self) -> None:
        """Read every probe once (for single-threaded use and tests driving a fake clock)."""
        for st in self._states:
            st.sampler.tick()

    # --- introspection -------------------------------------------------------------------------------------
    @property
    def probes(self) -> list[PowerProbe]:
        return [st.probe for st in self._states]

    @property
    def probe_name(self) -> str:
        return "+".join(st.probe.name for st in self._states)

    @property
    def rails(self) -> list[str]:
        """Rail keys as they appear in column names."""
        return [st.prefix + k for st in self._states for k in st.probe.rail_keys]

    @property
    def samplers(self) -> list[Sampler]:
        return [st.sampler for st in self._states]

    def traces(self, since_seq: int = 0):
        """Raw samples kept, one pandas DataFrame per probe name (see :meth:`TraceArrays.to_frame`)."""
        return {st.probe.name: st.sampler.snapshot(since_seq).to_frame(st.probe.name) for st in self._states}

    def settings(self) -> dict[str, Any]:
        """Probe settings, measured sensor periods and the idle baseline, for the run manifest."""
        out: dict[str, Any] = {
            "rate_hz": self.rate_hz,
            "min_window_periods": self.min_window_periods,
            "probes": [{**st.probe.settings(), "rail_prefix": st.prefix, "sampler": st.sampler.stats()}
                       for st in self._states],
            "idle_baseline": self.idle.to_dict() if self.idle else None,
        }
        if self.discovery is not None and hasattr(self.discovery, "to_dict"):
            out["discovery"] = self.discovery.to_dict()
        return out

    # --- windows -------------------------------------------------------------------------------------------
    def begin(self, stage: str, sync: Callable[[], Any] | None = None) -> Window:
        """Open a window: synchronise (e.g. ``torch.cuda.synchronize``), stamp, and force an edge read per probe.

        Without ``sync``, a probe's ``default_sync`` (e.g. the NVML probe's) is used.
        """
        if sync is None:
            sync = next((p.default_sync for p in self.probes if getattr(p, "default_sync", None)), None)
        if sync is not None:
            sync()
        t0 = self.clock()
        reads = [st.sampler.tick() for st in self._states]
        return Window(stage, self, t0, reads, sync)

    def end(self, window: Window) -> Window:
        """Close a window: synchronise, stamp, force an edge read per probe. The result is computed lazily."""
        if window.t_end_ns is not None:
            raise RuntimeError(f"window {window.stage!r} is already closed")
        if window.sync is not None:
            window.sync()
        window.t_end_ns = self.clock()
        window.end_reads = [st.sampler.tick() for st in self._states]
        return window

    @contextmanager
    def window(self, stage: str, sync: Callable[[], Any] | None = None) -> Iterator[Window]:
        """``with meter.window("denoise", sync=...) as w: ...`` then ``w.result`` (a :class:`StageEnergy`)."""
        w = self.begin(stage, sync)
        try:
            yield w
        finally:
            self.end(w)

    def measure_idle(self, seconds: float) -> IdleBaseline:
        """Measure the idle baseline over ``seconds`` of quiet; later windows report net energy against it."""
        if seconds <= 0:
            raise ValueError("idle window must be positive")
        w = self.begin("idle")
        self._sleep(seconds)
        self.end(w)
        res = self._compute(w, subtract_idle=False)
        duration = res.duration_s
        power = {k: v / duration for k, v in res.energy_mj.items()}
        self.idle = IdleBaseline(power, res.total_mj / duration, duration, res.valid, res.reason, res.method)
        return self.idle

    def set_idle(self, power_mw: dict[str, float], *, note: str = "set by caller") -> IdleBaseline:
        """Use a known idle baseline (e.g. from an earlier run's manifest) instead of measuring one."""
        missing = [k for k in self.rails if k not in power_mw]
        if missing:
            raise ValueError(f"idle baseline lacks rails {missing}")
        total = sum(power_mw[st.prefix + k] for st in self._states for k in st.probe.total_keys)
        self.idle = IdleBaseline(dict(power_mw), total, float("nan"), True, note, "given")
        return self.idle

    # --- computation ---------------------------------------------------------------------------------------
    def _wait_for_coverage(self, st: _ProbeState, until_ns: int) -> None:
        if not st.sampler.running:
            return
        deadline = time.monotonic() + self.coverage_timeout_s
        while time.monotonic() < deadline:
            latest = st.sampler.latest_t_ns()
            if latest is not None and latest >= until_ns:
                return
            time.sleep(min(0.005, 1.0 / self.rate_hz))

    def _probe_window(self, st: _ProbeState, w: Window, i: int) -> tuple[dict[str, float], str, list[str], int]:
        probe, t0, t1 = st.probe, w.t_start_ns, w.t_end_ns
        assert t1 is not None
        duration_s = (t1 - t0) / NS_PER_S
        problems: list[str] = []
        r0, r1 = w.start_reads[i], w.end_reads[i]
        if probe.has_counter:
            if r0.valid and r1.valid and r0.energy_mj is not None and r1.energy_mj is not None:
                energy = counter_delta_mj(r0.energy_mj, r1.energy_mj)
                if all(math.isfinite(v) for v in energy.values()):
                    period = probe.counter_period_s()
                    if period and duration_s < self.min_window_periods * period:
                        problems.append(
                            f"window of {duration_s * 1e3:.1f} ms is shorter than {self.min_window_periods:g} "
                            f"counter updates (period {period * 1e3:.1f} ms): the difference is quantised")
                    return energy, probe.method, problems, 0
            bad = r0 if not r0.valid else r1
            problems.append(f"counter read failed at the window {'start' if bad is r0 else 'end'} "
                            f"({bad.reason or 'no counter value'}); integrated the power trace instead")
        lag_ns = int(probe.averaging_lag_s() * NS_PER_S)
        self._wait_for_coverage(st, t1 + lag_ns)
        period = probe.sensor_period_s()
        read_interval_ns = NS_PER_S / self.rate_hz
        max_gap_ns = int(max(4 * read_interval_ns, 2.5 * (period or 0) * NS_PER_S, 5e6))
        arrays = st.sampler.window_arrays(t0 + lag_ns, t1 + lag_ns, margin_ns=max_gap_ns * 2)
        energy: dict[str, float] = {}
        n_inside = 0
        for j, key in enumerate(arrays.rails):
            col = arrays.power_mw[:, j].copy()
            col[~arrays.valid] = float("nan")
            res = integrate_window(arrays.t_ns, col, t0, t1, lag_ns=lag_ns, max_gap_ns=max_gap_ns)
            energy[key] = res.energy_mj
            n_inside = max(n_inside, res.n_samples)
            for p in res.problems:
                msg = f"{key}: {p}"
                if msg not in problems:
                    problems.append(msg)
        n_bad = int((~arrays.valid & (arrays.t_ns - lag_ns > t0) & (arrays.t_ns - lag_ns < t1)).sum())
        if n_bad:
            reasons = sorted({arrays.reasons.get(int(s), "") for s in arrays.seq[~arrays.valid]} - {""})
            problems.append(f"{n_bad} failed reads inside the window ({'; '.join(reasons[:2])})")
            # A few failed reads bridged by interpolation do not by themselves invalidate the window; the gap
            # check above does when they leave a hole longer than the limit.
        if period and duration_s < self.min_window_periods * period:
            problems.append(f"window of {duration_s * 1e3:.1f} ms is shorter than {self.min_window_periods:g} "
                            f"sensor periods ({period * 1e3:.1f} ms each)")
        method = METHOD_INTEGRATED if probe.method != METHOD_MODELED else METHOD_MODELED
        return energy, method, problems, n_inside

    def _compute(self, w: Window, subtract_idle: bool = True) -> StageEnergy:
        assert w.t_end_ns is not None
        duration_s = (w.t_end_ns - w.t_start_ns) / NS_PER_S
        energy: dict[str, float] = {}
        total = 0.0
        methods: list[str] = []
        invalid: list[str] = []
        notes: list[str] = []
        n_samples = 0
        for i, st in enumerate(self._states):
            e, method, problems, n = self._probe_window(st, w, i)
            methods.append(method)
            n_samples += n
            for p in problems:
                # Bridged failed reads are a note; everything else makes the window untrustworthy.
                (notes if "failed reads inside the window" in p else invalid).append(f"{st.probe.name}: {p}")
            for k in st.probe.rail_keys:
                energy[st.prefix + k] = e.get(k, float("nan"))
            total += sum(e.get(k, float("nan")) for k in st.probe.total_keys)
        valid = not invalid and math.isfinite(total)
        if not math.isfinite(total) and not invalid:
            invalid.append("energy could not be formed (no usable reads)")
        reason = "; ".join(invalid + notes)
        net: dict[str, float] = {k: float("nan") for k in energy}
        net_total = float("nan")
        if subtract_idle and self.idle is not None and self.idle.valid:
            net = {k: v - self.idle.power_mw.get(k, float("nan")) * duration_s for k, v in energy.items()}
            net_total = total - self.idle.total_power_mw * duration_s
        method = min(methods, key=lambda m: _METHOD_RANK.get(m, 0))
        return StageEnergy(w.stage, self.probe_name, w.t_start_ns, w.t_end_ns, energy, net, total, net_total,
                           method, valid, reason, n_samples)
