from __future__ import annotations

import json

import numpy as np
import pytest
from meas_helpers import FIXTURES, FakeClock

from megbed.measurements.meter import Meter
from megbed.measurements.probes.base import ProbeReadError, ProbeUnavailable
from megbed.measurements.probes.ina2xx import Ina219Probe, Ina260Probe
from megbed.measurements.probes.rpi import COMMAND, RpiPmicProbe, parse_pmic_adc

PMIC = (FIXTURES / "rpi5_pmic_read_adc.txt").read_text()
REGS = json.loads((FIXTURES / "ina_registers.json").read_text())


class RecordedBus:
    """Replays recorded register values (successive reads walk the list, the last repeats); records writes."""

    def __init__(self, spec):
        self.address = spec["address"]
        self.regs = {int(k, 16): list(v) for k, v in spec["registers"].items()}
        self.pos = dict.fromkeys(self.regs, 0)
        self.writes = []
        self.fail = False

    def read_i2c_block_data(self, addr, reg, n):
        if self.fail or addr != self.address:
            raise OSError(121, "Remote I/O error")
        values = self.regs[reg]
        v = values[min(self.pos[reg], len(values) - 1)]
        self.pos[reg] += 1
        return [v >> 8, v & 0xFF]

    def write_i2c_block_data(self, addr, reg, data):
        if addr != self.address:
            raise OSError(121, "Remote I/O error")
        self.writes.append((reg, (data[0] << 8) | data[1]))
        if reg == 0x00 and data[0] & 0x80:  # INA219 reset restores the default configuration
            self.regs[0x00] = [0x399F]
            self.pos[0x00] = 0
        elif reg == 0x00:
            self.regs[0x00] = [(data[0] << 8) | data[1]]
            self.pos[0x00] = 0


def test_ina260_against_recorded_registers():
    bus = RecordedBus(REGS["ina260"])
    probe = Ina260Probe(1, 0x40, smbus=bus, clock=FakeClock())
    assert probe.sensor_period_s() == pytest.approx(2.2e-3)  # power-on config 0x6127: 1.1 ms + 1.1 ms, no averaging
    got = [probe.sample() for _ in range(4)]
    assert [r.power_mw["ext_in"] for r in got] == pytest.approx(REGS["ina260"]["expect_mw"])
    assert got[0].extra == {"bus_mv": 5100.0, "current_ma": 800.0, "power_reg_mw": 4080.0}
    assert got[3].extra["current_ma"] == -20.0  # the current register is signed (reverse current)
    assert probe.settings()["config"] == "0x6127"


def test_ina260_programs_averaging_and_rejects_other_chips():
    bus = RecordedBus(REGS["ina260"])
    probe = Ina260Probe(1, 0x40, averages=64, conversion_us=1100, smbus=bus)
    assert bus.writes == [(0x00, 0x6727)]
    assert probe.sensor_period_s() == pytest.approx(64 * 2.2e-3)
    other = RecordedBus({**REGS["ina260"], "registers": {**REGS["ina260"]["registers"], "0xfe": [0x0000]}})
    with pytest.raises(ProbeUnavailable, match="not an INA260"):
        Ina260Probe(1, 0x40, smbus=other)
    with pytest.raises(ProbeUnavailable, match="no INA260 answering"):
        Ina260Probe(1, 0x45, smbus=RecordedBus(REGS["ina260"]))


def test_ina219_calibration_registers_and_overflow():
    bus = RecordedBus(REGS["ina219"])
    probe = Ina219Probe(1, 0x41, shunt_ohm=0.1, max_current_a=3.2, smbus=bus, clock=FakeClock())
    assert bus.writes[0] == (0x00, 0x8000)  # reset, then identify by the default configuration
    assert (0x05, 4194) in bus.writes  # trunc(0.04096 / (3.2/32768 * 0.1))
    first = probe.sample()
    assert first.valid and first.power_mw["ext_in"] == pytest.approx(REGS["ina219"]["expect_mw"][0])
    assert first.extra["shunt_uv"] == 50_000.0 and first.extra["bus_mv"] == 5120.0
    second = probe.sample()  # the recorded bus register has OVF set
    assert not second.valid and "overflow" in second.reason
    assert probe.sensor_period_s() == pytest.approx(1.064e-3)


def test_ina_read_error_mid_run_is_an_invalid_sample():
    bus = RecordedBus(REGS["ina260"])
    probe = Ina260Probe(1, 0x40, smbus=bus, clock=FakeClock())
    bus.fail = True
    r = probe.sample()
    assert not r.valid and "I2C read of register 0x01 failed" in r.reason


def test_pmic_parsing_pairs_rails_and_keeps_voltage_only_channels():
    paired, volts_only, amps_only = parse_pmic_adc(PMIC)
    assert len(paired) == 12 and not amps_only
    assert set(volts_only) == {"EXT5V", "BATT"}
    assert paired["VDD_CORE"] == (0.76, pytest.approx(0.72161170))
    total_w = sum(a * v for a, v in paired.values())
    assert total_w == pytest.approx(1.6623, abs=1e-3)


def test_pmic_probe_says_the_input_is_not_measured():
    clock = FakeClock()
    calls = []

    def runner(cmd):
        calls.append(tuple(cmd))
        return PMIC

    probe = RpiPmicProbe(runner=runner, clock=clock)
    assert calls[0] == COMMAND
    assert "pmic_vdd_core" in probe.rail_keys and "pmic_3v3_sys" in probe.rail_keys
    assert set(probe.total_keys) == set(probe.rail_keys)
    r = probe.sample()
    assert r.power_mw["pmic_vdd_core"] == pytest.approx(0.76 * 0.72161170 * 1000)
    assert r.extra["ext5v_mv"] == pytest.approx(5132.161)
    s = probe.settings()
    assert "does not measure input current" in s["voltage_only_channels"]["EXT5V"]
    meter = Meter(probe, rate_hz=50)
    w = meter.begin("x")
    for _ in range(100):
        clock.advance(0.02)
        meter.tick()
    meter.end(w)
    assert w.result.total_mj == pytest.approx(2 * 1662.31, rel=1e-3)  # 2 s at 1.662 W
    trace = meter.traces()["rpi5_pmic"]
    assert "ext5v_mv" in trace.columns and np.allclose(trace["ext5v_mv"], 5132.161)


def test_pmic_unavailable_and_broken_output():
    def missing(cmd):
        raise ProbeUnavailable("vcgencmd not found")

    with pytest.raises(ProbeUnavailable, match="vcgencmd"):
        RpiPmicProbe(runner=missing)
    with pytest.raises(ProbeUnavailable, match="no current/voltage pairs"):
        RpiPmicProbe(runner=lambda cmd: "error=1 error_msg=\"Command not registered\"\n")
    outputs = iter([PMIC, "garbage\n"])
    probe = RpiPmicProbe(runner=lambda cmd: next(outputs))
    r = probe.sample()
    assert not r.valid and "lacks rails" in r.reason

    def failing(cmd):
        raise ProbeReadError("vcgencmd pmic_read_adc timed out")

    probe._runner = failing
    assert "timed out" in probe.sample().reason
