from __future__ import annotations

import builtins

import pytest
from meas_helpers import FakeClock, make_rapl_tree

from megbed.measurements.meter import Meter
from megbed.measurements.probes.base import ProbeUnavailable
from megbed.measurements.probes.rapl import RaplProbe


def _write(path, value):
    path.write_text(f"{value}\n")


def test_counter_window_is_exact_and_power_is_derived(tmp_path):
    files = make_rapl_tree(tmp_path, {"package-0": 1_000_000, "dram": 50_000})
    clock = FakeClock(0)
    probe = RaplProbe(tmp_path, clock=clock, measure_period_s=0)
    assert probe.rail_keys == ("package_0", "dram_0")
    assert probe.total_keys == ("package_0", "dram_0")
    meter = Meter(probe, rate_hz=100)
    pkg, dram = 1_000_000, 50_000
    w = meter.begin("stage")
    for _ in range(50):  # 0.5 s at 20 W package, 3 W dram
        clock.advance(0.01)
        pkg += 200_000
        dram += 30_000
        _write(files["package-0"], pkg)
        _write(files["dram"], dram)
        meter.tick()
    meter.end(w)
    r = w.result
    assert r.method == "counter" and r.valid
    assert r.energy_mj == {"package_0": pytest.approx(10_000.0), "dram_0": pytest.approx(1_500.0)}
    assert r.total_mj == pytest.approx(11_500.0)
    assert meter.samplers[0].last_reading.power_mw["package_0"] == pytest.approx(20_000.0)


def test_wraparound_is_undone(tmp_path):
    max_range = 1_000_000
    files = make_rapl_tree(tmp_path, {"package-0": 900_000}, max_range_uj=max_range)
    clock = FakeClock(0)
    probe = RaplProbe(tmp_path, clock=clock, measure_period_s=0)
    meter = Meter(probe)
    w = meter.begin("wrap")
    raw = 900_000
    for _ in range(10):  # 3 wraps over 10 reads of 350 mJ each
        clock.advance(0.01)
        raw = (raw + 350_000) % (max_range + 1)
        _write(files["package-0"], raw)
        meter.tick()
    meter.end(w)
    assert w.result.energy_mj["package_0"] == pytest.approx(3_500.0)
    assert w.result.valid


def test_short_counter_window_flagged_against_measured_period(tmp_path):
    make_rapl_tree(tmp_path, {"package-0": 0})
    probe = RaplProbe(tmp_path, clock=FakeClock(0), measure_period_s=0)
    probe._period_s = 0.001  # as if measured at open (a RAPL counter updates about every 1 ms)
    meter = Meter(probe)
    w = meter.begin("tiny")
    probe.clock.advance(0.002)
    meter.end(w)
    assert not w.result.valid and "counter updates" in w.result.reason


def test_counter_period_measured_at_open(tmp_path):
    files = make_rapl_tree(tmp_path, {"package-0": 0})
    clock = FakeClock(0)
    state = {"n": 0, "raw": 0}
    real_open = builtins.open

    def ticking_open(path, *a, **k):  # every read advances the clock 0.1 ms; the counter moves every 1 ms
        if str(path) == str(files["package-0"]):
            clock.advance(0.0001)
            state["n"] += 1
            if state["n"] % 10 == 0:
                state["raw"] += 1000
                files["package-0"].write_text(f"{state['raw']}\n")
        return real_open(path, *a, **k)

    builtins.open = ticking_open
    try:
        probe = RaplProbe(tmp_path, clock=clock, measure_period_s=0.03)
    finally:
        builtins.open = real_open
    assert probe.counter_period_s() == pytest.approx(0.001, rel=0.15)


def test_unreadable_and_absent_are_reported(tmp_path, monkeypatch):
    with pytest.raises(ProbeUnavailable, match="no RAPL zones"):
        RaplProbe(tmp_path, measure_period_s=0)
    files = make_rapl_tree(tmp_path, {"package-0": 0})
    real_open = builtins.open

    def denied(path, *a, **k):
        if str(path) == str(files["package-0"]):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(ProbeUnavailable, match="root-only"):
        RaplProbe(tmp_path, measure_period_s=0)


def test_read_error_mid_run_falls_back_and_flags(tmp_path):
    files = make_rapl_tree(tmp_path, {"package-0": 0})
    clock = FakeClock(0)
    meter = Meter(RaplProbe(tmp_path, clock=clock, measure_period_s=0), rate_hz=100)
    w = meter.begin("stage")
    clock.advance(0.1)
    files["package-0"].write_text("not-a-number\n")
    meter.end(w)
    r = w.result
    assert not r.valid
    assert "counter read failed at the window end" in r.reason
