"""``megbed probe list|watch|energy``: what can measure power here, live power per rail, one energy window;
``megbed dataset compact RUN``: a finished run's parts merged into partitioned files (:mod:`megbed.measurements.compact`).

User errors (unknown board, nothing usable) print ``megbed: error: ...`` and exit with code 2, like the rest of the
CLI (this module may not import the testbed's ``CliError``: the measurement layer sits below the testbed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any


def _fail(message: str) -> int:
    print(f"megbed: error: {message}", file=sys.stderr)
    return 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", metavar="PROFILE", help="firmware profile naming the board's probes (default: auto-detect)")
    p.add_argument("--sysfs-root", default="/", metavar="DIR",
                   help="root of the sysfs tree to read (a recorded or fake tree; default /)")


def register(sub) -> None:
    parser = sub.add_parser("probe", help="power probes: list backends, watch live power, measure an energy window")
    cmds = parser.add_subparsers(dest="probe_cmd", metavar="CMD")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = cmds.add_parser("list", help="which power backends are present on this machine, and why the others are not")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("watch", help="print live power per rail")
    _common(p)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to watch (s)")
    p.add_argument("--interval", type=float, default=0.5, help="print every INTERVAL s (mean power over it)")
    p.add_argument("--rate", type=float, default=100.0, help="sampling rate (Hz)")
    p.set_defaults(func=cmd_watch)

    p = cmds.add_parser("energy", help="measure one energy window of SECONDS and print energy per rail")
    _common(p)
    p.add_argument("--seconds", type=float, required=True, help="window length (s)")
    p.add_argument("--idle-seconds", type=float, default=0.0,
                   help="measure an idle baseline first (s) to report idle-subtracted energy")
    p.add_argument("--rate", type=float, default=100.0, help="sampling rate (Hz)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_energy)

    ds = sub.add_parser("dataset", help="a run's dataset on disk: compact its parts into partitioned files")
    ds_cmds = ds.add_subparsers(dest="dataset_cmd", metavar="CMD")
    ds.set_defaults(func=lambda args: ds.print_help() or 2)
    p = ds_cmds.add_parser("compact", help="merge RUN/dataset/part-*.parquet into files partitioned by scheme/node "
                           "(verified, then the parts are removed; safe to rerun after a crash)")
    p.add_argument("run_dir", metavar="RUN", help="the run directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_dataset_compact)


def cmd_dataset_compact(args) -> int:
    from pathlib import Path

    from megbed.measurements.compact import CompactionError, compact_dataset

    if not (Path(args.run_dir) / "dataset").is_dir():
        return _fail(f"{args.run_dir} holds no dataset folder (expected {args.run_dir}/dataset)")
    try:
        res = compact_dataset(args.run_dir)
    except CompactionError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(res, indent=1))
    elif res["generation"] is None:
        print(f"{args.run_dir}: nothing to compact")
    else:
        print(f"{args.run_dir}: {res['rows']} rows from {res['inputs']} files -> {res['files']} files in "
              f"dataset/{res['generation']} ({len(res['removed'])} removed; sha256 {res['content_sha256'][:16]})")
    return 0


def _meter(args, rate_hz: float):
    from megbed.firmware_profiles import ProfileError, load_profile
    from megbed.measurements.meter import Meter
    from megbed.measurements.probes.base import ProbeUnavailable
    from megbed.measurements.probes.discovery import discover

    profile = None
    if args.board:
        try:
            profile = load_profile(args.board)
        except ProfileError as exc:
            raise _UserError(str(exc)) from exc
    try:
        found = discover(profile, sysfs_root=args.sysfs_root)
    except ProbeUnavailable as exc:
        raise _UserError(str(exc)) from exc
    return Meter(found.probes, rate_hz=rate_hz, discovery=found, keep_s=120.0)


class _UserError(Exception):
    pass


def cmd_list(args) -> int:
    from megbed.measurements.probes.discovery import discover, probe_status

    status = probe_status(sysfs_root=args.sysfs_root)
    board = None
    if args.board:
        from megbed.firmware_profiles import ProfileError, load_profile

        try:
            board = discover(load_profile(args.board), sysfs_root=args.sysfs_root)
        except ProfileError as exc:
            return _fail(str(exc))
    if args.json:
        out: dict[str, Any] = {"backends": [a.to_dict() for a in status]}
        if board is not None:
            out["board"] = board.to_dict()
        print(json.dumps(out, indent=1))
        return 0
    for a in status:
        print(f"{a.backend:15s} {'present' if a.ok else 'absent ':8s} {a.reason}")
    if board is not None:
        print(f"\nprofile {args.board}:")
        print(board.summary())
    return 0


def cmd_watch(args) -> int:
    try:
        meter = _meter(args, args.rate)
    except _UserError as exc:
        return _fail(str(exc))
    rails = meter.rails
    print(f"probe: {meter.probe_name}  rails (mW): {'  '.join(rails)}  total")
    meter.start()
    try:
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            w = meter.begin("watch")
            time.sleep(max(0.05, min(args.interval, end - time.monotonic())))
            meter.end(w)
            r = w.result
            d = r.duration_s
            cells = [f"{r.energy_mj[k] / d:9.1f}" if math.isfinite(r.energy_mj[k]) else "      nan" for k in rails]
            flag = "" if r.valid else f"  [invalid: {r.reason}]"
            print(" ".join(cells) + f" {r.total_mj / d:10.1f}{flag}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        meter.close()
    return 0


def cmd_energy(args) -> int:
    if args.seconds <= 0:
        return _fail("--seconds must be positive")
    try:
        meter = _meter(args, args.rate)
    except _UserError as exc:
        return _fail(str(exc))
    meter.start()
    try:
        if args.idle_seconds > 0:
            meter.measure_idle(args.idle_seconds)
        w = meter.begin("probe_energy")
        time.sleep(args.seconds)
        meter.end(w)
        r = w.result
        settings = meter.settings()
    finally:
        meter.close()
    out = {
        "probe": r.probe, "method": r.method, "valid": r.valid, "reason": r.reason,
        "duration_s": r.duration_s, "total_mj": r.total_mj, "net_total_mj": _num(r.net_total_mj),
        "mean_power_mw": r.mean_power_mw,
        "rails": {k: {"energy_mj": _num(v), "net_mj": _num(r.energy_net_mj.get(k)),
                      "mean_power_mw": _num(v / r.duration_s)} for k, v in r.energy_mj.items()},
        "total_rails": [p.name + ":" + k for p in meter.probes for k in p.total_keys],
        "idle_baseline": settings["idle_baseline"],
        "sensor_periods_s": {p["name"]: {"declared": p["sensor_period_s"], "counter": p["counter_period_s"],
                                         "measured": p["sampler"]["measured_refresh_period_s"]}
                             for p in settings["probes"]},
        "discovery": settings.get("discovery"),
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{r.probe} ({r.method}) over {r.duration_s:.3f} s: total {r.total_mj:.1f} mJ "
              f"({r.mean_power_mw:.1f} mW){'' if r.valid else '  INVALID: ' + r.reason}")
        for k, v in out["rails"].items():
            print(f"  {k:20s} {v['energy_mj']:12.1f} mJ  {v['mean_power_mw']:10.1f} mW")
    return 0


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
