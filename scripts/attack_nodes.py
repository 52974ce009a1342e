"""Attack live ES, UE and channel-broker processes with hostile frames and misbehaving peers (issue 20's harness).

Starts the three nodes as separate processes (synthetic engine, loopback, no keys) from the code under ``--code``
(default: this checkout; point it at a checkout of an older commit to measure "before"), then runs each attack and
prints one table row per (attack, node): frames sent, crashes (the process exited), hangs (a heartbeat through the
node got no answer within ``--hang-s``), the node's peak RSS (VmHWM, MB) and the log bytes it wrote. A crashed or
hung node is restarted and the attack goes on, so every class is counted.

Attacks
-------
hostile      every class of :data:`megbed.testing.node_fuzz.HOSTILE_CLASSES` (deep JSON, > 4,300-digit integers,
             ``shape: [true]``, 65 dimensions, ``[0, 2**63]``, ``[10**400]``, duplicate names, huge kind / msg_id,
             wrong types), ``--repeat`` times each
fuzz         ``--fuzz-count`` frames of the fuzzer's random / mutated / hostile mix plus structure-aware
             (hypothesis) mutations
slow_reader  4 peers send heartbeats with 200 KB ``msg_id`` values and never read, for ``--slow-s`` seconds, while a
             well-behaved peer sends a heartbeat every 0.5 s (a late answer counts as a hang); RSS before / after
log_flood    200 frames whose ``kind`` is 0.9 MB (log bytes written)

After every attack each node must serve a legitimate request (ES: a MEG request; broker: the same through the
broker; UE: a ``generate`` that goes UE -> broker -> ES and back); the ``legit`` column says whether it did.

Usage::

    python scripts/attack_nodes.py                       # this checkout
    git archive <commit> | tar -x -C /tmp/base
    python scripts/attack_nodes.py --code /tmp/base      # the same attacks on the old code
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megbed.megwire import Frame, FrameError, from_parts, to_parts  # noqa: E402
from megbed.testbed.nodes import protocol as P  # noqa: E402
from megbed.testbed.request import Request  # noqa: E402
from megbed.testing import node_fuzz as fuzz  # noqa: E402
from megbed.testing.live_nodes import (  # noqa: E402
    HOST,
    flood_without_reading,
    free_ports,
    rss_mb,
    stop_process,
    wait_listening,
)


def spec(rid: str) -> Request:
    return Request(request_id=rid, scheme="meg", prompt="a cat", seed=3, n_steps=4, es_steps=4, merge_ratio=0.5,
                   link_model="awgn", tx_mode="analog", snr_db_set=20.0, height_px=64, width_px=64,
                   point_id="attack", repetition=0)


class Node:
    """One node process (restartable)."""

    def __init__(self, name: str, args: list[str], address: str, code: Path, logdir: Path) -> None:
        self.name, self.args, self.address, self.code = name, args, address, code
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.crashes = 0
        self.peak_rss_mb = 0.0

    def start(self, wait_s: float = 120.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.code), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-c", "import sys; from megbed.testbed.cli.main import main; sys.exit(main())", *self.args]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(self.code))
        wait_listening(self.proc, self.address, self.name, self.log_path, wait_s, poll_s=0.2)
        time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_rss(self) -> None:
        if self.alive():
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.proc.pid, "VmHWM"))

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> None:
        self.note_rss()
        self.stop()
        self.start()

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


def call(ctx: zmq.Context, address: str, frame: Frame, timeout_s: float) -> Frame | None:
    """Send one frame on a fresh DEALER; the answer, or None when none came in time."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart([b"", *to_parts(frame)])
        if not sock.poll(int(timeout_s * 1000)):
            return None
        raw = sock.recv_multipart()
        try:
            return from_parts(raw[1:])
        except FrameError:
            return None
    finally:
        sock.close(0)


def responsive(ctx: zmq.Context, node: Node, hang_s: float) -> bool:
    return call(ctx, node.address, Frame(P.HEARTBEAT, meta={"msg_id": "hb"}), hang_s) is not None


def legit(ctx: zmq.Context, node: Node, timeout_s: float = 30.0) -> bool:
    rid = f"legit-{time.monotonic_ns()}"
    if node.name == "ue":
        frame = P.generate_frame(spec(rid))
        frame.meta["timeout_s"] = timeout_s
        reply = call(ctx, node.address, frame, timeout_s)
        return reply is not None and reply.kind == P.RESULT
    reply = call(ctx, node.address, P.request_frame(spec(rid), time.monotonic_ns()), timeout_s)
    return reply is not None and reply.kind == P.HANDOFF


