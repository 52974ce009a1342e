"""External I2C power meters researchers clip onto a board's supply: TI INA260 and INA219 (method ``integrated``).

Registers are 16-bit big-endian; they are read with ``read_i2c_block_data(addr, reg, 2)`` (MSB first) so the byte
order is the chip's, not SMBus word order. The bus object is injected (``smbus=``, anything with smbus2's
``read_i2c_block_data`` / ``write_i2c_block_data``); tests replay recorded register values.

INA260 (integrated 2 mOhm shunt): current 0x01 (signed, 1.25 mA/LSB), bus voltage 0x02 (1.25 mV/LSB), power 0x03
(10 mW/LSB), configuration 0x00 (AVG bits 11-9, VBUSCT 8-6, ISHCT 5-3, MODE 2-0), manufacturer ID 0xFE = 0x5449 ("TI"),
die ID 0xFF = 0x227x. In continuous mode a new averaged value is ready every (VBUSCT + ISHCT) x AVG.

INA219 (external shunt): shunt voltage 0x01 (signed, 10 uV/LSB), bus voltage 0x02 (bits 15-3, 4 mV/LSB; bit 0 OVF =
overflow), power 0x03 (20 x current LSB), current 0x04 (signed, current LSB), calibration 0x05 =
trunc(0.04096 / (current_LSB x R_shunt)). It has no ID register: after a reset its configuration reads 0x399F.
"""

from __future__ import annotations

import math
import time
from typing import Any

from megbed.measurements.probes import base

INA260_CT_US = (140, 204, 332, 588, 1100, 2116, 4156, 8244)
INA260_AVG = (1, 4, 16, 64, 128, 256, 512, 1024)
INA219_ADC_US = {0b0000: 84, 0b0001: 148, 0b0010: 276, 0b0011: 532, 0b1000: 532, 0b1001: 1060, 0b1010: 2130,
                 0b1011: 4260, 0b1100: 8510, 0b1101: 17020, 0b1110: 34050, 0b1111: 68100}


def _open_bus(bus: int):
    try:
        from smbus2 import SMBus
    except ImportError as exc:  # pragma: no cover - smbus2 is a dependency
        raise base.ProbeUnavailable("smbus2 is not installed") from exc
    try:
        return SMBus(bus)
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise base.ProbeUnavailable(f"I2C bus {bus} cannot be opened (/dev/i2c-{bus}): {exc}") from exc


class _Ina(base.PowerProbe):
    method = base.METHOD_INTEGRATED

    def __init__(self, bus: int, address: int | str, smbus: Any, clock: base.Clock, rail: str) -> None:
        self.clock = clock
        self.address = int(str(address), 0) if isinstance(address, str) else int(address)
        self.bus_number = bus
        self._own_bus = smbus is None
        self.bus = smbus if smbus is not None else _open_bus(bus)
        self.rails = (base.Rail(rail, rail.upper(), True, f"{self.name} at I2C {bus}:0x{self.address:02x}"),)

    def _read_u16(self, reg: int) -> int:
        try:
            hi, lo = self.bus.read_i2c_block_data(self.address, reg, 2)
        except OSError as exc:
            raise base.ProbeReadError(f"{self.name} 0x{self.address:02x}: I2C read of register 0x{reg:02x} failed: "
                                      f"{exc}") from exc
        return (hi << 8) | lo

    def _read_s16(self, reg: int) -> int:
        v = self._read_u16(reg)
        return v - 0x10000 if v & 0x8000 else v

    def _write_u16(self, reg: int, value: int) -> None:
        self.bus.write_i2c_block_data(self.address, reg, [(value >> 8) & 0xFF, value & 0xFF])

    def close(self) -> None:
        if self._own_bus:
            self.bus.close()


