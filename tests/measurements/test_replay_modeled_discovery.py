from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pynvml
import pytest
from meas_helpers import FakeClock, JetsonTree, make_rapl_tree
from test_nvml import FakeGpu

from megbed.firmware_profiles import load_profile
from megbed.measurements.meter import Meter
from megbed.measurements.probes.base import ProbeReadError, ProbeUnavailable
from megbed.measurements.probes.discovery import discover, probe_status
from megbed.measurements.probes.modeled import ModeledProbe
from megbed.measurements.probes.replay import ReplayProbe


def _trace(n=500, period_ns=10_000_000):
    t = np.arange(n, dtype=np.int64) * period_ns + 123_000_000
    return pd.DataFrame({"t_ns": t, "power_mw_vdd_in": np.where(np.arange(n) < 250, 4000.0, 8000.0)})


def test_replay_plays_back_in_time_and_ends_cleanly():
    clock = FakeClock(0)
    probe = ReplayProbe(_trace(), clock=clock)
    assert probe.sensor_period_s() == pytest.approx(0.010) and probe.method == "integrated"
    assert probe.sample().power_mw == {"vdd_in": 4000.0}
    clock.advance(3.0)
    assert probe.sample().power_mw == {"vdd_in": 8000.0}
    clock.advance(2.5)
    r = probe.sample()
    assert not r.valid and "ended" in r.reason
    looping = ReplayProbe(_trace(), clock=clock, loop=True)
    looping.sample()
    clock.advance(5.5)
    assert looping.sample().valid


def test_replay_of_a_file_through_the_meter(tmp_path):
    path = tmp_path / "trace.parquet"
    _trace().to_parquet(path)
    clock = FakeClock(0)
    meter = Meter(ReplayProbe(path, clock=clock), rate_hz=100)
    w = meter.begin("all")
    for _ in range(400):
        clock.advance(0.01)
        meter.tick()
    meter.end(w)
    assert w.result.total_mj == pytest.approx(4000 * 2.5 + 8000 * 1.5, rel=0.01)
    with pytest.raises(ProbeUnavailable, match="not found"):
        ReplayProbe(tmp_path / "nope.parquet")


def test_modeled_energy_is_cpu_time_times_figures_and_labelled():
    clock = FakeClock(0)
    cpu = {"ns": 0}
    model = {"cpu": {"idle_w": 2.0, "active_w": 10.0, "source": "cpu_time"}, "base": {"idle_w": 3.0, "active_w": 3.0}}
    probe = ModeledProbe(model, cpu_time=lambda: cpu["ns"], n_cpus=4, clock=clock, profile_name="test")
    meter = Meter(probe, rate_hz=10)
    w = meter.begin("stage")
    for _ in range(20):  # 2 s, two cores busy
        clock.advance(0.1)
        cpu["ns"] += 2 * 100_000_000
        meter.tick()
    meter.end(w)
    r = w.result
    assert r.method == "modeled" and r.valid
    assert r.energy_mj["cpu"] == pytest.approx(2000 * 2 + 8000 * 2 * 0.5)
    assert r.energy_mj["base"] == pytest.approx(3000 * 2)
    assert "not measured" in probe.settings()["note"]


def test_meter_combines_probes_and_reports_the_weakest_method():
    clock = FakeClock(0)
    cpu = {"ns": 0}
    gpu = FakeGpu(clock, power_w=lambda t: 300.0)
    from megbed.measurements.probes.nvml import NvmlProbe

    nv = NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0)
    model = ModeledProbe({"cpu": {"idle_w": 5.0, "active_w": 5.0}}, cpu_time=lambda: cpu["ns"], clock=clock)
    meter = Meter([nv, model])
    w = meter.begin("s")
    for _ in range(100):
        clock.advance(0.01)
        meter.tick()
    meter.end(w)
    r = w.result
    assert r.probe == "nvml+modeled" and r.method == "modeled"
    assert r.total_mj == pytest.approx(r.energy_mj["gpu0"] + r.energy_mj["cpu"])
    assert set(meter.rails) == {"gpu0", "cpu"}


def test_discovery_with_profile_uses_the_rail_map(tmp_path):
    tree = JetsonTree(tmp_path, "orin_nano_jp6")
    for label in tree.channels:
        tree.set_power(label, 1000.0)
    found = discover("jetson_orin_nano_15w", sysfs_root=str(tmp_path), clock=FakeClock(),
                     smbus=None)
    assert [p.name for p in found.probes] == ["jetson_ina3221"]
    assert found.probes[0].total_keys == ("vdd_in",)
    extra = [a for a in found.attempts if a.backend == "ina260"][0]
    assert not extra.ok and extra.role == "extra"


def test_discovery_desktop_gpu_plus_rapl(tmp_path):
    make_rapl_tree(tmp_path, {"package-0": 0, "dram": 0})
    clock = FakeClock(0)
    gpu = FakeGpu(clock)
    found = discover("h100", sysfs_root=str(tmp_path), clock=clock, nvml_binding=gpu.nv)
    assert [p.name for p in found.probes] == ["nvml", "rapl"]
    meter = Meter(found.probes, discovery=found)
    assert meter.rails == ["gpu0", "package_0", "dram_0"]
    assert meter.settings()["discovery"]["chosen"] == ["nvml", "rapl"]


def test_discovery_falls_back_to_modeled_with_every_reason(tmp_path):
    nv = mock.create_autospec(pynvml)
    nv.NVMLError = pynvml.NVMLError
    nv.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    found = discover(None, sysfs_root=str(tmp_path), nvml_binding=nv, pmic_runner=_no_vcgencmd)
    assert found.fallback and [p.name for p in found.probes] == ["modeled"]
    reasons = {a.backend: a.reason for a in found.attempts}
    assert "INA3221" in reasons["jetson_ina3221"] and "Not Found" in reasons["nvml"]
    assert "RAPL" in reasons["rapl"] and "vcgencmd" in reasons["rpi5_pmic"]
    assert found.probes[0].settings()["profile"] == "generic_cpu"
    with pytest.raises(ProbeUnavailable, match="no power probe available"):
        discover(None, sysfs_root=str(tmp_path), nvml_binding=nv, pmic_runner=_no_vcgencmd, fallback=False)
    assert "energy is modeled" in found.summary()


def _no_vcgencmd(cmd):
    raise ProbeUnavailable("vcgencmd not found")


def test_probe_status_lists_every_backend(tmp_path):
    status = {a.backend: a for a in probe_status(sysfs_root=str(tmp_path))}
    assert set(status) == {"nvml", "rapl", "jetson_ina3221", "rpi5_pmic", "ina260", "ina219"}
    assert not any(a.ok for a in status.values())
    assert all(a.reason for a in status.values())


def test_meter_from_profile_and_read_error_type():
    meter = Meter.from_profile("generic_cpu")
    assert meter.probe_name == "modeled"
    assert meter.discovery.profile == "generic_cpu"
    assert issubclass(ProbeReadError, RuntimeError)
    assert load_profile("generic_cpu").probes.order == ("rapl", "modeled")


def test_recorded_trace_windows_within_one_percent_at_ten_periods():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import window_energy

    df = pd.read_parquet(window_energy.FIXTURE)
    res = window_energy.run(df, rate_hz=1000.0, lag_corrected=True, seed=3)
    long = res[res["periods"] >= 10]
    assert len(long) >= 5 and long["rel_err"].abs().max() <= 0.01
