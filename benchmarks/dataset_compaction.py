"""Query times on a synthetic campaign dataset before and after compaction, DuckDB and pandas side by side.

A run of ``--requests`` requests is written the way the campaign runner writes it (one atomic part per request:
``--stages`` stage rows + one end_to_end row, schemes and nodes mixed), then queried; then compacted with
:func:`megbed.measurements.compact.compact_dataset` and queried again. Every query must give the same answer on both forms
(checked; the script exits non-zero otherwise).

Queries (the two things users do most: a per-scheme summary and a filter on scheme + node):

* ``q_summary``: per scheme, mean and p95 end-to-end latency and mean energy of the end_to_end rows.
* ``q_filter``: rows, total latency and energy of scheme = 'meg' and node = 'es'.

Engines: DuckDB on the files (``read_parquet`` over the parts' glob, or over the compacted generation with
``hive_partitioning``), pandas through the project's reader (``megbed.measurements.dataset.read_dataset``, validating
as analysis and ``megbed train`` do, and without validation as resume does). Times are the best of ``--repeats``
cold-process-free runs (the OS page cache is warm for both forms alike). DuckDB is in the dev extra; without it the
DuckDB rows are skipped with a message.

Run: ``python benchmarks/dataset_compaction.py [--requests 10000] [--out DIR] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from megbed.measurements.compact import compact_dataset
from megbed.measurements.dataset import DatasetWriter, data_files, read_dataset
from megbed.megwire.vocab import SCHEMES


def write_run(run: Path, requests: int, stages: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = ("encode", "denoise", "handoff", "decode", "transmit")[:stages]
    with DatasetWriter(run, rows_per_part=stages + 1) as w:
        for q in range(requests):
            scheme = SCHEMES[q % 3]
            t0 = 10**9 * q
            rows, t = [], t0
            for s, stage in enumerate(names):
                lat = float(rng.gamma(2.0, 0.05))
                rows.append({"run_id": "bench", "point_id": f"p{q % 40}", "request_id": f"q{q:06d}",
                             "repetition": 0, "scheme": scheme, "node": "es" if s % 2 == 0 else "ue",
                             "stage": stage, "status": "ok", "t_start_ns": t, "t_end_ns": t + int(lat * 1e9),
                             "latency_s": lat, "energy_mj_total": float(rng.gamma(3.0, 40.0)),
                             "energy_net_mj_total": 0.0, "energy_method": "integrated", "energy_valid": True,
                         "energy_invalid_reason": "", "seed": q})
                t += int(lat * 1e9)
            rows.append({"run_id": "bench", "point_id": f"p{q % 40}", "request_id": f"q{q:06d}", "repetition": 0,
                         "scheme": scheme, "node": None, "stage": "end_to_end", "status": "ok", "t_start_ns": t0,
                         "t_end_ns": t, "latency_s": (t - t0) / 1e9,
                         "energy_mj_total": sum(r["energy_mj_total"] for r in rows), "energy_net_mj_total": 0.0,
                         "energy_method": "integrated", "energy_valid": True, "energy_invalid_reason": "",
                         "seed": q})
            w.extend(rows)
            w.flush()  # one part per request, as the runner does


def pandas_queries(df: pd.DataFrame) -> dict:
    e2e = df[df["stage"] == "end_to_end"]
    g = e2e.groupby("scheme")
    summary = pd.DataFrame({"mean_latency_s": g["latency_s"].mean(), "p95_latency_s": g["latency_s"].quantile(0.95),
                            "mean_energy_mj": g["energy_mj_total"].mean()}).sort_index()
    sel = df[(df["scheme"] == "meg") & (df["node"] == "es")]
    return {"q_summary": summary.round(9).to_dict(), "q_filter": (len(sel), round(float(sel["latency_s"].sum()), 6),
                                                                  round(float(sel["energy_mj_total"].sum()), 3))}


def duckdb_queries(con, source: str) -> dict:
    summary = con.sql(f"""select scheme, avg(latency_s) as mean_latency_s,
                                 quantile_cont(latency_s, 0.95) as p95_latency_s,
                                 avg(energy_mj_total) as mean_energy_mj
                          from {source} where stage = 'end_to_end' group by scheme order by scheme""").df()
    summary = summary.set_index("scheme").round(9)
    summary.index.name = "scheme"
    n, lat, en = con.sql(f"select count(*), sum(latency_s), sum(energy_mj_total) from {source} "
                         "where scheme = 'meg' and node = 'es'").fetchall()[0]
    return {"q_summary": summary.to_dict(), "q_filter": (int(n), round(float(lat), 6), round(float(en), 3))}


def best(fn, repeats: int, label: str = ""):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    if label:  # progress, so that a run cut short still shows what it measured
        print(f"  {label}: best of {repeats} {min(times):.3f} s", flush=True)
    return min(times), out


def measure(run: Path, form: str, repeats: int) -> dict:
    folder = run / "dataset"
    res = {"files": len(data_files(folder)),
           "bytes": sum(p.stat().st_size for p in folder.rglob("*.parquet"))}
    res["pandas_validated"] = best(lambda: pandas_queries(read_dataset(run)), repeats, f"{form} pandas checked")
    res["pandas_plain"] = best(lambda: pandas_queries(read_dataset(run, validate=False)), repeats,
                               f"{form} pandas raw")
    try:
        import duckdb
    except ImportError:
        print("duckdb is not installed (pip install -e '.[dev]'): DuckDB rows skipped")
        return res
    con = duckdb.connect()
    if form == "parts":
        source = f"read_parquet('{folder}/part-*.parquet', union_by_name=true)"
    else:
        source = f"read_parquet('{folder}/compacted-*/**/*.parquet', hive_partitioning=true)"
    res["duckdb"] = best(lambda: duckdb_queries(con, source), repeats, f"{form} duckdb")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--stages", type=int, default=3, help="stage rows per request (+ one end_to_end row)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="run directory to create (default: a temporary one, removed after)")
    args = ap.parse_args()
    run = args.out or Path(tempfile.mkdtemp(prefix="megbed-compaction-"))
    try:
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        write_run(run, args.requests, args.stages)
        write_s = time.perf_counter() - t0
        print(f"wrote {args.requests} requests in {write_s:.1f} s", flush=True)
        before = measure(run, "parts", args.repeats)
        t0 = time.perf_counter()
        comp = compact_dataset(run)
        compact_s = time.perf_counter() - t0
        after = measure(run, "compacted", args.repeats)
        load1 = os.getloadavg()
        print(f"{args.requests} requests x {args.stages + 1} rows; {os.cpu_count()} CPUs, load average "
              f"{load0[0]:.2f} at start, {load1[0]:.2f} at end")
        print(f"written in {write_s:.1f} s as {before['files']} parts ({before['bytes'] / 1e6:.1f} MB); compacted in "
              f"{compact_s:.1f} s into {after['files']} files ({after['bytes'] / 1e6:.1f} MB, {comp['generation']})")
        print(f"{'engine':28s} {'parts':>10s} {'compacted':>10s} {'speed-up':>9s}  same answers")
        ok = True
        for key, label in (("duckdb", "DuckDB (both queries)"), ("pandas_plain", "pandas, read_dataset raw"),
                           ("pandas_validated", "pandas, read_dataset checked")):
            if key not in before:
                continue
            (tb, ab), (ta, aa) = before[key], after[key]
            same = ab == aa
            ok &= same
            print(f"{label:28s} {tb:9.3f}s {ta:9.3f}s {tb / ta:8.1f}x  {same}")
        if "duckdb" in before:
            same = before["duckdb"][1]["q_filter"] == before["pandas_plain"][1]["q_filter"]
            ok &= same
            print(f"DuckDB and pandas agree on q_filter: {same} {before['duckdb'][1]['q_filter']}")
        return 0 if ok else 1
    finally:
        if args.out is None:
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
