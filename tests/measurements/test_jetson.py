from __future__ import annotations

import numpy as np
import pytest
from meas_helpers import AveragingSensor, FakeClock, JetsonTree

from megbed.measurements.meter import Meter
from megbed.measurements.probes.base import ProbeUnavailable
from megbed.measurements.probes.jetson import JetsonProbe

EXPECTED = {
    "orin_nano_jp6": (["vdd_in", "vdd_cpu_gpu_cv", "vdd_soc"], ["vdd_in"]),
    "agx_orin_jp5": (["vdd_gpu_soc", "vdd_cpu_cv", "vin_sys_5v0", "vddq_vdd2_1v8ao"],
                     ["vdd_gpu_soc", "vdd_cpu_cv", "vin_sys_5v0", "vddq_vdd2_1v8ao"]),
    "xavier_nx_jp5": (["vdd_in", "vdd_cpu_gpu_cv", "vdd_soc"], ["vdd_in"]),
    "xavier_nx_jp4": (["vdd_in", "vdd_cpu_gpu_cv", "vdd_soc"], ["vdd_in"]),
    "nano_jp4": (["pom_5v_in", "pom_5v_gpu", "pom_5v_cpu"], ["pom_5v_in"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_layout_and_board_reads_every_rail(tmp_path, name):
    tree = JetsonTree(tmp_path, name)
    powers = {label: 1000.0 * (i + 1) for i, label in enumerate(tree.channels)}
    for label, mw in powers.items():
        tree.set_power(label, mw)
    probe = JetsonProbe(tmp_path, clock=FakeClock())
    rails, totals = EXPECTED[name]
    assert list(probe.rail_keys) == rails  # NC channels and the sum-of-shunts channel are skipped
    assert list(probe.total_keys) == totals
    reading = probe.sample()
    assert reading.valid
    for rail in probe.rails:
        assert reading.power_mw[rail.key] == pytest.approx(powers[rail.label], abs=5.0)
    layout = {d.layout for d in probe.devices}
    assert layout == {tree.layout}
    if tree.layout == "hwmon":
        assert probe.settings()["devices"][0]["samples"] == 4
        assert probe.sensor_period_s() == pytest.approx(0.010)
    else:
        assert probe.sensor_period_s() is None
        assert "not exposed" in probe.settings()["sensor_period_note"]


def test_power_file_preferred_and_scaled_from_microwatts(tmp_path):
    tree = JetsonTree(tmp_path, "xavier_nx_jp5")
    for label in tree.channels:
        tree.set_power(label, 1234.0)
    tree.path("VDD_IN", "volt").write_text("0\n")  # would give 0 mW if V*I were used
    probe = JetsonProbe(tmp_path, clock=FakeClock())
    assert probe.sample().power_mw["vdd_in"] == pytest.approx(1234.0)


def test_rail_map_from_profile_decides_the_total(tmp_path):
    tree = JetsonTree(tmp_path, "agx_orin_jp5")
    for label in tree.channels:
        tree.set_power(label, 1000.0)
    rail_map = [{"label": "VDD_GPU_SOC", "address": "0x40", "total": True},
                {"label": "VDD_CPU_CV", "address": "0x40", "total": True},
                {"label": "VIN_SYS_5V0", "address": "0x40", "total": True},
                {"label": "VDDQ_VDD2_1V8AO", "address": "0x41", "total": False, "note": "DRAM"}]
    probe = JetsonProbe(tmp_path, rail_map=rail_map, clock=FakeClock())
    assert probe.total_keys == ("vdd_gpu_soc", "vdd_cpu_cv", "vin_sys_5v0")
    bad_map = [{"label": "VDD_IN", "total": True}]
    with pytest.raises(ProbeUnavailable, match="VDD_IN"):
        JetsonProbe(tmp_path, rail_map=bad_map, clock=FakeClock())
    wrong_addr = [{"label": "VDDQ_VDD2_1V8AO", "address": "0x40", "total": True}]
    with pytest.raises(ProbeUnavailable, match="wrong firmware profile"):
        JetsonProbe(tmp_path, rail_map=wrong_addr, clock=FakeClock())


def test_absent_tree_is_unavailable_with_reason(tmp_path):
    with pytest.raises(ProbeUnavailable, match="no INA3221"):
        JetsonProbe(tmp_path)


class _Rig:
    """An Orin Nano tree whose VDD_IN follows an averaging sensor of a known signal, sampled at ``rate_hz``."""

    def __init__(self, tmp_path, fn, period_s=0.010, rate_hz=250.0):
        self.tree = JetsonTree(tmp_path, "orin_nano_jp6")
        self.tree.set_update_interval_ms(round(period_s * 1000))
        self.sensor = AveragingSensor(fn, period_s)
        self.clock = FakeClock(0)
        self.tree.set_power("VDD_IN", self.sensor.value(0.0))
        self.tree.set_power("VDD_CPU_GPU_CV", 1500.0)
        self.tree.set_power("VDD_SOC", 700.0)
        self.probe = JetsonProbe(tmp_path, clock=self.clock)
        self.dt = 1.0 / rate_hz
        self.meter = Meter(self.probe, rate_hz=rate_hz, sleep=self.advance)
        self.hook = None

    def advance(self, seconds):
        for _ in range(int(round(seconds / self.dt))):
            self.clock.advance(self.dt)
            self.tree.set_power("VDD_IN", self.sensor.value(self.clock.t_ns / 1e9))
            if self.hook:
                self.hook(self.clock.t_ns / 1e9)
            self.meter.tick()

    def window(self, seconds, settle=0.05):
        w = self.meter.begin("stage")
        t0 = self.clock.t_ns / 1e9
        self.advance(seconds)
        self.meter.end(w)
        t1 = self.clock.t_ns / 1e9
        self.advance(settle)  # let the lagging sensor cover the window end
        return w.result, self.sensor.energy_mj(t0, t1)


def _busy_signal(seed):
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.uniform(0, 4, 12))
    levels = rng.uniform(-1500, 1500, 12)

    def fn(t):
        t = np.asarray(t, dtype=float)
        p = 5000 + 1500 * np.sin(2 * np.pi * t / 0.37) + 800 * np.sin(2 * np.pi * t / 0.11 + 1)
        for s, lv in zip(steps, levels, strict=True):
            p = p + lv * (t >= s)
        return p

    return fn, rng


@pytest.mark.parametrize("seed", [0, 1])
def test_integrated_energy_within_one_percent_for_windows_of_ten_periods_or_more(tmp_path, seed):
    fn, rng = _busy_signal(seed)
    rig = _Rig(tmp_path, fn)
    rig.advance(0.1)
    errors = []
    for _ in range(15):
        rig.advance(rng.uniform(0, 0.03))
        result, truth = rig.window(rng.uniform(10, 40) * 0.010)
        assert result.valid, result.reason
        assert result.method == "integrated"
        errors.append((result.total_mj - truth) / truth)
    assert np.max(np.abs(errors)) <= 0.01, errors


def test_step_at_the_window_edge_stays_within_the_documented_edge_bound(tmp_path):
    # A stage that starts exactly with a power step: an averaging sensor cannot place the step inside its period,
    # so each edge may be off by up to dP * T / 4. Documented in measurements/README; checked here.
    start = 0.2034

    def fn(t):
        t = np.asarray(t, dtype=float)
        return 4000.0 + 3000.0 * ((t >= start) & (t < start + 0.2))

    rig = _Rig(tmp_path, fn)
    rig.advance(start)
    result, truth = rig.window(0.2)
    assert abs(result.total_mj - truth) <= 2 * 3000.0 * 0.010 / 4 + 1.0


def test_short_window_is_flagged(tmp_path):
    rig = _Rig(tmp_path, lambda t: np.full_like(np.asarray(t, float), 5000.0))
    rig.advance(0.1)
    result, _ = rig.window(0.02)  # 2 sensor periods < 5
    assert not result.valid
    assert "shorter than 5 sensor periods" in result.reason
    assert result.to_columns()["energy_invalid_reason"] == result.reason


def test_failing_sensor_file_mid_run(tmp_path):
    rig = _Rig(tmp_path, lambda t: np.full_like(np.asarray(t, float), 6000.0))
    curr = rig.tree.path("VDD_IN", "curr")
    saved = {}

    def hook(t):
        if 0.30 <= t < 0.45 and curr.exists():
            saved["text"] = curr.read_text()
            curr.unlink()  # the sensor file vanishes (driver unbound, I/O error)
        elif t >= 0.45 and not curr.exists():
            curr.write_text(saved["text"])

    rig.hook = hook
    rig.advance(0.1)
    before, truth_before = rig.window(0.15)
    during, _ = rig.window(0.3)  # spans the 150 ms outage
    after, truth_after = rig.window(0.2)
    assert before.valid and abs(before.total_mj - truth_before) / truth_before < 0.01
    assert not during.valid
    assert "gap of" in during.reason and "failed reads" in during.reason and "vdd_in" in during.reason
    assert after.valid and abs(after.total_mj - truth_after) / truth_after < 0.01
    sampler = rig.meter.samplers[0]
    assert sampler.n_invalid >= 35  # 150 ms at 250 Hz, all recorded as invalid samples
    trace = rig.meter.traces()["jetson_ina3221"]
    bad = trace[~trace["valid"]]
    assert (bad["reason"].str.contains("curr1_input")).all()
    assert trace["seq"].is_monotonic_increasing and trace["t_ns"].is_monotonic_increasing


def test_single_failed_read_is_bridged_and_noted(tmp_path):
    rig = _Rig(tmp_path, lambda t: np.full_like(np.asarray(t, float), 6000.0))
    curr = rig.tree.path("VDD_IN", "curr")
    state = {"done": False}

    def hook(t):
        if t >= 0.2 and not state["done"]:
            state["text"] = curr.read_text()
            curr.write_text("garbage\n")
            state["done"] = True
        elif state["done"] and "text" in state:
            curr.write_text(state.pop("text"))

    rig.hook = hook
    rig.advance(0.1)
    result, truth = rig.window(0.3)
    assert result.valid
    assert "1 failed reads inside the window" in result.reason
    assert abs(result.total_mj - truth) / truth < 0.01


def test_idle_baseline_and_net_energy(tmp_path):
    def fn(t):
        t = np.asarray(t, dtype=float)
        return 3000.0 + 4000.0 * ((t >= 1.0) & (t < 1.5))

    rig = _Rig(tmp_path, fn)
    rig.advance(0.05)
    idle = rig.meter.measure_idle(0.5)
    assert idle.valid and idle.power_mw["vdd_in"] == pytest.approx(3000.0, rel=1e-3)
    assert idle.power_mw["vdd_soc"] == pytest.approx(700.0, abs=5)
    rig.advance(1.0 - rig.clock.t_ns / 1e9 - 0.1)
    result, truth = rig.window(0.7)
    assert result.energy_net_mj["vdd_in"] == pytest.approx(truth - 3000.0 * 0.7, rel=0.02)
    assert result.net_total_mj == pytest.approx(4000.0 * 0.5, rel=0.02)
    cols = result.to_columns()
    assert cols["energy_net_mj_total"] == result.net_total_mj
    assert cols["energy_mj_vdd_soc"] == pytest.approx(700.0 * 0.7, rel=0.01)
    assert cols["energy_net_mj_vdd_soc"] == pytest.approx(0.0, abs=2.0)
