"""The probe interface every power backend implements.

A probe reads one power-measuring device (a GPU's NVML counters, RAPL zones, a Jetson's INA3221 rails, a Pi 5's
PMIC, an external INA2xx meter, a recorded trace or a model) and reports, per read:

* a ``time.monotonic_ns()`` stamp (the probe's injected clock),
* power per rail in mW (NaN where a rail could not be read),
* for probes with a hardware energy counter, the cumulative energy per rail in mJ since the probe opened
  (wraparound already undone).

Window energy (begin/end around a stage) is computed from these reads by :mod:`megbed.measurements.integrate` and
:class:`megbed.measurements.meter.Meter`: counter difference where a counter exists, trapezoidal integral otherwise.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], int]

METHOD_COUNTER = "counter"
METHOD_INTEGRATED = "integrated"
METHOD_MODELED = "modeled"


class ProbeUnavailable(RuntimeError):
    """The backend cannot run on this machine; ``str(exc)`` says why (no driver, no sysfs node, no permission)."""


class ProbeReadError(RuntimeError):
    """One read of a probe failed (sensor file vanished, I/O error, driver error); the next read may succeed."""


def rail_key(label: str) -> str:
    """Canonical rail key used in column names: ``"VDD_CPU_GPU_CV"`` -> ``"vdd_cpu_gpu_cv"``."""
    key = re.sub(r"[^0-9a-zA-Z]+", "_", label.strip()).strip("_").lower()
    if not key:
        raise ValueError(f"rail label {label!r} has no usable characters")
    if key[0].isdigit():
        # Column names starting with a digit are awkward in pandas/duckdb (e.g. the Pi's 3V3_SYS rail).
        key = "r" + key
    return key


@dataclass(frozen=True)
class Rail:
    """One measured supply rail.

    Attributes
    ----------
    key : str
        Canonical key (lower snake case) used in column names, e.g. ``vdd_in``.
    label : str
        The name the hardware gives it, e.g. ``VDD_IN``.
    in_total : bool
        Counted in the probe's total. Sub-rails of a board-input rail (Orin Nano's VDD_CPU_GPU_CV under VDD_IN) are
        not, so the total is never double-counted.
    note : str
        Anything a reader of the data must know about this rail.
    """

    key: str
    label: str
    in_total: bool = True
    note: str = ""


@dataclass
class PowerReading:
    """One read of a probe.

    Attributes
    ----------
    t_ns : int
        Stamp on the probe's monotonic clock (ns), the midpoint of the read.
    power_mw : dict[str, float]
        Power per rail key (mW); NaN where unknown (e.g. the first read of a counter-derived power).
    energy_mj : dict[str, float] or None
        Cumulative energy per rail key (mJ) since the probe opened, wraparound undone; None without a counter.
    valid : bool
        False when the read failed; ``reason`` says why.
    reason : str
        Why the read is invalid (empty when valid).
    extra : dict[str, float]
        Side readings that are not rail powers (e.g. ``ext5v_mv`` on a Pi 5, whose input has no current sense).
    """

    t_ns: int
    power_mw: dict[str, float]
    energy_mj: dict[str, float] | None = None
    valid: bool = True
    reason: str = ""
    extra: dict[str, float] = field(default_factory=dict)


class PowerProbe(ABC):
    """A power backend. Subclasses set ``name``, ``method`` and ``rails`` in ``__init__``.

    Attributes
    ----------
    name : str
        Backend name (``nvml``, ``rapl``, ``jetson_ina3221``, ``rpi5_pmic``, ``ina260``, ``replay``, ``modeled``).
    method : str
        How window energy is obtained: ``counter``, ``integrated`` or ``modeled``.
    rails : tuple[Rail, ...]
        The rails this probe reports, in a stable order.
    clock : callable
        Monotonic clock returning ns; injected for tests.
    """

    name: str = "probe"
    method: str = METHOD_INTEGRATED
    rails: tuple[Rail, ...] = ()
    extra_keys: tuple[str, ...] = ()  # side readings kept in the trace (units in the key, e.g. "ext5v_mv")
    clock: Clock = staticmethod(time.monotonic_ns)

    @abstractmethod
    def read(self) -> tuple[dict[str, float], dict[str, float] | None, dict[str, float]]:
        """Read the hardware once: ``(power_mw per rail, cumulative energy_mj per rail or None, extra)``.

        Raises
        ------
        ProbeReadError
            The read failed; the caller records an invalid sample and carries on.
        """

    def sample(self) -> PowerReading:
        """Read once and stamp it (midpoint of the read on the monotonic clock); errors become invalid readings."""
        t0 = self.clock()
        try:
            power, energy, extra = self.read()
        except ProbeReadError as exc:
            t1 = self.clock()
            nan = float("nan")
            return PowerReading((t0 + t1) // 2, {r.key: nan for r in self.rails}, None, False, str(exc))
        t1 = self.clock()
        return PowerReading((t0 + t1) // 2, power, energy, True, "", extra)

    @property
    def has_counter(self) -> bool:
        """Whether windows use a hardware (or modeled) cumulative energy counter."""
        return self.method in (METHOD_COUNTER, METHOD_MODELED)

    @property
    def rail_keys(self) -> tuple[str, ...]:
        return tuple(r.key for r in self.rails)

    @property
    def total_keys(self) -> tuple[str, ...]:
        """Rails summed into the probe's total."""
        return tuple(r.key for r in self.rails if r.in_total)

    def sensor_period_s(self) -> float | None:
        """The sensor's own refresh/averaging period (s) as the hardware declares it, or None when unknown."""
        return None

    def counter_period_s(self) -> float | None:
        """The energy counter's update period (s) where known (measured at start for NVML), else None."""
        return None

    def averaging_lag_s(self) -> float:
        """How far (s) a power value's centroid lies before its read stamp.

        An averaging sensor latches the mean over its last period T; read at a random moment, that mean is centred
        on average T before the read. Integration shifts samples back by this lag. 0 for instantaneous values.
        """
        return 0.0

    def settings(self) -> dict[str, Any]:
        """Probe configuration for the run manifest (JSON-serialisable)."""
        return {
            "name": self.name,
            "method": self.method,
            "rails": [{"key": r.key, "label": r.label, "in_total": r.in_total, "note": r.note} for r in self.rails],
            "sensor_period_s": self.sensor_period_s(),
            "counter_period_s": self.counter_period_s(),
            "averaging_lag_s": self.averaging_lag_s(),
        }

    def close(self) -> None:  # noqa: B027 - most probes hold nothing
        """Release the device."""

    def __enter__(self) -> PowerProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, rails={list(self.rail_keys)})"


def read_text(path, what: str) -> str:
    """Read a small sysfs file, turning OS errors into :class:`ProbeReadError` naming the file."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ProbeReadError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc


def read_number(path, what: str) -> float:
    """Read a sysfs number (tolerates a trailing unit such as ``"32760 ma"``)."""
    text = read_text(path, what)
    head = text.split()[0] if text else ""
    try:
        return float(head)
    except ValueError as exc:
        raise ProbeReadError(f"{what}: {path} holds {text!r}, not a number") from exc