def check(ctx: zmq.Context, node: Node, hang_s: float, row: dict) -> None:
    """After a frame: crashed? hung? (restart either way)."""
    if not node.alive():
        row["crashes"] += 1
        node.crashes += 1
        node.restart()
    elif not responsive(ctx, node, hang_s):
        # A node whose loop died may take a few seconds to exit (shutdown, interpreter teardown): that is a crash.
        try:
            node.proc.wait(5)
        except subprocess.TimeoutExpired:
            row["hangs"] += 1
        else:
            row["crashes"] += 1
            node.crashes += 1
        node.restart()


def send_raw(ctx: zmq.Context, address: str, parts: list[bytes], wait_s: float) -> bool:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(parts)
        return bool(sock.poll(int(wait_s * 1000)))
    finally:
        sock.close(0)


def new_row(attack: str, node: Node) -> dict:
    return {"attack": attack, "node": node.name, "frames": 0, "answered": 0, "crashes": 0, "hangs": 0,
            "log_bytes": -node.log_bytes(), "legit": None, "rss_before_mb": None, "rss_after_mb": None}


def finish(ctx: zmq.Context, node: Node, row: dict) -> dict:
    if not node.alive():
        row["crashes"] += 1
        node.restart()
    row["log_bytes"] += node.log_bytes()
    row["legit"] = legit(ctx, node)
    node.note_rss()
    row["peak_rss_mb"] = round(node.peak_rss_mb, 1)
    return row


def attack_hostile(ctx, node: Node, args) -> dict:
    row = new_row("hostile", node)
    kinds = ["generate"] if node.name == "ue" else ["request"]
    failed: set[str] = set()
    for _ in range(args.repeat):
        for name, parts in fuzz.hostile_messages(kinds).items():
            row["frames"] += 1
            row["answered"] += send_raw(ctx, node.address, parts, args.hang_s)
            node.note_rss()
            before = row["crashes"] + row["hangs"]
            check(ctx, node, args.hang_s, row)
            if row["crashes"] + row["hangs"] > before:
                failed.add(name)
    row["classes_failed"] = sorted(failed)
    return finish(ctx, node, row)


