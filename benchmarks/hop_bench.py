"""Per-hop overhead of the testbed's wire path, next to raw pyzmq doing the same exchange, in the same run.

Four hops, each measured one way on the shared ``CLOCK_MONOTONIC`` (every process of the machine reads the same
clock, so one-way stamps across processes are exact):

* **direct up**: the UE starts a request (before its frame is built) -> the ES's first stage starts (after its
  socket loop decoded the frame, validated the request, handed it to the worker and opened the stage's windows);
* **direct down**: the ES's last stage ends -> the UE holds the decoded answer (records closed and attached, frame
  encoded, worker -> loop hand-off, socket, decode, ``msg_id`` matching, record checks);
* **broker up** / **broker down**: the same through the channel broker; on the way down the emulator's own
  processing of the frame (``processing_s`` of its delivery record) and the emulated airtime are subtracted and
  the processing is reported separately.

The real code runs in separate processes as in a campaign: an :class:`~megbed.testbed.nodes.es.EsNode` (its engine builds
a handoff of the payload size, nothing else), a :class:`~megbed.channel_emu.broker.Broker` on an analog AWGN link, and in
the measuring process the UE's data path (:class:`~megbed.testbed.nodes.rpc.RpcClient`, ``protocol.request_frame``,
``check_records``). The request carries a payload buffer of the same size as the answer, so both directions move
the same bytes.

"Raw" is pyzmq alone doing the same pattern, in the same process layout, at the same payload and header sizes:
a DEALER sends ``[b"", head, payload]`` (``copy=False``), a ROUTER in another process stamps its arrival and
answers ``[id, b"", head, payload]``; through the broker, a Python ROUTER/DEALER forwarding loop in a third process
sits between them. Raw and testbed requests alternate in blocks so that load changes hit both alike.

"Raw+threads" is plain pyzmq again, in the testbed's thread layout: the server's socket loop hands each request to a
worker thread through a queue and forwards its answer from an inproc PULL (as a node server does); the proxy hands
each answer to a second thread and takes it back on a socketpair wake-up (as the broker's emulator thread does). The
testbed's ratio to it is what its code costs; the rest of its ratio to raw is those thread hand-offs.

Pacing: ``paced`` leaves a gap between requests (as a campaign does: the processes sleep between requests, and
their wake-up is part of each hop); ``hot`` sends back to back.

    python benchmarks/harness_overhead.py --hops [--hop-requests 300] [--json]
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIZES_B = (2048, 131072)
HOPS = ("direct_up", "direct_down", "broker_up", "broker_down")
PACED_GAP_S = 0.01
# Where a testbed hop's time goes, on the ES's stamps: the ES loop's receipt and the answer's completion.
SPLIT = ("up_to_es_loop_us", "es_loop_to_stage_us", "stage_to_answer_us", "answer_to_ue_us")
_STAMPS = struct.Struct("<qqq")  # raw answer head: t_recv_ns, t_send_ns, answer head length


def payload(size_b: int) -> np.ndarray:
    """``size_b`` bytes of float16 latent-like values (seeded)."""
    return np.random.default_rng(0).standard_normal(size_b // 2).astype(np.float16)


def bench_link() -> dict[str, Any]:
    """An analog AWGN link at a fixed SNR and a bandwidth wide enough that airtime is microseconds (it is subtracted
    anyway; a narrow one would only make each request wait)."""
    return {"mode": "analog", "model": "awgn", "snr_db": 30.0, "bandwidth_hz": 1e10}


def bench_request(i: int) -> Any:
    from megbed.testbed.request import Request

    return Request(request_id=f"hop-{i:07d}", scheme="meg", prompt="a photo of a cat", seed=i, n_steps=4,
                   es_steps=4, height_px=128, width_px=128, point_id="hops",
                   link_model="awgn", tx_mode="analog", snr_db_set=30.0)


# --- the processes ----------------------------------------------------------------------------------------------------


def _es_process(size_b: int, conn: Any) -> None:
    from megbed.megwire import Frame
    from megbed.testbed.nodes.es import EsNode
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine

    class HandoffEngine(SyntheticEngine):
        """The ES's part reduced to building a handoff of ``size_b`` bytes in one recorded stage."""

        def es(self, req: Any, rec: Any) -> Frame:
            with rec.stage("serialize"):
                return Frame("handoff", meta={"request_id": req.request_id, "channel_roles": {"tokens": "values"},
                                              "shape": [int(size_b // 2)]},
                             buffers={"tokens": data})

    data = payload(size_b)
    node = EsNode(HandoffEngine(), bind="tcp://127.0.0.1:0").start()
    conn.send(node.address)
    conn.recv()  # stop
    node.stop()


def _broker_process(es_address: str, conn: Any) -> None:
    from megbed.channel_emu.broker import Broker, BrokerAddresses

    broker = Broker(bench_link(), seed=0, addresses=BrokerAddresses(
        listen="tcp://127.0.0.1:0", es=es_address, pub="tcp://127.0.0.1:0")).start()
    conn.send(broker.listen_address)
    conn.recv()
    broker.stop()


def _answer_head(parts: list, heads: dict[int, bytearray], t_recv: int) -> tuple[int, bytes]:
    """Where the envelope ends (one routing id direct, two through a proxy) and the stamped answer head."""
    d = next(i for i, p in enumerate(parts) if not len(p.buffer))
    want = _STAMPS.unpack_from(parts[d + 1].buffer)[2]
    head = heads.get(want)
    if head is None:
        head = heads[want] = bytearray(max(want, _STAMPS.size))
    _STAMPS.pack_into(head, 0, t_recv, time.monotonic_ns(), want)
    return d, bytes(head)


def _forward(src: Any, dst: Any) -> Callable[[], None]:
    """An action for :func:`_serve_until_stopped`: send the message waiting on ``src`` on through ``dst`` unchanged."""
    return lambda: dst.send_multipart(src.recv_multipart(copy=False), copy=False)


def _serve_until_stopped(conn: Any, poller: Any, actions: Sequence[tuple[Any, Callable[[], None]]]) -> None:
    """The socket loop of both raw processes: run the action of each readable socket until the parent says stop.

    Parameters
    ----------
    conn : multiprocessing Connection
        Anything the parent writes to it stops the loop.
    poller : zmq.Poller
        Polls every socket (or file descriptor) named in ``actions``.
    actions : sequence of (socket or file descriptor, function)
        The function reads what waits on its socket and deals with it; served in this order each poll.
    """
    while not conn.poll(0):
        events = dict(poller.poll(100))
        for source, act in actions:
            if source in events:
                act()


def _raw_server_process(threaded: bool, conn: Any) -> None:
    """A ROUTER that stamps each request and answers it. ``threaded``: the node's thread layout in plain pyzmq --
    the socket loop queues each request to a worker thread, which stamps it (as the first stage would), answers
    through an inproc PUSH that the loop forwards (the hand-offs a node server makes, none of its code)."""
    import queue
    import threading

    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    heads: dict[int, bytearray] = {}
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    jobs: queue.Queue = queue.Queue()
    if threaded:
        results = ctx.socket(zmq.PULL)
        results.bind(f"inproc://raw-{os.getpid()}")
        poller.register(results, zmq.POLLIN)

        def work() -> None:
            push = ctx.socket(zmq.PUSH)
            push.connect(f"inproc://raw-{os.getpid()}")
            while (parts := jobs.get()) is not None:
                d, head = _answer_head(parts, heads, time.monotonic_ns())
                push.send_multipart([*parts[:d + 1], head, parts[d + 2]], copy=False)
            push.close(0)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()

    def answer() -> None:
        parts = sock.recv_multipart(copy=False)
        d, head = _answer_head(parts, heads, time.monotonic_ns())
        sock.send_multipart([*parts[:d + 1], head, parts[d + 2]], copy=False)

    def queue_request() -> None:
        jobs.put(sock.recv_multipart(copy=False))

    conn.send(f"tcp://127.0.0.1:{port}")
    if threaded:
        _serve_until_stopped(conn, poller, [(results, _forward(results, sock)), (sock, queue_request)])
    else:
        _serve_until_stopped(conn, poller, [(sock, answer)])
    if threaded:
        jobs.put(None)
        worker.join(5)
        results.close(0)
    sock.close(0)
    ctx.term()


def _raw_proxy_process(server: str, threaded: bool, conn: Any) -> None:
    """A ROUTER/DEALER forwarding loop. ``threaded``: answers take the broker's thread layout (socket thread ->
    worker thread -> socketpair wake-up -> socket thread), with no work in between."""
    import queue
    import socket
    import threading

    import zmq

    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (front, back):
        s.setsockopt(zmq.LINGER, 0)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    back.connect(server)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    jobs: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    poller.register(wake_r, zmq.POLLIN)

    def work() -> None:
        while (parts := jobs.get()) is not None:
            done.put(parts)
            wake_w.send(b"\0")

    worker = threading.Thread(target=work, daemon=True)
    worker.start()

    def answer_from_worker() -> None:
        with contextlib.suppress(BlockingIOError):
            wake_r.recv(4096)
        while not done.empty():
            front.send_multipart(done.get_nowait(), copy=False)

    def queue_answer() -> None:
        jobs.put(back.recv_multipart(copy=False))

    conn.send(f"tcp://127.0.0.1:{port}")
    _serve_until_stopped(conn, poller, [(front, _forward(front, back)),
                                        (back, queue_answer if threaded else _forward(back, front)),
                                        (wake_r.fileno(), answer_from_worker)])
    jobs.put(None)
    worker.join(5)
    for s in (front, back):
        s.close(0)
    wake_r.close()
    wake_w.close()
    ctx.term()


@dataclass
class _Proc:
    proc: Any
    conn: Any
    address: str


def _spawn(target: Any, *args: Any) -> _Proc:
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    if not ours.poll(120):
        proc.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return _Proc(proc, ours, ours.recv())


def _stop(p: _Proc) -> None:
    try:
        p.conn.send("stop")
    except OSError:
        pass
    p.proc.join(10)
    if p.proc.is_alive():
        p.proc.kill()


# --- the clients ------------------------------------------------------------------------------------------------------


class _TestbedClient:
    """The UE's data path (what ``UeNode._ask_es`` runs per request), one request at a time."""

    def __init__(self, address: str, ctx: Any, size_b: int) -> None:
        from megbed.testbed.nodes.rpc import RpcClient

        self.rpc = RpcClient(address, ctx, timeout_s=10.0, name="hops")
        self.up = payload(size_b)
        self.i = 0

    def one(self) -> dict[str, float]:
        from megbed.testbed.nodes import protocol as P

        self.i += 1
        spec = bench_request(self.i)
        t0 = time.monotonic_ns()
        frame = P.request_frame(spec, t0)
        frame.buffers["payload"] = self.up
        reply = self.rpc.wait(self.rpc.send(frame))
        records = P.check_records(reply.meta.pop("es_records", []), "es_records", spec.request_id)
        t3 = time.monotonic_ns()
        delivery = reply.meta.get("delivery") or {}
        airtime_ns = float(delivery.get("airtime_s", 0.0)) * 1e9
        processing_ns = float(delivery.get("processing_s", 0.0)) * 1e9
        t_in, t_out = reply.meta["t_recv_ns"], reply.meta["t_reply_ns"]  # ES loop receipt, answer ready (worker)
        return {"up_us": (records[0]["t_start_ns"] - t0) / 1e3,
                "down_us": (t3 - records[-1]["t_end_ns"] - airtime_ns - processing_ns) / 1e3,
                "up_to_es_loop_us": (t_in - t0) / 1e3, "es_loop_to_stage_us": (records[0]["t_start_ns"] - t_in) / 1e3,
                "stage_to_answer_us": (t_out - records[-1]["t_end_ns"]) / 1e3,
                "answer_to_ue_us": (t3 - t_out - airtime_ns - processing_ns) / 1e3,
                "channel_us": processing_ns / 1e3, "airtime_us": airtime_ns / 1e3}

    def close(self) -> None:
        self.rpc.close()


class _RawClient:
    def __init__(self, address: str, ctx: Any, size_b: int, head_up_b: int, head_down_b: int) -> None:
        import zmq

        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10000)
        self.sock.connect(address)
        self.up = memoryview(payload(size_b)).cast("B")
        self.head = bytearray(max(head_up_b, _STAMPS.size))
        self.head_down_b = head_down_b

    def one(self) -> dict[str, float]:
        t0 = time.monotonic_ns()
        _STAMPS.pack_into(self.head, 0, t0, 0, self.head_down_b)
        self.sock.send_multipart([b"", self.head, self.up], copy=False)
        parts = self.sock.recv_multipart(copy=False)
        t3 = time.monotonic_ns()
        t1, t2, _ = _STAMPS.unpack_from(parts[1].buffer)
        return {"up_us": (t1 - t0) / 1e3, "down_us": (t3 - t2) / 1e3, "channel_us": 0.0, "airtime_us": 0.0}

    def close(self) -> None:
        self.sock.close(0)


def _header_sizes(size_b: int) -> tuple[int, int]:
    """Header bytes of the testbed's request and answer at this payload (the raw exchange sends the same)."""
    from megbed.megwire import Frame, to_parts
    from megbed.testbed.nodes import protocol as P

    spec = bench_request(0)
    req = P.request_frame(spec, time.monotonic_ns())
    req.meta["msg_id"] = "1234.0.1"
    req.buffers["payload"] = payload(size_b)
    record = {"node": "es", "stage": "serialize", "t_start_ns": time.monotonic_ns(), "t_end_ns": time.monotonic_ns(),
              "latency_s": 1e-5, "energy_mj_total": None, "energy_net_mj_total": None, "energy_method": "none",
              "energy_valid": False, "energy_invalid_reason": "no power probe on this node", "mem_peak_mb": 300.0,
              "mem_method": "vmhwm_reset", "gpu_mem_peak_mb": None, "gpu_mem_method": "none"}
    answer = Frame("handoff", meta={"request_id": spec.request_id, "channel_roles": {"tokens": "values"},
                                    "shape": [size_b // 2], "es_records": [record], "link": spec.link_meta(),
                                    "payload_bytes": size_b + 200, "t_recv_ns": time.monotonic_ns(),
                                    "t_reply_ns": time.monotonic_ns(), "msg_id": "1234.0.1"},
                   buffers={"tokens": payload(size_b)})
    return len(to_parts(req)[0]), len(to_parts(answer)[0])


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"median_us": float(np.median(a)), "p90_us": float(np.percentile(a, 90))}


def measure_hops(n: int = 300, sizes_b: tuple[int, ...] = SIZES_B, gap_s: float = PACED_GAP_S,
                 block: int = 25, warmup: int = 30) -> dict[str, Any]:
    """Run every hop at every size, paced and hot, testbed and raw alternating in blocks of ``block`` requests.

    Returns
    -------
    dict
        ``rows``: one per (size, pacing, hop) with ``testbed`` / ``raw`` medians and p90 (us) and ``ratio``
        (testbed median / raw median); ``channel_us``: the emulator's processing per broker delivery (median);
        ``load``: the 1-minute load average before and after.
    """
    import zmq

    load0 = os.getloadavg()[0]
    rows = []
    split: list[dict[str, Any]] = []
    channel: dict[int, float] = {}
    for size_b in sizes_b:
        head_up, head_down = _header_sizes(size_b)
        es = _spawn(_es_process, size_b)
        broker = _spawn(_broker_process, es.address)
        raw = _spawn(_raw_server_process, False)
        proxy = _spawn(_raw_proxy_process, raw.address, False)
        raw_t = _spawn(_raw_server_process, True)
        proxy_t = _spawn(_raw_proxy_process, raw_t.address, True)
        ctx = zmq.Context()
        clients: dict[tuple[str, str], Any] = {}
        try:
            clients = {("direct", "testbed"): _TestbedClient(es.address, ctx, size_b),
                       ("broker", "testbed"): _TestbedClient(broker.address, ctx, size_b),
                       ("direct", "raw"): _RawClient(raw.address, ctx, size_b, head_up, head_down),
                       ("broker", "raw"): _RawClient(proxy.address, ctx, size_b, head_up, head_down),
                       ("direct", "raw_threads"): _RawClient(raw_t.address, ctx, size_b, head_up, head_down),
                       ("broker", "raw_threads"): _RawClient(proxy_t.address, ctx, size_b, head_up, head_down)}
            for pacing, gap in (("paced", gap_s), ("hot", 0.0)):
                got: dict[tuple[str, str], list[dict[str, float]]] = {k: [] for k in clients}
                for cli in clients.values():
                    for _ in range(warmup):
                        cli.one()
                done = 0
                while done < n:
                    for key, cli in clients.items():
                        for _ in range(block):
                            if gap:
                                time.sleep(gap)
                            got[key].append(cli.one())
                    done += block
                for path in ("direct", "broker"):
                    for way in ("up", "down"):
                        t = _summary([r[f"{way}_us"] for r in got[(path, "testbed")]])
                        r = _summary([r[f"{way}_us"] for r in got[(path, "raw")]])
                        rt = _summary([r[f"{way}_us"] for r in got[(path, "raw_threads")]])
                        rows.append({"payload_b": size_b, "pacing": pacing, "hop": f"{path}_{way}",
                                     "testbed_median_us": t["median_us"], "testbed_p90_us": t["p90_us"],
                                     "raw_median_us": r["median_us"], "raw_p90_us": r["p90_us"],
                                     "ratio": t["median_us"] / r["median_us"],
                                     "raw_threads_median_us": rt["median_us"], "raw_threads_p90_us": rt["p90_us"],
                                     "ratio_same_threads": t["median_us"] / rt["median_us"]})
                channel[size_b] = float(np.median([r["channel_us"] for r in got[("broker", "testbed")]]))
                for path in ("direct", "broker"):
                    split.append({"payload_b": size_b, "pacing": pacing, "path": path, **{
                        part: float(np.median([r[part] for r in got[(path, "testbed")]])) for part in SPLIT}})
        finally:
            for cli in clients.values():
                cli.close()
            ctx.term()
            for p in (proxy_t, raw_t, proxy, raw, broker, es):
                _stop(p)
    return {"rows": rows, "split": split, "channel_us": channel, "load": [load0, os.getloadavg()[0]], "requests": n,
            "paced_gap_s": gap_s, "cpus": os.cpu_count()}


def print_hops(res: dict[str, Any]) -> None:
    print(f"per-hop overhead, one way (us, median of {res['requests']} per cell; p90 in brackets); raw = pyzmq "
          f"alone, same pattern, sizes, pacing and processes; load {res['load'][0]:.2f} -> {res['load'][1]:.2f} on "
          f"{res['cpus']} cpus; paced = {res['paced_gap_s'] * 1e3:.0f} ms between requests")
    print("raw+threads = pyzmq in the testbed's thread layout (node: loop -> worker -> loop; broker: socket -> "
          "emulator thread -> socket), none of its code: the ratio to it is what the code costs, the rest is hand-offs")
    print(f"{'payload':>8s} {'pacing':>6s} {'hop':>12s} {'testbed':>17s} {'raw pyzmq':>17s} {'ratio':>6s} "
          f"{'raw+threads':>17s} {'ratio':>6s}")
    for r in res["rows"]:
        print(f"{r['payload_b'] // 1024:6d}KB {r['pacing']:>6s} {r['hop']:>12s} "
              f"{r['testbed_median_us']:7.1f} [{r['testbed_p90_us']:7.1f}] "
              f"{r['raw_median_us']:7.1f} [{r['raw_p90_us']:7.1f}] {r['ratio']:6.2f} "
              f"{r['raw_threads_median_us']:7.1f} [{r['raw_threads_p90_us']:7.1f}] {r['ratio_same_threads']:6.2f}")
    print("testbed hops split on the ES's stamps (us, median): UE -> ES loop | ES loop -> first stage (worker hand-off, "
          "request checks, windows) || last stage -> answer ready (records, encode size) | answer -> UE")
    for r in res.get("split", []):
        print(f"{r['payload_b'] // 1024:6d}KB {r['pacing']:>6s} {r['path']:>7s} " + " ".join(
            f"{r[k]:8.1f}" for k in SPLIT))
    for size_b, us in res["channel_us"].items():
        print(f"channel processing (emulator, reported apart, not in broker_down): {int(size_b) // 1024} KB {us:.1f} us")
