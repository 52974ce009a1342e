"""A run directory written by this layer opens in the analysis loader (rows, traces, clock maps)."""

from __future__ import annotations

import numpy as np
import pytest
from meas_helpers import FakeClock, JetsonTree

from megbed.measurements.clocksync import ClockSync, Exchange
from megbed.measurements.dataset import DatasetWriter, TraceWriter
from megbed.measurements.manifest import build_manifest, update_manifest, write_manifest
from megbed.measurements.meter import Meter
from megbed.measurements.probes.jetson import JetsonProbe

analysis_load = pytest.importorskip("megbed.analysis.load")


def test_written_run_loads_in_analysis(tmp_path):
    tree = JetsonTree(tmp_path / "sys", "orin_nano_jp6")
    for label in tree.channels:
        tree.set_power(label, 2000.0)
    clock = FakeClock(10**9)
    meter = Meter(JetsonProbe(tmp_path / "sys", clock=clock), rate_hz=100)
    run = tmp_path / "run"
    write_manifest(run, build_manifest(run_id="r", config={"x": 1}, packages=["numpy"]))
    traces = TraceWriter(run, "ue")
    cs = ClockSync(link=None)
    cs.exchanges = [Exchange(10**9 + i, 5 * 10**9 + i + 100, 5 * 10**9 + i + 110, 10**9 + i + 210, b)
                    for b, i in enumerate(range(0, 3 * 10**9, 10**9))]
    offset = cs.fit()
    with DatasetWriter(run, rows_per_part=3) as writer:
        for req in range(4):
            rid = f"q{req}"
            w = meter.begin("decode")
            for _ in range(30):
                clock.advance(0.01)
                meter.tick()
            meter.end(w)
            clock.advance(0.02)
            meter.tick()
            meter.tick()
            base = {"run_id": "r", "point_id": "p", "request_id": rid, "repetition": req, "scheme": "meg",
                    "status": "ok"}
            rows = {"t_start_ns": offset.to_local(w.t_start_ns), "t_end_ns": offset.to_local(w.t_end_ns),
                    "latency_s": w.result.duration_s, "clock_offset_ns": int(offset.offset_at(w.t_start_ns)),
                    "clock_uncertainty_ns": offset.uncertainty_ns}
            writer.append({**base, "node": "ue", "stage": "decode", **rows, **w.result.to_columns()})
            writer.append({**base, "node": "orchestrator", "stage": "end_to_end", **rows,
                           **w.result.to_columns()})
            traces.write(meter, clock_offset_ns=int(offset.offset_ns))
    update_manifest(run, clock_sync={"ue": cs.manifest_records()}, probes={"ue": meter.settings()})
    data = analysis_load.load_run(run)
    assert len(data.rows) == 8 and len(data.requests) == 4
    assert data.rows["energy_mj_vdd_in"].iloc[0] == pytest.approx(2000 * 0.3, rel=1e-3)
    assert data.traces is not None and set(data.traces["rail"]) == {"vdd_in", "vdd_cpu_gpu_cv", "vdd_soc"}
    assert data.traces["t_ns"].min() < 0  # mapped onto the orchestrator's clock (offset -4 s)
    assert np.isfinite(data.rows["clock_offset_ns"]).all()
    assert "traces" not in data.missing and not [w for w in data.warnings if "parts" in w]
