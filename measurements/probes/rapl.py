"""Intel/AMD RAPL through the Linux powercap sysfs: package and DRAM energy counters.

Layout: ``/sys/class/powercap/intel-rapl:N`` (``name`` = ``package-N``) with children ``intel-rapl:N:M``
(``core``, ``uncore``, ``dram``). Each zone has ``energy_uj`` (a counter that wraps at ``max_energy_range_uj``).
Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694); a container usually lacks the tree. Both
cases are reported as unavailable with the reason.

Rails: ``package_N`` (whole socket: cores, uncore, ...) and ``dram_N`` where the platform exposes it; the total is
their sum (``core``/``uncore`` are inside the package and are not reported, so nothing is double-counted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from megbed.measurements.integrate import NS_PER_S, unwrap_counter
from megbed.measurements.probes import base

POWERCAP = "sys/class/powercap"


class _Zone:
    def __init__(self, key: str, label: str, path: Path, max_range_uj: int) -> None:
        self.key, self.label, self.path, self.max_range_uj = key, label, path, max_range_uj
        self.last_raw: int | None = None
        self.total_uj = 0


def find_zones(sysfs_root: str | os.PathLike = "/") -> list[tuple[str, str, Path]]:
    """``(rail key, zone name, zone dir)`` for every package and DRAM zone under ``sysfs_root``."""
    powercap_dir = Path(sysfs_root) / POWERCAP
    zones = []
    if not powercap_dir.is_dir():
        return zones
    for top in sorted(powercap_dir.glob("intel-rapl:*")):
        parts = top.name.split(":")
        if len(parts) != 2 or not (top / "name").exists():
            continue
        name = (top / "name").read_text().strip()
        if not name.startswith("package-"):
            continue  # psys and friends overlap the packages
        socket = name.split("-", 1)[1]
        zones.append((f"package_{socket}", name, top))
        # Subzones appear both inside the package directory and as siblings in /sys/class/powercap.
        children = {c.resolve(): c for c in [*top.glob(f"{top.name}:*"), *powercap_dir.glob(f"{top.name}:*")]}
        for child in sorted(children.values()):
            if (child / "name").exists() and (child / "name").read_text().strip() == "dram":
                zones.append((f"dram_{socket}", "dram", child))
    return zones


class RaplProbe(base.PowerProbe):
    """RAPL package/DRAM counters (method ``counter``).

    Parameters
    ----------
    sysfs_root : path
        Root under which ``sys/class/powercap`` lives (``/`` on a real host; a fake tree in tests).
    clock : callable
        Monotonic clock (ns).
    measure_period_s : float
        At open, poll the package counter for up to this long to measure its update period (0 skips).
    """

    name = "rapl"
    method = base.METHOD_COUNTER

    def __init__(self, sysfs_root: str | os.PathLike = "/", *, clock: base.Clock = time.monotonic_ns,
                 measure_period_s: float = 0.05) -> None:
        self.clock = clock
        self.sysfs_root = Path(sysfs_root)
        found = find_zones(sysfs_root)
        if not found:
            raise base.ProbeUnavailable(
                f"no RAPL zones under {self.sysfs_root / POWERCAP} (not an Intel/AMD host, the intel_rapl driver is "
                "not loaded, or a container without /sys/class/powercap)")
        self._zones: list[_Zone] = []
        for key, label, path in found:
            try:
                max_range = int(base.read_number(path / "max_energy_range_uj", "rapl"))
                zone = _Zone(key, label, path, max_range)
                self._read_raw(zone)
            except base.ProbeReadError as exc:
                if isinstance(exc.__cause__, PermissionError):
                    raise base.ProbeUnavailable(
                        f"RAPL counter {path / 'energy_uj'} is not readable (permission denied: since Linux 5.10 "
                        "energy_uj is root-only; run as root or grant read access with a udev rule)") from exc
                raise base.ProbeUnavailable(f"RAPL zone {label} unreadable: {exc}") from exc
            self._zones.append(zone)
        self.rails = tuple(base.Rail(z.key, z.label, True) for z in self._zones)
        self._last_t: int | None = None
        self._last_total: dict[str, int] = {}
        self._last_power: dict[str, float] = {}
        self._period_s: float | None = None
        self.read()  # prime the counters (first read defines zero energy)
        if measure_period_s > 0:
            self._period_s = self._measure_period(measure_period_s)

    def _read_raw(self, zone: _Zone) -> int:
        text = base.read_text(zone.path / "energy_uj", f"rapl {zone.label}")
        try:
            return int(text)
        except ValueError as exc:
            raise base.ProbeReadError(f"rapl {zone.label}: energy_uj holds {text!r}") from exc

    def _measure_period(self, budget_s: float) -> float | None:
        zone = self._zones[0]
        end = self.clock() + int(budget_s * NS_PER_S)
        first = self._read_raw(zone)
        changes: list[int] = []
        prev = first
        for _ in range(20_000):  # bounded even if an injected clock does not move
            if self.clock() >= end or len(changes) >= 20:
                break
            raw = self._read_raw(zone)
            if raw != prev:
                changes.append(self.clock())
                prev = raw
        if len(changes) < 3:
            return None
        gaps = sorted(b - a for a, b in zip(changes, changes[1:], strict=False))
        return gaps[len(gaps) // 2] / NS_PER_S

    def read(self):
        now = self.clock()
        energy: dict[str, float] = {}
        power: dict[str, float] = {}
        for zone in self._zones:
            raw = self._read_raw(zone)
            if zone.last_raw is not None:
                zone.total_uj += unwrap_counter(zone.last_raw, raw, zone.max_range_uj)
            zone.last_raw = raw
            energy[zone.key] = zone.total_uj / 1000.0
            prev = self._last_total.get(zone.key)
            if prev is not None and self._last_t is not None and now > self._last_t:
                # uJ per ns * 1e9 ns/s / 1e3 uJ/mJ = mW
                power[zone.key] = (zone.total_uj - prev) / (now - self._last_t) * 1e6
            else:  # first read, or two reads within one clock tick: keep the last derived power
                power[zone.key] = self._last_power.get(zone.key, float("nan"))
        if self._last_t is None or now > self._last_t:
            self._last_total = {z.key: z.total_uj for z in self._zones}
            self._last_power = power
            self._last_t = now
        return power, energy, {}

    def counter_period_s(self) -> float | None:
        return self._period_s

    def averaging_lag_s(self) -> float:
        # Power is a counter difference between reads: its centroid is half a read interval back. Windows use the
        # counter itself, so this only matters for plots of the trace.
        return 0.0

    def settings(self):
        out = super().settings()
        out["zones"] = [{"key": z.key, "name": z.label, "path": str(z.path), "max_energy_range_uj": z.max_range_uj}
                        for z in self._zones]
        return out
