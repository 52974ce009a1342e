"""Harness overhead: the time per generation that is neither model compute nor emulated airtime, per hop and in
total, and MEG / CEG / UE-local latency and energy on the default campaign.

Goals (issue 6): <= 1 ms per hop and <= 2 % of end to end.

Every number comes from the dataset rows the runner writes (stage windows on the nodes' clocks mapped onto the
orchestrator's timeline) plus the orchestrator's own round trip:

* ``uplink+es_in``: UE starts the request -> first ES stage starts (request framing, UE->broker->ES transport,
  the ES's parse and hand-off to its worker);
* ``es_out``: last ES stage ends -> the answer is ready to leave (energy windows closed, records attached);
* ``downlink``: ES answer -> UE received, minus the emulated airtime (broker forwarding and its physical-layer
  processing, transport); ``channel_processing``: of which the emulator's own processing of the frame (not added
  to the total separately);
* ``ue_in``: UE received -> first UE stage starts; ``ue_out``: last UE stage ends -> UE done;
* ``gaps``: between consecutive stages on one node (meter window edges);
* ``total`` = end to end - sum of stage latencies - airtime;
* ``control``: orchestrator -> UE ``generate`` and ``result`` back, outside the end-to-end window (harness only).

Part A runs the model-free engine (no compute: the harness alone); part B the default campaign on the embedded
default model (or, when it is not installed, a tiny random-weight SD-1.5-shaped model, said so in the output).

    python benchmarks/harness_overhead.py [--requests 20] [--model DIR] [--skip-default] [--json]
    python benchmarks/harness_overhead.py --hops [--profile]   # per hop next to raw pyzmq; us per stage
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOPS = ("uplink+es_in", "es_out", "downlink", "channel_processing", "ue_in", "ue_out", "gaps")


def hop_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per request: each hop's overhead (ms), airtime, stage sum and end to end (s)."""
    out = []
    for rid, g in rows[rows.status == "ok"].groupby("request_id"):
        e2e = g[g.stage == "end_to_end"].iloc[0]
        es = g[g.node == "es"].sort_values("t_start_ns")
        ue = g[g.node == "ue"].sort_values("t_start_ns")
        link = g[g.stage == "link"]
        stages = pd.concat([es, ue])
        rec = {"request_id": rid, "scheme": e2e.scheme, "e2e_s": float(e2e.latency_s),
               "stages_s": float(stages.latency_s.sum())}
        airtime = float(link.ch_airtime_s.iloc[0]) if len(link) and pd.notna(link.ch_airtime_s.iloc[0]) else 0.0
        rec["airtime_s"] = airtime

        def gaps(frame: pd.DataFrame) -> float:
            if len(frame) < 2:
                return 0.0
            return float((frame.t_start_ns.to_numpy()[1:] - frame.t_end_ns.to_numpy()[:-1]).sum()) / 1e6

        if len(link):
            lk = link.iloc[0]
            rec["uplink+es_in"] = (es.t_start_ns.iloc[0] - e2e.t_start_ns) / 1e6
            rec["es_out"] = (lk.t_start_ns - es.t_end_ns.iloc[-1]) / 1e6
            rec["downlink"] = (lk.latency_s - airtime) * 1e3
            if "ch_processing_s" in lk and pd.notna(lk.ch_processing_s):
                rec["channel_processing"] = float(lk.ch_processing_s) * 1e3
            rec["ue_in"] = (ue.t_start_ns.iloc[0] - lk.t_end_ns) / 1e6
        else:
            rec["ue_in"] = (ue.t_start_ns.iloc[0] - e2e.t_start_ns) / 1e6
        rec["ue_out"] = (e2e.t_end_ns - ue.t_end_ns.iloc[-1]) / 1e6
        rec["gaps"] = gaps(es) + gaps(ue)
        rec["total_ms"] = (rec["e2e_s"] - rec["stages_s"] - airtime) * 1e3
        rec["total_pct"] = 100 * rec["total_ms"] / 1e3 / rec["e2e_s"]
        out.append(rec)
    return pd.DataFrame(out)


