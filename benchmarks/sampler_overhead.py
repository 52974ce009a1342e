"""Sampler CPU overhead at 100 and 1000 Hz: what measuring costs the node being measured.

For each probe kind and rate, the sampler runs alone on its thread for a few seconds while the main thread sleeps;
the process CPU time spent (``time.process_time``) over wall time is the overhead, in % of one core. Probes:

* ``null``      -- a probe returning a constant: the sampler's own machinery (scheduling, arrays, locking);
* ``jetson``    -- a fake Orin Nano INA3221 tree in a temp dir: 6 sysfs file reads per sample, like the real board;
* ``rapl``      -- a fake powercap tree: 2 counter files per sample.

Also reported: achieved rate, inter-read interval jitter (std and p99), and the cost of one read.

    python benchmarks/sampler_overhead.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/measurements"))


def _null_probe():
    from megbed.measurements.probes.base import PowerProbe, Rail

    class Null(PowerProbe):
        name = "null"
        rails = (Rail("a", "A"),)

        def read(self):
            return {"a": 1000.0}, None, {}

    return Null()


def _probes(tmp: Path):
    from meas_helpers import JetsonTree, make_rapl_tree

    from megbed.measurements.probes.jetson import JetsonProbe
    from megbed.measurements.probes.rapl import RaplProbe

    tree = JetsonTree(tmp / "jetson", "orin_nano_jp6")
    for label in tree.channels:
        tree.set_power(label, 1234.0)
    make_rapl_tree(tmp / "rapl", {"package-0": 123456, "dram": 789})
    return {"null": _null_probe, "jetson": lambda: JetsonProbe(tmp / "jetson"),
            "rapl": lambda: RaplProbe(tmp / "rapl", measure_period_s=0)}


def measure(make, rate_hz: float, seconds: float) -> dict:
    from megbed.measurements.sampler import Sampler

    probe = make()
    n = 2000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        probe.sample()
    read_us = (time.perf_counter_ns() - t0) / n / 1e3
    sampler = Sampler(probe, rate_hz=rate_hz)
    time.sleep(0.2)
    cpu0, wall0 = time.process_time(), time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    cpu1, wall1 = time.process_time(), time.monotonic()
    snap = sampler.snapshot()
    gaps_ms = np.diff(snap.t_ns) / 1e6
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0), "rate": len(snap) / (wall1 - wall0),
            "jitter_ms": float(np.std(gaps_ms)), "p99_gap_ms": float(np.percentile(gaps_ms, 99)), "read_us": read_us}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        probes = _probes(Path(tmp))
        print("probe   rate_hz  achieved_hz  cpu_%_of_one_core  read_us  gap_std_ms  gap_p99_ms")
        for name, make in probes.items():
            for rate in (100.0, 1000.0):
                m = measure(make, rate, args.seconds)
                print(f"{name:7s} {rate:7.0f}  {m['rate']:11.1f}  {m['cpu_pct']:17.2f}  {m['read_us']:7.1f}"
                      f"  {m['jitter_ms']:10.3f}  {m['p99_gap_ms']:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