class Ina260Probe(_Ina):
    """A TI INA260 (e.g. Adafruit 4226) in series with a board's supply.

    Parameters
    ----------
    bus : int
        I2C bus number (``/dev/i2c-<bus>``).
    address : int or str
        7-bit address (0x40-0x4F).
    averages, conversion_us : int, optional
        Program the averaging count (1..1024) and the bus/shunt conversion time (140..8244 us) in continuous mode;
        None leaves the chip's configuration as found.
    smbus : object, optional
        Injected bus (tests).
    rail : str
        Rail key for the measured supply.
    """

    name = "ina260"

    def __init__(self, bus: int = 1, address: int | str = 0x40, *, averages: int | None = None,
                 conversion_us: int | None = None, smbus: Any = None, clock: base.Clock = time.monotonic_ns,
                 rail: str = "ext_in") -> None:
        super().__init__(bus, address, smbus, clock, rail)
        try:
            manufacturer, die = self._read_u16(0xFE), self._read_u16(0xFF)
        except base.ProbeReadError as exc:
            raise base.ProbeUnavailable(f"no INA260 answering at {bus}:0x{self.address:02x}: {exc}") from exc
        if manufacturer != 0x5449 or (die >> 4) != 0x227:
            raise base.ProbeUnavailable(f"device at {bus}:0x{self.address:02x} is not an INA260 (manufacturer "
                                        f"0x{manufacturer:04x}, die 0x{die:04x}; expected 0x5449 / 0x227x)")
        if averages is not None or conversion_us is not None:
            cfg = self._read_u16(0x00)
            if averages is not None:
                cfg = (cfg & ~(0b111 << 9)) | (INA260_AVG.index(averages) << 9)
            if conversion_us is not None:
                ct = INA260_CT_US.index(conversion_us)
                cfg = (cfg & ~(0b111111 << 3)) | (ct << 6) | (ct << 3)
            self._write_u16(0x00, (cfg & ~0b111) | 0b111)  # continuous shunt + bus
        self.config = self._read_u16(0x00)

    def sensor_period_s(self) -> float | None:
        cfg = self.config
        if cfg & 0b111 != 0b111:
            return None  # triggered mode: values refresh only on request
        avg = INA260_AVG[(cfg >> 9) & 0b111]
        return (INA260_CT_US[(cfg >> 6) & 0b111] + INA260_CT_US[(cfg >> 3) & 0b111]) * avg * 1e-6

    def averaging_lag_s(self) -> float:
        return self.sensor_period_s() or 0.0

    def read(self):
        current_ma = self._read_s16(0x01) * 1.25
        bus_mv = self._read_u16(0x02) * 1.25
        power_reg_mw = self._read_u16(0x03) * 10.0
        # V x I from the 1.25 mA / 1.25 mV registers resolves far finer than the 10 mW power register.
        return {self.rails[0].key: bus_mv * current_ma / 1000.0}, None, {"bus_mv": bus_mv, "current_ma": current_ma,
                                                                          "power_reg_mw": power_reg_mw}

    extra_keys = ("bus_mv", "current_ma", "power_reg_mw")

    def settings(self):
        out = super().settings()
        out.update({"bus": self.bus_number, "address": f"0x{self.address:02x}", "config": f"0x{self.config:04x}"})
        return out


class Ina219Probe(_Ina):
    """A TI INA219 with an external shunt (e.g. the common 0.1 Ohm breakout).

    Parameters
    ----------
    shunt_ohm : float
        Shunt resistance (Ohm).
    max_current_a : float
        Largest expected current; sets the current LSB (max / 32768) and the calibration register.
    config : int
        Configuration written after a reset (default 0x399F: 32 V range, +-320 mV shunt, 12-bit, continuous).
    """

    name = "ina219"
    extra_keys = ("bus_mv", "shunt_uv", "current_ma")

    def __init__(self, bus: int = 1, address: int | str = 0x40, *, shunt_ohm: float = 0.1,
                 max_current_a: float = 3.2, config: int = 0x399F, smbus: Any = None,
                 clock: base.Clock = time.monotonic_ns, rail: str = "ext_in") -> None:
        super().__init__(bus, address, smbus, clock, rail)
        self.shunt_ohm = float(shunt_ohm)
        self.current_lsb_a = max_current_a / 32768
        self.calibration = int(math.trunc(0.04096 / (self.current_lsb_a * self.shunt_ohm)))
        if not 0 < self.calibration <= 0xFFFE:
            raise ValueError(f"shunt {shunt_ohm} Ohm with max {max_current_a} A gives calibration "
                             f"{self.calibration}, outside the register")
        self.calibration &= 0xFFFE  # bit 0 is read-only
        try:
            self._write_u16(0x00, 0x8000)  # reset
            found = self._read_u16(0x00)
        except (OSError, base.ProbeReadError) as exc:
            raise base.ProbeUnavailable(f"no INA219 answering at {bus}:0x{self.address:02x}: {exc}") from exc
        if found != 0x399F:
            raise base.ProbeUnavailable(f"device at {bus}:0x{self.address:02x} is not an INA219 (configuration after "
                                        f"reset is 0x{found:04x}, expected 0x399F)")
        self._write_u16(0x00, config)
        self._write_u16(0x05, self.calibration)
        self.config = self._read_u16(0x00)

    def sensor_period_s(self) -> float | None:
        cfg = self.config
        if cfg & 0b111 != 0b111:
            return None
        badc, sadc = (cfg >> 7) & 0xF, (cfg >> 3) & 0xF
        return (INA219_ADC_US.get(badc, 532) + INA219_ADC_US.get(sadc, 532)) * 1e-6

    def averaging_lag_s(self) -> float:
        return self.sensor_period_s() or 0.0

    def read(self):
        raw_bus = self._read_u16(0x02)
        if raw_bus & 0x1:
            raise base.ProbeReadError(f"ina219 0x{self.address:02x}: math overflow (OVF): current beyond the "
                                      "calibrated range; raise max_current_a")
        bus_mv = (raw_bus >> 3) * 4.0
        shunt_uv = self._read_s16(0x01) * 10.0
        current_ma = self._read_s16(0x04) * self.current_lsb_a * 1000.0
        return {self.rails[0].key: bus_mv * current_ma / 1000.0}, None, {"bus_mv": bus_mv, "shunt_uv": shunt_uv,
                                                                          "current_ma": current_ma}

    def settings(self):
        out = super().settings()
        out.update({"bus": self.bus_number, "address": f"0x{self.address:02x}", "config": f"0x{self.config:04x}",
                    "shunt_ohm": self.shunt_ohm, "current_lsb_a": self.current_lsb_a,
                    "calibration": self.calibration})
        return out
