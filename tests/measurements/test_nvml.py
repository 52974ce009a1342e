from __future__ import annotations

from unittest import mock

import pynvml
import pytest
from meas_helpers import FakeClock

from megbed.measurements.meter import Meter
from megbed.measurements.probes.base import ProbeUnavailable
from megbed.measurements.probes.nvml import NvmlProbe


class FakeGpu:
    """A GPU behind an autospec'd pynvml: power follows ``power_w(t)``; the energy counter and the instant-power field
    update every ``counter_period_s`` / ``field_period_s`` like the real driver; every NVML call costs 0.2 ms."""

    def __init__(self, clock, power_w=lambda t: 200.0, counter_period_s=0.020, field_period_s=0.010):
        self.clock, self.power_w = clock, power_w
        self.counter_period, self.field_period = counter_period_s, field_period_s
        self.energy_mj = 5_000_000.0  # counter since driver load
        self.t_acc = clock.t_ns / 1e9
        self.fail_reads = False
        nv = mock.create_autospec(pynvml)
        nv.NVMLError = pynvml.NVMLError
        nv.NVML_SUCCESS = pynvml.NVML_SUCCESS
        nv.NVML_FI_DEV_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT
        nv.nvmlDeviceGetCount.return_value = 1
        nv.nvmlDeviceGetHandleByIndex.return_value = "handle0"
        nv.nvmlDeviceGetName.return_value = b"NVIDIA H100 80GB HBM3"
        nv.nvmlDeviceGetPowerManagementLimit.return_value = 700_000
        nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = self._energy
        nv.nvmlDeviceGetFieldValues.side_effect = self._fields
        self.nv = nv

    def _tick(self):
        self.clock.advance(0.0002)
        now = self.clock.t_ns / 1e9
        step = 1e-4
        while self.t_acc + step <= now:  # integrate the true power finely
            self.energy_mj += self.power_w(self.t_acc + step / 2) * 1000 * step
            self.t_acc += step
        if self.fail_reads:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return now

    def _energy(self, handle):
        now = self._tick()
        # the driver publishes the counter only every counter_period
        published = now - (now % self.counter_period)
        return int(self.energy_mj - self.power_w(now) * 1000 * (now - published))

    def _fields(self, handle, ids):
        now = self._tick()
        assert ids == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        v = pynvml.c_nvmlFieldValue_t()
        v.fieldId, v.nvmlReturn = ids[0], pynvml.NVML_SUCCESS
        sample_t = now - (now % self.field_period)
        v.timestamp = int(sample_t * 1e6)
        v.value.uiVal = int(self.power_w(sample_t) * 1000)
        return [v]


def test_no_driver_is_a_clean_absence():
    with pytest.raises(ProbeUnavailable, match="NVML unavailable"):
        NvmlProbe()  # the real binding on this machine: NVMLError_LibraryNotFound
    nv = mock.create_autospec(pynvml)
    nv.NVMLError = pynvml.NVMLError
    nv.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded"):
        NvmlProbe(binding=nv)


def test_update_periods_measured_at_open():
    clock = FakeClock(0)
    gpu = FakeGpu(clock)
    probe = NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0.3)
    assert probe.method == "counter"
    assert probe.counter_period_s() == pytest.approx(0.020, abs=0.001)
    assert probe.sensor_period_s() == pytest.approx(0.010, abs=1e-6)
    s = probe.settings()
    assert s["power_source"] == "NVML_FI_DEV_POWER_INSTANT" and s["power_limit_mw"] == [700_000]
    assert s["devices"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}]
    probe.close()
    gpu.nv.nvmlShutdown.assert_called_once_with()


def _run(meter, gpu, seconds, rate_hz=100):
    for _ in range(int(seconds * rate_hz)):
        gpu.clock.advance(1 / rate_hz)
        meter.tick()


def test_counter_window_energy_and_sync_before_each_stamp():
    clock = FakeClock(0)
    gpu = FakeGpu(clock, power_w=lambda t: 150.0 + 250.0 * (1.0 <= t < 2.0))  # a 1 s kernel at 400 W
    probe = NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0.2)
    meter = Meter(probe, rate_hz=100)
    events = []

    def sync():
        events.append(("sync", clock.t_ns))

    _run(meter, gpu, 0.8 - clock.t_ns / 1e9)
    w = meter.begin("kernel", sync=sync)
    events.append(("begin", w.t_start_ns))
    _run(meter, gpu, 1.4)
    meter.end(w)
    events.append(("end", w.t_end_ns))
    assert [e[0] for e in events] == ["sync", "begin", "sync", "end"]
    assert events[0][1] <= events[1][1] and events[2][1] <= events[3][1]
    r = w.result
    truth = 150.0 * 1.4 * 1000 + 250.0 * 1.0 * 1000
    assert r.method == "counter" and r.valid, r.reason
    assert abs(r.total_mj - truth) <= 2 * 0.020 * 400 * 1000  # at most one counter period of power per edge
    assert abs(r.total_mj - truth) / truth < 0.02
    cols = r.to_columns()
    assert cols["probe"] == "nvml" and "energy_mj_gpu0" in cols


def test_short_window_flagged_and_default_sync_used():
    clock = FakeClock(0)
    gpu = FakeGpu(clock)
    synced = []
    probe = NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0.2, default_sync=lambda: synced.append(1))
    meter = Meter(probe)
    w = meter.begin("tiny")
    clock.advance(0.03)
    meter.end(w)
    assert len(synced) == 2
    assert not w.result.valid and "shorter than 5 counter updates (period 20.0 ms)" in w.result.reason


def test_without_counter_integrates_instant_power():
    clock = FakeClock(0)
    gpu = FakeGpu(clock)
    gpu.nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    probe = NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0)
    assert probe.method == "integrated"
    meter = Meter(probe, rate_hz=200)
    w = meter.begin("x")
    _run(meter, gpu, 0.5, 200)
    meter.end(w)
    _run(meter, gpu, 0.05, 200)
    assert w.result.method == "integrated"
    assert w.result.total_mj == pytest.approx(200.0 * 1000 * (w.result.duration_s), rel=0.01)


def test_gpu_lost_mid_run_marks_samples_invalid_and_carries_on():
    clock = FakeClock(0)
    gpu = FakeGpu(clock)
    meter = Meter(NvmlProbe(binding=gpu.nv, clock=clock, measure_period_s=0), rate_hz=100)
    _run(meter, gpu, 0.1)
    gpu.fail_reads = True
    _run(meter, gpu, 0.1)
    gpu.fail_reads = False
    _run(meter, gpu, 0.1)
    trace = meter.traces()["nvml"]
    assert (~trace["valid"]).sum() == 10 and trace["reason"].str.contains("GPU is lost").sum() == 10
    assert trace["valid"].iloc[-1]