def summarise(hops: pd.DataFrame) -> dict:
    res = {}
    for scheme, g in hops.groupby("scheme"):
        d = {"requests": int(len(g)), "e2e_ms_median": float(g.e2e_s.median() * 1e3),
             "airtime_ms_median": float(g.airtime_s.median() * 1e3)}
        for hop in (*HOPS, "total_ms"):  # channel_processing is part of downlink
            if hop in g and g[hop].notna().any():
                d[f"{hop}_ms_median" if hop != "total_ms" else "total_ms_median"] = float(g[hop].median())
                d[f"{hop}_ms_p90" if hop != "total_ms" else "total_ms_p90"] = float(g[hop].quantile(0.9))
        d["total_pct_median"] = float(g.total_pct.median())
        res[scheme] = d
    return res


def run_campaign(spec_path: Path, out: Path, engine: str, model: Path | None = None,
                 use_broker: bool = True) -> tuple[pd.DataFrame, dict]:
    from megbed.measurements.dataset import read_dataset
    from megbed.megwire.safe_yaml import load_yaml_file
    from megbed.testbed.campaign.runner import CampaignRunner
    from megbed.testbed.campaign.spec import validate_spec

    data = load_yaml_file(spec_path)
    if model is not None:
        data["model"] = str(model)
    spec = validate_spec(data, base_dir=spec_path.parent, source=str(spec_path))
    summary = CampaignRunner(spec, out, engine=engine, progress=False, use_broker=use_broker).run()
    return read_dataset(out), summary.to_dict()


def control_round_trip(n: int = 200) -> dict:
    """Orchestrator <-> node control RPC over loopback (heartbeat round trip), for scale."""
    import zmq

    from megbed.megwire import Frame
    from megbed.testbed.nodes.rpc import RpcClient
    from megbed.testbed.nodes.server import NodeServer

    srv = NodeServer("bench", "tcp://127.0.0.1:0").start()
    ctx = zmq.Context()
    try:
        with RpcClient(srv.address, ctx, timeout_s=5) as c:
            for _ in range(20):
                c.call(Frame("heartbeat"))
            ts = []
            for _ in range(n):
                t = time.perf_counter_ns()
                c.call(Frame("heartbeat"))
                ts.append(time.perf_counter_ns() - t)
    finally:
        srv.stop()
        ctx.term()
    return {"rpc_round_trip_ms_median": float(np.median(ts) / 1e6), "rpc_round_trip_ms_p90":
            float(np.percentile(ts, 90) / 1e6)}


def _echo_server(ctx, bound: list, mode: str, ready, stop):
    """A ROUTER that answers every message: ``raw`` sends the parts back as they came (what pyzmq alone costs);
    ``megwire`` parses them into a Frame (validation, zero-copy views) and encodes a fresh answer frame (one header
    encode), as a node or the broker does per hop."""
    import zmq

    from megbed.megwire import Frame
    from megbed.megwire.sockets import recv_frame, send_frame

    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 200)
    bound.append(f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}")
    ready.set()
    while not stop.is_set():
        try:
            if mode == "raw":
                sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
            else:
                env, frame = recv_frame(sock)
                send_frame(sock, Frame(frame.kind, dict(frame.meta), frame.buffers), env)
        except zmq.Again:
            continue
        except Exception:  # noqa: BLE001 - the LinkTimeout of megwire's recv
            continue
    sock.close()