def attack_fuzz(ctx, node: Node, args) -> dict:
    row = new_row("fuzz", node)
    served = {"es": {"heartbeat", "hello", "clock_sync", "request", "reference", "traces"},
              "ue": {"heartbeat", "hello", "clock_sync", "generate", "cancel", "traces"},
              "broker": {"heartbeat", "hello", "clock_sync", "request", "reference", "traces"}}[node.name]
    seeds = [Frame(P.HEARTBEAT), Frame(P.HELLO),
             P.generate_frame(spec("g")) if node.name == "ue" else P.request_frame(spec("q"), 1)]

    def is_valid(frame: Frame) -> bool:
        return frame.kind in served and frame.kind in (P.HEARTBEAT, P.HELLO)

    stream = list(fuzz.messages(seeds, args.fuzz_count, seed=7, is_valid=is_valid))
    stream += fuzz.structured_messages(seeds, args.fuzz_count // 3, seed=7, is_valid=is_valid)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.address)
    for parts in stream:
        row["frames"] += 1
        sock.send_multipart(parts)
        if sock.poll(int(args.hang_s * 1000)):
            sock.recv_multipart()
            row["answered"] += 1
        elif parts and parts[0] == b"":
            check(ctx, node, args.hang_s, row)
            sock.close(0)
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(node.address)
        if row["frames"] % 100 == 0:
            node.note_rss()
    sock.close(0)
    return finish(ctx, node, row)


def attack_slow_reader(ctx, node: Node, args) -> dict:
    row = new_row("slow_reader", node)
    time.sleep(1.0)
    row["rss_before_mb"] = round(rss_mb(node.proc.pid), 1)
    stop = threading.Event()
    counts = [0]

    flood_args = (ctx, node.address, "m" * 200_000, stop, counts, 10, 4096)
    threads = [threading.Thread(target=flood_without_reading, args=flood_args, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    late = 0
    beats = 0
    worst_s = 0.0
    t_end = time.monotonic() + args.slow_s
    peak = 0.0
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        ok = call(ctx, node.address, Frame(P.HEARTBEAT, meta={"msg_id": "good"}), args.hang_s) is not None
        worst_s = max(worst_s, time.monotonic() - t0)
        beats += 1
        late += not ok
        if node.alive():
            peak = max(peak, rss_mb(node.proc.pid))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    stop.set()
    for t in threads:
        t.join(5)
    row["frames"] = counts[0]
    row["hangs"] = late
    row["heartbeats"] = beats
    row["worst_heartbeat_s"] = round(worst_s, 2)
    row["rss_peak_mb"] = round(peak, 1)
    time.sleep(3.0)
    row["rss_after_mb"] = round(rss_mb(node.proc.pid), 1) if node.alive() else None
    return finish(ctx, node, row)


def attack_log_flood(ctx, node: Node, args) -> dict:
    row = new_row("log_flood", node)
    parts = fuzz.hostile_messages(["request"])["huge_kind"]
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.address)
    for _ in range(200):
        sock.send_multipart(parts)
        row["frames"] += 1
        if sock.poll(int(args.hang_s * 1000)):
            sock.recv_multipart()
            row["answered"] += 1
    sock.close(0)
    time.sleep(0.5)
    return finish(ctx, node, row)


ATTACKS = {"hostile": attack_hostile, "fuzz": attack_fuzz, "slow_reader": attack_slow_reader,
           "log_flood": attack_log_flood}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose nodes are attacked (default: this one)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/attack_nodes"), help="logs folder")
    ap.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--nodes", nargs="*", default=["es", "broker", "ue"], choices=["es", "broker", "ue"])
    ap.add_argument("--repeat", type=int, default=2, help="hostile: frames per class")
    ap.add_argument("--fuzz-count", type=int, default=1000)
    ap.add_argument("--slow-s", type=float, default=10.0)
    ap.add_argument("--hang-s", type=float, default=2.0)
    args = ap.parse_args(argv)
    # A timeout (SIGTERM) must still stop the node processes (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    args.out.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(("es", "front", "pub", "ue"), free_ports(4), strict=True))
    es_addr, front, ue_addr = (f"tcp://{HOST}:{ports[k]}" for k in ("es", "front", "ue"))
    common = ["--engine", "synthetic", "--probe", "none", "--idle-s", "0"]
    help_text = subprocess.run([sys.executable, "-c", "import sys; from megbed.testbed.cli.main import main; "
                                "sys.exit(main())", "node", "channel", "--help"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(args.code)}, cwd=str(args.code)).stdout
    warm = ["--no-warm-up"] if "--no-warm-up" in help_text else []
    nodes = {
        "es": Node("es", ["node", "es", "--bind", es_addr, *common], es_addr, args.code, args.out),
        "broker": Node("broker", ["node", "channel", "--listen", front, "--es", es_addr, "--pub",
                                  f"tcp://{HOST}:{ports['pub']}", *warm], front, args.code, args.out),
        "ue": Node("ue", ["node", "ue", "--bind", ue_addr, "--es", front, *common], ue_addr, args.code, args.out),
    }
    for node in nodes.values():
        node.start()
    ctx = zmq.Context()
    rows = []
    try:
        for attack in args.attacks:
            for name in args.nodes:
                if attack == "slow_reader" and name == "broker":
                    continue  # the broker forwards heartbeats to the ES: the same attack on the ES
                row = ATTACKS[attack](ctx, nodes[name], args)
                rows.append(row)
                print(row, flush=True)
    finally:
        for node in nodes.values():
            node.stop()
        ctx.term()
    print(f"\ncode: {args.code}   load: {os.getloadavg()}")
    print(f"{'attack':12} {'node':7} {'frames':>7} {'answered':>8} {'crashes':>7} {'hangs':>5} {'peak RSS MB':>11} "
          f"{'log MB':>7} {'legit':>5}  notes")
    for r in rows:
        notes = ""
        if r["attack"] == "slow_reader":
            notes = (f"RSS {r['rss_before_mb']} -> peak {r['rss_peak_mb']} -> after {r['rss_after_mb']} MB; "
                     f"{r['hangs']}/{r['heartbeats']} heartbeats late (worst {r['worst_heartbeat_s']} s)")
        elif r.get("classes_failed"):
            notes = "failed on: " + ", ".join(r["classes_failed"])
        print(f"{r['attack']:12} {r['node']:7} {r['frames']:>7} {r['answered']:>8} {r['crashes']:>7} {r['hangs']:>5} "
              f"{r['peak_rss_mb']:>11} {r['log_bytes'] / 1e6:>7.1f} {str(r['legit']):>5}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
