"""Microseconds per stage of one request's path through the hops, each stage timed alone in this process.

The stages are the functions the nodes and the broker run per request (the socket calls and thread hand-offs
between them are what ``hop_bench`` measures end to end). ``Request`` (de)serialisation is listed on its own
lines: it is the request type's cost, not the wire's.

    python benchmarks/harness_overhead.py --profile
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from hop_bench import SIZES_B, bench_link, bench_request, payload


def _time_us(fn: Callable[[], Any], n: int) -> float:
    for _ in range(min(20, n)):
        fn()
    ts = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        fn()
        ts[i] = time.perf_counter_ns() - t
    return float(np.median(ts) / 1e3)


def _stages(size_b: int) -> list[tuple[str, str, Callable[[], Any]]]:
    import zmq

    from megbed.channel_emu.broker import Broker, _link_of
    from megbed.measurements.memory import MemoryMeter
    from megbed.megwire import Frame, from_parts, packed_size, split_envelope, to_parts
    from megbed.testbed.nodes import protocol as P
    from megbed.testbed.nodes.records import StageRecorder
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine

    spec = bench_request(1)
    up = payload(size_b)

    def build_request() -> Frame:
        f = P.request_frame(spec, time.monotonic_ns())
        f.meta["msg_id"] = "5f3a.0.17"
        f.buffers["payload"] = up
        return f

    req = build_request()
    req_parts = [b"\x00\x80\x00\x41\xa7", b"", *[bytes(p) for p in to_parts(req)]]
    req_frames = [zmq.Frame(p) for p in req_parts]
    bounds = SyntheticEngine().default_bounds()
    memory = MemoryMeter()

    def stage_window() -> list:
        rec = StageRecorder("es", None, memory=memory)
        with rec.stage("serialize"):
            pass
        return rec.records

    def memory_window() -> None:
        with memory.window():
            pass

    def recorded() -> StageRecorder:
        rec = StageRecorder("es", None, memory=memory)
        with rec.stage("serialize"):
            pass
        return rec

    out = Frame("handoff", meta={"request_id": spec.request_id, "channel_roles": {"tokens": "values"},
                                 "shape": [size_b // 2]}, buffers={"tokens": payload(size_b)})
    records = recorded().finish()

    def answer() -> Frame:
        o = Frame(out.kind, dict(out.meta), out.buffers)
        o.meta.update({"request_id": spec.request_id, "es_records": records, "link": spec.link_meta(),
                       "payload_bytes": size_b + 200, "t_recv_ns": time.monotonic_ns(),
                       "t_reply_ns": time.monotonic_ns(), "msg_id": "5f3a.0.17"})
        return o

    ans = answer()
    ans_parts = [bytes(p) for p in to_parts(ans)]
    ans_frames = [zmq.Frame(p) for p in [b"\x00\x80\x00\x41\xa7", b"", *ans_parts]]
    via_broker = [zmq.Frame(p) for p in [b"\x00\x80\x00\x41\xb1", b"\x00\x80\x00\x41\xa7", b"", *ans_parts]]
    broker = Broker(bench_link(), seed=0, warm_up=False)
    emulator = broker.emulator
    link = _link_of(from_parts(ans_parts))
    decoded = from_parts(ans_parts)
    delivered, drec = emulator.deliver(decoded, link=link)

    def broker_downlink_parse() -> Any:
        env, frame, parts, err = broker._parse(via_broker)
        return _link_of(frame)

    def schedule_encode() -> Any:
        meta = {**drec.to_dict(), "request_id": spec.request_id, "direction": "downlink", "t_done_ns": 1,
                "t_release_ns": 2, "queue_s": 0.0}
        return to_parts(delivered), to_parts(Frame("delivery", meta=meta))

    ue_parts = [bytes(p) for p in to_parts(from_parts(to_parts(delivered)))]
    try:  # the broker's way since issue 21's hop cuts (absent from older trees, whose line is then missing)
        from megbed.megwire.frames import parts_with_meta
    except ImportError:
        parts_with_meta = None
    received = from_parts(ans_parts)

    def schedule_splice() -> Any:
        meta = {**delivered.meta["delivery"], "request_id": spec.request_id, "direction": "downlink", "t_done_ns": 1,
                "t_release_ns": 2, "queue_s": 0.0}
        parts = parts_with_meta(ans_parts[0], received, {"delivery": delivered.meta["delivery"]}, delivered.buffers)
        assert parts is not None
        return parts, to_parts(Frame("delivery", meta=meta))

    try:  # the ES's and the broker's way since issue 21's third cut (absent from older trees: lines missing)
        from megbed.megwire.frames import GrowingFrame
    except ImportError:
        GrowingFrame = None

    def answer_once() -> Any:
        o = GrowingFrame(Frame(out.kind, dict(out.meta), out.buffers))
        o.add({"request_id": spec.request_id, "es_records": records, "link": spec.link_meta(),
               "payload_bytes": o.packed_size, "t_recv_ns": time.monotonic_ns(), "t_reply_ns": time.monotonic_ns()})
        o.add({"msg_id": "5f3a.0.17"})
        return o.to_parts()

    def schedule_record_once() -> Any:
        record = GrowingFrame(Frame("delivery", meta=dict(delivered.meta["delivery"])))
        parts = parts_with_meta(ans_parts[0], received, {"delivery": delivered.meta["delivery"]}, delivered.buffers,
                                added_json=b'{"delivery":' + record.meta_json + b"}")
        assert parts is not None
        record.add({"request_id": spec.request_id, "direction": "downlink", "t_done_ns": 1, "t_release_ns": 2,
                    "queue_s": 0.0})
        return parts, record.to_parts()

    stages = [
        ("ue send", "Request.to_meta", spec.to_meta),
        ("ue send", "request_frame (incl. to_meta)", build_request),
        ("ue send", "to_parts(request) (header encode)", lambda: to_parts(req)),
        ("es in", "split_envelope + from_parts(request)", lambda: from_parts(split_envelope(req_frames)[1])),
        ("es in", "parse_request_meta (Request.from_meta)",
         lambda: P.parse_request_meta(from_parts(split_envelope(req_frames)[1]))),
        ("es in", "bounds.check", lambda: bounds.check(spec, 128)),
        ("es stage", "StageRecorder + stage window (memory, clock)", stage_window),
        ("es stage", "memory window alone", memory_window),
        ("es out", "records finish", lambda: recorded().finish()),
        ("es out", "packed_size(answer)", lambda: packed_size(out)),
        ("es out", "answer meta + to_parts(answer)", lambda: to_parts(answer())),
        *([("es out", "answer encoded once (GrowingFrame: size, fields, parts)", answer_once)]
          if GrowingFrame is not None else []),
        ("ue in", "split_envelope + from_parts(answer)", lambda: from_parts(split_envelope(ans_frames)[1])),
        ("ue in", "check_records", lambda: P.check_records(records, "es_records", spec.request_id)),
        ("broker up", "parse + link of request", lambda: _link_of(broker._parse(
            [zmq.Frame(b"\x00\x80\x00\x41\xb1"), *req_frames[1:]])[1])),
        ("broker down", "parse + link of answer", broker_downlink_parse),
        ("broker down", "channel processing (emulator.deliver; reported apart)",
         lambda: emulator.deliver(decoded, link=link)),
        ("broker down", "re-encode answer + delivery record", schedule_encode),
        *([("broker down", "splice delivery into received header + delivery record", schedule_splice)]
          if parts_with_meta is not None else []),
        *([("broker down", "splice + delivery record, the record's JSON made once", schedule_record_once)]
          if GrowingFrame is not None else []),
        ("ue in", "from_parts(delivered answer)", lambda: from_parts(ue_parts)),
    ]
    return stages


def profile_stages(n: int = 300, sizes_b: tuple[int, ...] = SIZES_B) -> dict[str, Any]:
    """Median microseconds per stage call at each payload size, with the load average."""
    load0 = os.getloadavg()[0]
    table: dict[str, dict[str, Any]] = {}
    for size_b in sizes_b:
        for where, name, fn in _stages(size_b):
            row = table.setdefault(name, {"where": where})
            row[f"{size_b // 1024}KB_us"] = _time_us(fn, n)
    return {"stages": table, "load": [load0, os.getloadavg()[0]], "calls": n}


def print_profile(res: dict[str, Any]) -> None:
    cols = [k for k in next(iter(res["stages"].values())) if k.endswith("_us")]
    print(f"profile: median us per call ({res['calls']} calls), load {res['load'][0]:.2f} -> {res['load'][1]:.2f}")
    print(f"{'where':>12s} {'stage':60s} " + " ".join(f"{c[:-3]:>9s}" for c in cols))
    for name, row in res["stages"].items():
        print(f"{row['where']:>12s} {name:60s} " + " ".join(f"{row[c]:9.1f}" for c in cols))
