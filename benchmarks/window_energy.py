"""Window-energy error on a replayed trace: how close integrated stage energy comes to the truth.

The trace (``tests/measurements/fixtures/replay_trace.parquet``) holds a known "true" power signal at 1 ms
resolution (``true_mw``: piecewise constant, so any window's true energy is exact) and what an averaging sensor with a
10 ms update period (an INA3221-like Jetson rail) reported when read every 1 ms (``power_mw_vdd_in``). The replay
probe plays the sensor column back through the Meter at several read rates; random windows of 2..100 sensor periods
are compared with the truth, with and without the averaging-lag correction.

    python benchmarks/window_energy.py             # print the figures
    python benchmarks/window_energy.py --regenerate  # rebuild the fixture (seeded; same bytes of data)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests/measurements/fixtures/replay_trace.parquet"
SENSOR_PERIOD_NS = 10_000_000
STEP_NS = 1_000_000
DURATION_S = 6.0


def make_trace(seed: int = 7) -> pd.DataFrame:
    """A 6 s stage-like power signal (idle, bursts, ramps, ripple) and an averaging sensor's view of it."""
    rng = np.random.default_rng(seed)
    n = int(DURATION_S * 1e9 / STEP_NS)
    t = np.arange(n) * STEP_NS  # start of each 1 ms slot
    ts = t / 1e9
    p = 4200 + 300 * np.sin(2 * np.pi * ts / 0.9) + 120 * np.sin(2 * np.pi * ts / 0.037)
    for start in np.sort(rng.uniform(0.2, 5.6, 9)):  # stages: bursts of 50-400 ms at +1..4 W
        length, height = rng.uniform(0.05, 0.4), rng.uniform(1000, 4000)
        p += height * ((ts >= start) & (ts < start + length))
    p += np.clip(np.cumsum(rng.normal(0, 15, n)), -400, 400)  # slow wander
    true_mw = np.round(p, 3)
    # the sensor: at read time t (end of slot), the mean of the last completed 10 ms period
    per = SENSOR_PERIOD_NS // STEP_NS
    n_periods = n // per
    means = true_mw[: n_periods * per].reshape(n_periods, per).mean(axis=1)
    read_t = t + STEP_NS
    k = read_t // SENSOR_PERIOD_NS  # completed periods at read time
    sensor = np.where(k >= 1, means[np.clip(k - 1, 0, n_periods - 1)], true_mw[0])
    return pd.DataFrame({"t_ns": read_t.astype(np.int64), "power_mw_vdd_in": np.round(sensor, 1),
                         "true_mw": true_mw, "true_slot_start_ns": t.astype(np.int64)})


def true_energy_mj(df: pd.DataFrame, t0_ns: int, t1_ns: int) -> float:
    """Exact energy of the piecewise-constant true signal over [t0, t1] (trace time)."""
    start = df["true_slot_start_ns"].to_numpy()
    p = df["true_mw"].to_numpy()
    lo = np.clip(start, t0_ns, t1_ns)
    hi = np.clip(start + STEP_NS, t0_ns, t1_ns)
    return float(np.sum(p * (hi - lo)) / 1e9)


class _Clock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def run(df: pd.DataFrame, rate_hz: float, lag_corrected: bool, seed: int = 1) -> pd.DataFrame:
    from megbed.measurements.meter import Meter
    from megbed.measurements.probes.replay import ReplayProbe

    clock = _Clock()
    probe = ReplayProbe(df[["t_ns", "power_mw_vdd_in"]], clock=clock, sensor_period_s=SENSOR_PERIOD_NS / 1e9,
                        averaging_lag_s=SENSOR_PERIOD_NS / 1e9 if lag_corrected else 0.0)
    meter = Meter(probe, rate_hz=rate_hz, min_window_periods=0)
    dt = int(1e9 / rate_hz)
    trace_t0 = int(df["t_ns"].iloc[0])
    rng = np.random.default_rng(seed)
    end_ns = int((DURATION_S - 0.3) * 1e9)
    rows = []

    def advance(ns: int) -> None:
        target = clock.t + ns
        while clock.t + dt <= target:
            clock.t += dt
            meter.tick()
        clock.t = target

    meter.tick()
    advance(50_000_000)
    periods = [2, 5, 10, 20, 50, 100]
    while clock.t < end_ns - 100 * SENSOR_PERIOD_NS:
        n_per = int(rng.choice(periods))
        advance(int(rng.uniform(0, 30e6)))
        w = meter.begin(f"{n_per}")
        advance(n_per * SENSOR_PERIOD_NS + int(rng.uniform(0, SENSOR_PERIOD_NS)))
        meter.end(w)
        advance(3 * SENSOR_PERIOD_NS)
        r = w.result
        truth = true_energy_mj(df, trace_t0 + w.t_start_ns, trace_t0 + w.t_end_ns)
        rows.append({"periods": n_per, "rel_err": (r.total_mj - truth) / truth})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regenerate", action="store_true", help="rebuild the replay fixture")
    ap.add_argument("--seeds", type=int, default=12, help="replays (each with its own random windows)")
    args = ap.parse_args(argv)
    if args.regenerate or not FIXTURE.exists():
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        make_trace().to_parquet(FIXTURE, compression="zstd", index=False)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
    df = pd.read_parquet(FIXTURE)
    print(f"replayed trace: {len(df)} reads over {DURATION_S} s, sensor period {SENSOR_PERIOD_NS / 1e6:.0f} ms")
    print("rate_hz  lag_fix  periods    n  median|err|%  p95|err|%  max|err|%")
    for rate in (100.0, 1000.0):
        for fix in (True, False):
            res = pd.concat([run(df, rate, fix, seed) for seed in range(args.seeds)], ignore_index=True)
            for n_per, g in res.groupby("periods"):
                e = np.abs(g["rel_err"].to_numpy()) * 100
                print(f"{rate:7.0f}  {'yes' if fix else 'no ':7s}  {n_per:7d}  {len(e):3d}   {np.median(e):11.3f}"
                      f"  {np.percentile(e, 95):9.3f}  {e.max():9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
