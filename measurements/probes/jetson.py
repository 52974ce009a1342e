"""NVIDIA Jetson on-module INA3221 power monitors (method ``integrated``).

Two sysfs layouts, both found under ``/sys/bus/i2c/devices/<bus>-<addr>/``:

* **JetPack 5/6** (upstream ``ina3221`` hwmon driver): ``hwmon/hwmonN/in{1,2,3}_label``, ``in{n}_input`` (bus
  voltage, mV), ``curr{n}_input`` (mA), optional ``power{n}_input`` (uW, hwmon ABI), plus ``samples`` (averaging
  count) and ``update_interval`` (ms). ``in7_label`` / ``curr4_input`` is the *sum of shunt voltages* channel and
  unused channels are labelled ``NC``: both skipped.
* **JetPack 4** (NVIDIA's ``ina3221x`` IIO driver): ``iio:deviceN/rail_name_{0,1,2}``, ``in_voltage{n}_input``
  (mV), ``in_current{n}_input`` (mA), ``in_power{n}_input`` (mW).

Which rail is the board total comes from the firmware profile's rail map (Orin Nano/NX: ``VDD_IN`` is the module
input and ``VDD_CPU_GPU_CV``/``VDD_SOC`` are inside it; AGX Orin has no input rail, so its rails are summed). Without
a profile, a rail named ``VDD_IN``/``POM_5V_IN`` is taken as the total and the others as sub-rails; otherwise all
rails are summed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from megbed.measurements.probes import base

I2C_DEVICES = "sys/bus/i2c/devices"
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class _Channel:
    label: str
    address: str  # i2c device name, e.g. "1-0040"
    layout: str  # "hwmon" | "iio"
    volt: Path | None
    curr: Path | None
    power: Path | None  # preferred when present
    power_scale: float  # to mW: hwmon power*_input is uW (1e-3); IIO in_power*_input is mW (1.0)


@dataclass
class JetsonDevice:
    """One INA3221 found in the tree."""

    address: str
    layout: str
    path: Path
    samples: int | None
    update_interval_ms: float | None


def _channels_hwmon(dev: str, hw: Path) -> list[_Channel]:
    out = []
    for label_file in sorted(hw.glob("in*_label")):
        m = re.fullmatch(r"in(\d+)_label", label_file.name)
        if not m:
            continue
        n = int(m.group(1))
        label = label_file.read_text().strip()
        if n >= 4 or label.upper() == "NC" or "sum" in label.lower():
            continue  # in4..6 are shunt voltages, in7 is the sum channel; NC is unpopulated
        power = hw / f"power{n}_input"
        out.append(_Channel(label, dev, "hwmon", hw / f"in{n}_input", hw / f"curr{n}_input",
                            power if power.exists() else None, 1e-3))
    return out


def _channels_iio(dev: str, iio: Path) -> list[_Channel]:
    out = []
    for label_file in sorted(iio.glob("rail_name_*")):
        n = label_file.name.rsplit("_", 1)[1]
        label = label_file.read_text().strip()
        if label.upper() == "NC" or "sum" in label.lower():
            continue
        power = iio / f"in_power{n}_input"
        out.append(_Channel(label, dev, "iio", iio / f"in_voltage{n}_input", iio / f"in_current{n}_input",
                            power if power.exists() else None, 1.0))
    return out


def find_devices(sysfs_root: str | os.PathLike = "/") -> tuple[list[JetsonDevice], list[_Channel]]:
    """Every INA3221 under ``sysfs_root`` and its usable channels, both layouts."""
    devices_dir = Path(sysfs_root) / I2C_DEVICES
    devices: list[JetsonDevice] = []
    channels: list[_Channel] = []
    if not devices_dir.is_dir():
        return devices, channels
    for dev in sorted(devices_dir.iterdir()):
        name_file = dev / "name"
        if not name_file.is_file() or "ina3221" not in name_file.read_text():
            continue
        for hw in sorted((dev / "hwmon").glob("hwmon*")):
            found = _channels_hwmon(dev.name, hw)
            if found:
                devices.append(JetsonDevice(dev.name, "hwmon", hw, _opt_int(hw / "samples"),
                                            _opt_float(hw / "update_interval")))
                channels += found
        for iio in sorted(dev.glob("iio:device*")):
            found = _channels_iio(dev.name, iio)
            if found:
                devices.append(JetsonDevice(dev.name, "iio", iio, None, None))
                channels += found
    return devices, channels


def _opt_float(path: Path) -> float | None:
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _opt_int(path: Path) -> int | None:
    v = _opt_float(path)
    return int(v) if v is not None else None


class JetsonProbe(base.PowerProbe):
    """Jetson INA3221 rails.

    Parameters
    ----------
    sysfs_root : path
        Root under which ``sys/bus/i2c/devices`` lives.
    rail_map : sequence of mapping, optional
        From the firmware profile: entries with ``label``, optional ``address`` (``0x40``), ``total`` (bool: counted
        in the board total) and ``note``. Rails the map lists but the tree lacks raise :class:`ProbeUnavailable`
        (wrong board or profile); rails the tree has but the map lacks are reported and not counted in the total.
    clock : callable
        Monotonic clock (ns).
    """

    name = "jetson_ina3221"
    method = base.METHOD_INTEGRATED

    def __init__(self, sysfs_root: str | os.PathLike = "/", *, rail_map: Sequence[Mapping] | None = None,
                 clock: base.Clock = time.monotonic_ns) -> None:
        self.clock = clock
        self.sysfs_root = Path(sysfs_root)
        self.devices, channels = find_devices(sysfs_root)
        if not channels:
            raise base.ProbeUnavailable(f"no INA3221 power monitor under {self.sysfs_root / I2C_DEVICES} "
                                        "(not a Jetson, or the ina3221 driver is not bound)")
        labels = [c.label for c in channels]
        dupes = {lbl for lbl in labels if labels.count(lbl) > 1}
        keys = [base.rail_key(f"{c.label}_{c.address}" if c.label in dupes else c.label) for c in channels]
        in_total, notes = self._totals(channels, rail_map)
        self._channels = channels
        self.rails = tuple(base.Rail(k, c.label, t, n)
                           for k, c, t, n in zip(keys, channels, in_total, notes, strict=True))

    def _totals(self, channels: list[_Channel], rail_map: Sequence[Mapping] | None) -> tuple[list[bool], list[str]]:
        if rail_map:
            by_label = {str(r["label"]): r for r in rail_map}
            missing = [lbl for lbl, r in by_label.items()
                       if not any(c.label == lbl and _addr_ok(c, r.get("address")) for c in channels)]
            if missing:
                present = ", ".join(f"{c.label}@{c.address}" for c in channels)
                raise base.ProbeUnavailable(f"rails {missing} from the board's rail map are not in the tree "
                                            f"(found: {present}); wrong firmware profile for this board?")
            in_total = [bool(by_label.get(c.label, {}).get("total", False)) for c in channels]
            notes = [str(by_label.get(c.label, {}).get("note", "not in the board's rail map: not counted in total"))
                     for c in channels]
            return in_total, notes
        inputs = [c for c in channels if c.label in INPUT_RAILS]
        if inputs:
            return ([c.label in INPUT_RAILS for c in channels],
                    ["board input (total)" if c.label in INPUT_RAILS else "sub-rail of the board input"
                     for c in channels])
        return [True] * len(channels), ["summed into the total (no input rail on this board)"] * len(channels)

    def read(self):
        power: dict[str, float] = {}
        for rail, ch in zip(self.rails, self._channels, strict=True):
            what = f"jetson {ch.label}@{ch.address}"
            if ch.power is not None:
                power[rail.key] = base.read_number(ch.power, what) * ch.power_scale
            else:
                if ch.volt is None or ch.curr is None:
                    raise base.ProbeReadError(f"{what}: neither power nor voltage/current files")
                power[rail.key] = base.read_number(ch.volt, what) * base.read_number(ch.curr, what) / 1000.0
        return power, None, {}

    def sensor_period_s(self) -> float | None:
        periods = [d.update_interval_ms for d in self.devices if d.update_interval_ms]
        return max(periods) / 1000.0 if periods else None

    def averaging_lag_s(self) -> float:
        # The INA3221 latches the mean over its update interval; read at a random moment that mean is centred one
        # update interval back on average (half the averaging span plus half the staleness).
        return self.sensor_period_s() or 0.0

    def settings(self):
        out = super().settings()
        out["devices"] = [{"address": d.address, "layout": d.layout, "path": str(d.path), "samples": d.samples,
                           "update_interval_ms": d.update_interval_ms} for d in self.devices]
        if not any(d.update_interval_ms for d in self.devices):
            out["sensor_period_note"] = "update_interval not exposed by this layout; see the sampler's measured period"
        return out


def _addr_ok(ch: _Channel, address) -> bool:
    if address is None:
        return True
    want = int(str(address), 0)
    return int(ch.address.rsplit("-", 1)[-1], 16) == want

