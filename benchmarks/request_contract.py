"""Cost of the request contract on every network hop: ``Request.to_meta``, ``Request.from_meta`` (validation
included) and ``Request.columns`` (the dataset row's configuration), in microseconds per call (best of 5 repeats).

    python benchmarks/request_contract.py [--number 20000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megbed.testbed.request import Request  # noqa: E402


def measure(number: int) -> dict[str, float]:
    """Microseconds per call of each operation on a typical MEG campaign request."""
    req = Request(prompt="a red apple on a table", scheme="meg", seed=1, n_steps=8, es_steps=8, merge_ratio=0.5,
                  link_model="awgn", tx_mode="analog", distance_m=200.0, request_id="0123456789ab-p0-s1-r0",
                  point_id="0123456789ab")
    meta = req.to_meta()
    assert Request.from_meta(meta) == req
    ops = {"to_meta": req.to_meta, "from_meta": lambda: Request.from_meta(meta), "columns": req.columns}
    return {name: min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6 for name, fn in ops.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000, help="calls per repeat")
    args = parser.parse_args(argv)
    for name, us in measure(args.number).items():
        print(f"Request.{name:<10} {us:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
