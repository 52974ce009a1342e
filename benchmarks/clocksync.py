"""Clock-sync error and bound over loopback ZeroMQ.

A responder thread answers ``clock_sync`` frames with a clock ``offset`` ahead of and drifting ``drift_ppm`` from
this process's monotonic clock (a simulated second host); the client runs ``--bursts`` bursts of ``--per-burst``
exchanges ``--gap`` s apart, fits offset + drift, then compares the map with the injected truth at several instants.
Repeated ``--trials`` times. Reports: round trips, the fitted drift, the mapping error and the +-delta/2 bound.

    python benchmarks/clocksync.py [--trials 10] [--bursts 5] [--per-burst 16] [--gap 0.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def trial(offset_ns: int, drift: float, bursts: int, per_burst: int, gap_s: float) -> dict:
    from megbed.measurements.clocksync import ClockSync, ClockSyncResponder, OffsetClock
    from megbed.megwire import ZmqClientLink

    remote = OffsetClock(offset_ns, drift)
    with ClockSyncResponder(clock=remote) as responder:
        link = ZmqClientLink(responder.address, timeout_s=1.0)
        try:
            cs = ClockSync(link)
            for b in range(bursts):
                cs.burst(per_burst)
                if b < bursts - 1:
                    time.sleep(gap_s)
            m = cs.fit()
            errs = []
            for _ in range(20):
                local_before = time.monotonic_ns()
                r = remote()
                local_after = time.monotonic_ns()
                errs.append(m.to_local(r) - (local_before + local_after) / 2)
                time.sleep(0.005)
        finally:
            link.close()
    rtts = np.array([e.delay_ns for e in cs.exchanges]) / 1e3
    return {"err_us": np.abs(errs).max() / 1e3, "mean_err_us": float(np.mean(errs)) / 1e3,
            "bound_us": m.uncertainty_ns / 1e3, "rtt_min_us": rtts.min(), "rtt_med_us": float(np.median(rtts)),
            "drift_err_ppm": (m.drift + drift / (1 + drift)) * 1e6, "within_bound": np.abs(errs).max() <= m.uncertainty_ns}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--per-burst", type=int, default=16)
    ap.add_argument("--gap", type=float, default=0.2)
    ap.add_argument("--drift-ppm", type=float, default=50.0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = [trial(int(rng.uniform(-1e12, 1e12)), args.drift_ppm * 1e-6, args.bursts, args.per_burst, args.gap)
            for _ in range(args.trials)]
    print(f"loopback ZMQ, {args.trials} trials x {args.bursts} bursts x {args.per_burst} exchanges, "
          f"{args.gap} s apart, injected drift {args.drift_ppm} ppm")
    print("trial  rtt_min_us  rtt_median_us  |map_err|max_us  bound_us  drift_err_ppm  within_bound")
    for i, r in enumerate(rows):
        print(f"{i:5d}  {r['rtt_min_us']:10.1f}  {r['rtt_med_us']:13.1f}  {r['err_us']:15.1f}  {r['bound_us']:8.1f}"
              f"  {r['drift_err_ppm']:13.2f}  {r['within_bound']}")
    err = np.array([r["err_us"] for r in rows])
    bound = np.array([r["bound_us"] for r in rows])
    print(f"summary: max |error| {err.max():.1f} us (median {np.median(err):.1f} us), bound median "
          f"{np.median(bound):.1f} us, error within bound in {sum(r['within_bound'] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
