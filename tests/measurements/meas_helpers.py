"""Test helpers: a clock we control, fake sysfs trees built from fixtures, sensors with known energy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


class FakeClock:
    """A monotonic clock (ns) that moves only when told."""

    def __init__(self, t_ns: int = 1_000_000_000) -> None:
        self.t_ns = int(t_ns)

    def __call__(self) -> int:
        return self.t_ns

    def advance(self, seconds: float) -> None:
        self.t_ns += int(round(seconds * 1e9))


class AveragingSensor:
    """What an averaging power monitor reports: at time t, the mean of the true power over the last completed
    period [e - T, e] with e = floor(t / T) * T (the INA3221/INA260 behaviour).

    Parameters
    ----------
    fn : callable
        True power (mW) as a function of time (s), vectorised over numpy arrays.
    period_s : float
        The sensor's update period T (s).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], period_s: float) -> None:
        self.fn, self.period_s = fn, period_s
        self._cache: dict[int, float] = {}

    def value(self, t_s: float) -> float:
        k = math.floor(t_s / self.period_s + 1e-9)
        if k not in self._cache:
            e = k * self.period_s
            xs = np.linspace(e - self.period_s, e, 401)
            self._cache[k] = float(np.trapezoid(self.fn(xs), xs) / self.period_s)
        return self._cache[k]

    def energy_mj(self, t0_s: float, t1_s: float) -> float:
        xs = np.linspace(t0_s, t1_s, max(2001, int((t1_s - t0_s) * 200_000)))
        return float(np.trapezoid(self.fn(xs), xs))


def load_tree(name: str) -> dict:
    return json.loads((FIXTURES / "jetson_trees.json").read_text())[name]


class JetsonTree:
    """A fixture Jetson tree materialised under ``root``; ``set_power`` writes a rail's files as the driver would."""

    def __init__(self, root: Path, name: str, volt_mv: int = 5000) -> None:
        self.root = Path(root)
        spec = load_tree(name)
        self.board, self.layout = spec["board"], spec["layout"]
        for rel, content in spec["files"].items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content + "\n")
        self.channels = {c["label"]: c for c in spec["channels"]}
        self.volt_mv = volt_mv
        self._last: dict[str, float] = {}

    def path(self, label: str, kind: str) -> Path:
        return self.root / self.channels[label][kind]

    def set_power(self, label: str, power_mw: float) -> None:
        if self._last.get(label) == power_mw:
            return  # an unchanged sensor value: skip the (slow) file writes
        self._last[label] = power_mw
        ch = self.channels[label]
        (self.root / ch["volt"]).write_text(f"{self.volt_mv}\n")
        (self.root / ch["curr"]).write_text(f"{round(power_mw * 1000 / self.volt_mv)}\n")
        if "power_uw" in ch:
            (self.root / ch["power_uw"]).write_text(f"{round(power_mw * 1000)}\n")
        if "power_mw" in ch:
            (self.root / ch["power_mw"]).write_text(f"{round(power_mw)}\n")

    def set_update_interval_ms(self, ms: int) -> None:
        for f in self.root.glob("sys/bus/i2c/devices/*/hwmon/hwmon*/update_interval"):
            f.write_text(f"{ms}\n")


def make_rapl_tree(root: Path, zones: dict[str, int], max_range_uj: int = 262143328850) -> dict[str, Path]:
    """A powercap tree: ``zones`` maps ``"package-0"`` / ``"dram"`` (child of package-0) to a starting energy_uj."""
    base = root / "sys/class/powercap"
    out = {}
    pkg = base / "intel-rapl:0"
    for name, start in zones.items():
        d = pkg if name.startswith("package") else base / "intel-rapl:0:0"
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{start}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        out[name] = d / "energy_uj"
    return out
