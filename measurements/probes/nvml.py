"""NVIDIA GPUs through NVML (nvidia-ml-py): the total-energy counter per window, instant power in the background.

* Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and newer) is differenced
  between the window's edge reads (method ``counter``). On older GPUs the probe falls back to integrating power
  (method ``integrated``) and says so.
* Power: the field ``NVML_FI_DEV_POWER_INSTANT`` (mW). ``nvmlDeviceGetPowerUsage`` is *not* used when the field
  exists: on A100/H100 it is a 1 s average that sees only part of the runtime (Yang et al., SC'24).
* The counter's real update period is measured at open (it is not documented; tens of ms on many boards), and the
  Meter flags windows shorter than a few periods.
* Before each window stamp the Meter calls the window's ``sync`` (e.g. ``torch.cuda.synchronize``) or, when none is
  given, this probe's ``default_sync``, so queued kernels are inside the window they belong to.

The binding is injected (``binding=``): tests pass ``unittest.mock.create_autospec(pynvml)``. Without a driver,
``nvmlInit`` raises ``NVMLError_LibraryNotFound``/``DriverNotLoaded`` and the probe is unavailable with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from megbed.measurements.integrate import NS_PER_S
from megbed.measurements.probes import base


def _default_binding():
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise base.ProbeUnavailable("nvidia-ml-py (pynvml) is not installed") from exc
    return pynvml


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class NvmlProbe(base.PowerProbe):
    """One or more NVIDIA GPUs.

    Parameters
    ----------
    indices : sequence of int
        GPU indices (NVML order); rails are ``gpu<index>``.
    binding : module, optional
        The pynvml module (injected in tests).
    clock : callable
        Monotonic clock (ns).
    measure_period_s : float
        At open, poll the energy counter and the instant-power field for up to this long to measure their update
        periods (0 skips).
    default_sync : callable, optional
        Device synchronisation used before window stamps when the window itself gives none.
    """

    name = "nvml"

    def __init__(self, indices: Sequence[int] = (0,), *, binding: Any = None, clock: base.Clock = time.monotonic_ns,
                 measure_period_s: float = 0.5, default_sync: Callable[[], Any] | None = None) -> None:
        self.nv = binding if binding is not None else _default_binding()
        self.clock = clock
        self.default_sync = default_sync
        try:
            self.nv.nvmlInit()
        except self.nv.NVMLError as exc:
            raise base.ProbeUnavailable(f"NVML unavailable: {exc} (no NVIDIA driver on this machine?)") from exc
        self._initialised = True
        try:
            count = self.nv.nvmlDeviceGetCount()
            bad = [i for i in indices if not 0 <= i < count]
            if bad:
                raise base.ProbeUnavailable(f"GPU indices {bad} out of range: NVML sees {count} device(s)")
            self._handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self.indices = list(indices)
            self.device_names = [_text(self.nv.nvmlDeviceGetName(h)) for h in self._handles]
            self._counter = all(self._supports_counter(h) for h in self._handles)
            self._instant = all(self._supports_instant(h) for h in self._handles)
        except base.ProbeUnavailable:
            self.close()
            raise
        except self.nv.NVMLError as exc:
            self.close()
            raise base.ProbeUnavailable(f"NVML device query failed: {exc}") from exc
        self.method = base.METHOD_COUNTER if self._counter else base.METHOD_INTEGRATED
        self.rails = tuple(base.Rail(f"gpu{i}", f"GPU {i} ({n})", True)
                           for i, n in zip(self.indices, self.device_names, strict=True))
        self._e0 = [self._energy_raw(h) for h in self._handles] if self._counter else []
        self._counter_period: float | None = None
        self._instant_period: float | None = None
        if measure_period_s > 0:
            self._measure_periods(measure_period_s)

    # --- capability checks ---------------------------------------------------------------------------------
    def _supports_counter(self, h) -> bool:
        try:
            self.nv.nvmlDeviceGetTotalEnergyConsumption(h)
            return True
        except self.nv.NVMLError:
            return False  # pre-Volta or a driver without the counter: integrate power instead

    def _field_power(self, h) -> tuple[float, int] | None:
        values = self.nv.nvmlDeviceGetFieldValues(h, [self.nv.NVML_FI_DEV_POWER_INSTANT])
        v = values[0]
        if v.nvmlReturn != self.nv.NVML_SUCCESS:
            return None
        return float(v.value.uiVal), int(v.timestamp)

    def _supports_instant(self, h) -> bool:
        try:
            return self._field_power(h) is not None
        except self.nv.NVMLError:
            return False

    # --- reads ---------------------------------------------------------------------------------------------
    def _energy_raw(self, h) -> int:
        return int(self.nv.nvmlDeviceGetTotalEnergyConsumption(h))

    def _power_mw(self, h) -> float:
        if self._instant:
            got = self._field_power(h)
            if got is None:
                raise base.ProbeReadError("NVML instant power field returned an error status")
            return got[0]
        return float(self.nv.nvmlDeviceGetPowerUsage(h))

    def read(self):
        power: dict[str, float] = {}
        energy: dict[str, float] | None = {} if self._counter else None
        try:
            for k, (rail, h) in enumerate(zip(self.rails, self._handles, strict=True)):
                power[rail.key] = self._power_mw(h)
                if energy is not None:
                    energy[rail.key] = float(self._energy_raw(h) - self._e0[k])
        except self.nv.NVMLError as exc:
            raise base.ProbeReadError(f"NVML read failed: {exc}") from exc
        return power, energy, {}

    def _measure_periods(self, budget_s: float) -> None:
        """Poll the counter and the instant-power field; the median gap between changes is the update period."""
        h = self._handles[0]
        end = self.clock() + int(budget_s * NS_PER_S)
        counter_changes: list[int] = []
        field_stamps: list[int] = []
        last_e = self._energy_raw(h) if self._counter else None
        last_ts = None
        for _ in range(200_000):  # bounded even if an injected clock does not move
            now = self.clock()
            if now >= end:
                break
            if self._counter:
                e = self._energy_raw(h)
                if e != last_e:
                    counter_changes.append(now)
                    last_e = e
            if self._instant:
                got = self._field_power(h)
                if got is not None and got[1] != last_ts:
                    field_stamps.append(got[1])  # driver's own sample timestamp (us)
                    last_ts = got[1]
            if self.clock is time.monotonic_ns:
                time.sleep(0.0002)  # poll fast enough to see each update, without hammering the driver
        self._counter_period = _median_gap(counter_changes, 1e-9)
        self._instant_period = _median_gap(field_stamps, 1e-6)

    # --- metadata ------------------------------------------------------------------------------------------
    def counter_period_s(self) -> float | None:
        return self._counter_period

    def sensor_period_s(self) -> float | None:
        return self._instant_period

    def settings(self):
        out = super().settings()
        out.update({
            "devices": [{"index": i, "name": n} for i, n in zip(self.indices, self.device_names, strict=True)],
            "energy_counter": self._counter,
            "power_source": "NVML_FI_DEV_POWER_INSTANT" if self._instant else "nvmlDeviceGetPowerUsage (averaged)",
            "instant_power_period_s": self._instant_period,
        })
        try:
            out["power_limit_mw"] = [int(self.nv.nvmlDeviceGetPowerManagementLimit(h)) for h in self._handles]
        except self.nv.NVMLError:
            pass
        return out

    def close(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self.nv.nvmlShutdown()
            except self.nv.NVMLError:
                pass


def _median_gap(stamps: list[int], to_s: float) -> float | None:
    if len(stamps) < 3:
        return None
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return gaps[len(gaps) // 2] * to_s