def wire_vs_raw(sizes_b=(2048, 131072), n: int = 2000) -> list[dict]:
    """Round trip DEALER -> ROUTER -> DEALER over tcp loopback, raw pyzmq next to megwire frames, same run.

    For each payload size, alternating blocks of raw and megwire round trips (so that load changes hit both): the
    raw client sends ``[b"", header bytes, payload]`` with ``copy=False``; the megwire client sends a
    :class:`megwire.Frame` with ``send_frame`` and parses the answer with ``recv_frame``.
    """
    import threading

    import zmq

    from megbed.megwire import Frame
    from megbed.megwire.sockets import recv_frame, send_frame

    rows = []
    ctx = zmq.Context()
    try:
        for size in sizes_b:
            payload = np.random.default_rng(0).standard_normal(size // 2).astype(np.float16)
            frame = Frame("handoff", meta={"request_id": "bench-000001", "step": 12, "channel_roles":
                                           {"tokens": "values"}}, buffers={"tokens": payload})
            times = {"raw": [], "megwire": []}
            for mode in ("raw", "megwire"):
                stop, ready = threading.Event(), threading.Event()
                bound: list[str] = []
                th = threading.Thread(target=_echo_server, args=(ctx, bound, mode, ready, stop), daemon=True)
                th.start()
                ready.wait(5)
                addr = bound[0]
                cli = ctx.socket(zmq.DEALER)
                cli.setsockopt(zmq.LINGER, 0)
                cli.setsockopt(zmq.RCVTIMEO, 5000)
                cli.connect(addr)
                head = b"x" * 96  # about the size of the frame's header
                for i in range(n + 200):
                    t = time.perf_counter_ns()
                    if mode == "raw":
                        cli.send_multipart([b"", head, memoryview(payload).cast("B")], copy=False)
                        cli.recv_multipart(copy=False)
                    else:
                        send_frame(cli, frame)
                        recv_frame(cli)
                    if i >= 200:
                        times[mode].append(time.perf_counter_ns() - t)
                cli.close()
                stop.set()
                th.join()
            raw_us = float(np.median(times["raw"]) / 1e3)
            meg_us = float(np.median(times["megwire"]) / 1e3)
            rows.append({"payload_b": size, "raw_round_trip_us": raw_us, "megwire_round_trip_us": meg_us,
                         "ratio": meg_us / raw_us})
    finally:
        ctx.term()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10, help="repetitions per point in part A")
    ap.add_argument("--model", type=Path, default=None, help="model for part B (default: the embedded one)")
    ap.add_argument("--skip-default", action="store_true", help="part A only")
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--hops", action="store_true",
                    help="only the per-hop overhead (direct / broker, up / down, 2 KB and 128 KB, paced and hot) next "
                         "to raw pyzmq in the same run (benchmarks/hop_bench.py)")
    ap.add_argument("--hop-requests", type=int, default=300, help="requests per cell of --hops")
    ap.add_argument("--profile", action="store_true",
                    help="only the profile: microseconds per stage of one request's path (benchmarks/hop_profile.py)")
    ap.add_argument("--wire-only", action="store_true",
                    help="only the wire layer: megwire frames vs raw pyzmq round trips at 2 KB and 128 KB")
    args = ap.parse_args(argv)
    if args.hops or args.profile:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        out: dict = {}
        if args.profile:
            from hop_profile import print_profile, profile_stages

            out["profile"] = profile_stages()
            if not args.json:
                print_profile(out["profile"])
        if args.hops:
            from hop_bench import measure_hops, print_hops

            out["hops"] = measure_hops(args.hop_requests)
            if not args.json:
                print_hops(out["hops"])
        if args.json:
            print(json.dumps(out, indent=1, default=float))
        return 0
    if args.wire_only:
        import os

        print(f"load average {os.getloadavg()[0]:.2f}; tcp loopback DEALER->ROUTER echo, median of 2000")
        print(f"{'payload':>8s} {'raw pyzmq':>10s} {'megwire':>10s} {'ratio':>6s}")
        for r in wire_vs_raw():
            print(f"{r['payload_b'] // 1024:6d}KB {r['raw_round_trip_us']:8.1f}us {r['megwire_round_trip_us']:8.1f}us "
                  f"{r['ratio']:6.2f}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.campaign.baselines import scheme_summary

    work = args.out or Path(tempfile.mkdtemp(prefix="megbed-harness-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"control": control_round_trip()}

    # Part A: the harness alone (model-free engine), same processes, broker and link as a real run.
    model_stub = work / "stub_model"
    model_stub.mkdir(exist_ok=True)
    (model_stub / "model_index.json").write_text("{}")
    spec_a = work / "harness.yaml"
    spec_a.write_text(f"""
name: harness
model: {model_stub}
prompts: ["a cat"]
seeds: [0]
image: {{height_px: 128, width_px: 128}}
schemes: [meg, ceg, ue_local]
grid: {{n_steps: [4], merge_ratio: [0.0, 0.5], distance_m: [200], tx_mode: [analog]}}
reference: {{n_steps: 4}}
repetitions: {args.requests}
warmup: 2
keep_images: none
timeouts: {{request_s: 60, heartbeat_s: 1.0, dead_after_s: 10}}
""")
    rows_a, _ = run_campaign(spec_a, work / "harness_run", "synthetic")
    report["harness_only"] = summarise(hop_table(rows_a))
    # The same without the broker: the nodes' own share (the UE talks to the ES directly, no airtime).
    rows_d, _ = run_campaign(spec_a, work / "harness_direct", "synthetic", use_broker=False)
    report["harness_direct"] = summarise(hop_table(rows_d))

    if not args.skip_default:
        model = args.model
        note = "embedded default model"
        if model is None:
            model = default_model_dir()
            if not (model / "model_index.json").is_file():
                from megbed.testing.random_weight_models import build_tiny_model

                model = build_tiny_model(work / "tiny_sd15", "sd15", sample_size=16)
                note = "embedded default model NOT installed: tiny random-weight SD-1.5-shaped model, 128 px"
        elif args.model is not None:
            note = f"model {args.model}"
        rows_b, summary_b = run_campaign(ROOT / "campaigns" / "default.yaml", work / "default_run", "ldm", model)
        report["default_campaign"] = {"model": note, "campaign": summary_b,
                                      "schemes": scheme_summary(work / "default_run"),
                                      "overhead": summarise(hop_table(rows_b))}
    report["work_dir"] = str(work)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        _print(report)
    return 0


def _print(report: dict) -> None:
    print(f"control RPC round trip (orchestrator <-> node, loopback): "
          f"median {report['control']['rpc_round_trip_ms_median']:.3f} ms, "
          f"p90 {report['control']['rpc_round_trip_ms_p90']:.3f} ms")
    sections = [("A: harness only (model-free engine), through the channel broker", report["harness_only"]),
                ("A': harness only, UE -> ES direct (no broker, no airtime)", report["harness_direct"])]
    if "default_campaign" in report:
        sections.append((f"B: default campaign ({report['default_campaign']['model']})",
                         report["default_campaign"]["overhead"]))
    for title, table in sections:
        print(f"\n{title}: overhead per hop, median ms (p90)")
        for scheme, d in table.items():
            hops = ", ".join(f"{h} {d[f'{h}_ms_median']:.3f} ({d[f'{h}_ms_p90']:.3f})" for h in HOPS
                             if f"{h}_ms_median" in d)
            print(f"  {scheme:8s} n={d['requests']:3d} e2e {d['e2e_ms_median']:.1f} ms, airtime "
                  f"{d['airtime_ms_median']:.1f} ms | {hops} | total {d['total_ms_median']:.3f} ms "
                  f"({d['total_pct_median']:.2f} % of e2e)")
    if "default_campaign" in report:
        print("\nB: latency and energy per scheme (end to end, mean)")
        sch = report["default_campaign"]["schemes"]
        for scheme, s in sch["schemes"].items():
            print(f"  {scheme:8s} n={s['n']:3d} latency {s['latency_s']:.3f} s, energy {s['energy_j']:.2f} J "
                  f"({s['energy_method']}), PSNR {s['psnr_db']:.1f} dB")
        for base, d in sch["meg_vs"].items():
            print(f"  MEG vs {base}: latency {d['latency_pct']:+.1f} %, energy {d['energy_pct']:+.1f} %")
    print(f"\nrun directories: {report['work_dir']}")


if __name__ == "__main__":
    sys.exit(main())
