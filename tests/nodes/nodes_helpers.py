"""Helpers shared by the node tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zmq

from megbed.megwire import Frame, from_parts, to_parts
from megbed.testbed.nodes import protocol as P
from megbed.testbed.request import Request
from megbed.testing.live_nodes import HOST, free_ports, stop_process, wait_listening


def make_spec(scheme: str = "meg", rid: str = "r1", **kw) -> Request:
    base = dict(request_id=rid, scheme=scheme, prompt="a cat", seed=3, n_steps=4,
                es_steps=0 if scheme == "ue_local" else 4, merge_ratio=0.5 if scheme == "meg" else 0.0,
                link_model="awgn", tx_mode="analog", distance_m=200.0,  # a ue_local request drops it
                height_px=64, width_px=64, point_id=f"p-{scheme}", repetition=0)
    base.update(kw)
    return Request(**base)


def es_ue_pair(es_engine=None):
    """An ES serving ``es_engine`` (default: the synthetic engine) and a synthetic UE talking to it directly, both on
    ephemeral loopback ports; yields ``(es, ue)`` and stops both (a generator for module fixtures)."""
    from megbed.testbed.nodes.es import EsNode
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine
    from megbed.testbed.nodes.ue import UeNode

    es = EsNode(es_engine or SyntheticEngine(), bind="tcp://127.0.0.1:0").start()
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address, request_timeout_s=10).start()
    yield es, ue
    ue.stop()
    es.stop()


# --- live node processes ----------------------------------------------------------------------------------------------


_MAIN = "import sys; from megbed.testbed.cli.main import main; sys.exit(main())"


class LiveNode:
    """A node running as its own process (``megbed node ...``), its output in ``log_path``."""

    def __init__(self, name: str, args: list[str], address: str, log_dir: Path) -> None:
        self.name, self.args, self.address = name, args, address
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> LiveNode:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", _MAIN, *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        return self

    def wait_listening(self, timeout_s: float = 120.0) -> None:
        if not wait_listening(self.proc, self.address, self.name, self.log_path, timeout_s):
            raise TimeoutError(f"{self.name} not listening after {timeout_s} s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None:
            self._log.close()


def start_live_nodes(log_dir: Path) -> dict[str, LiveNode]:
    """ES, channel broker (no warm-up) and UE as three processes on loopback, synthetic engine, UE -> broker -> ES."""
    ports = dict(zip(("es", "front", "pub", "ue"), free_ports(4), strict=True))
    es, front, pub, ue = (f"tcp://{HOST}:{ports[k]}" for k in ("es", "front", "pub", "ue"))
    common = ["--engine", "synthetic", "--probe", "none", "--idle-s", "0"]
    nodes = {
        "es": LiveNode("es", ["node", "es", "--bind", es, *common], es, log_dir),
        "broker": LiveNode("broker", ["node", "channel", "--listen", front, "--es", es, "--pub", pub, "--no-warm-up",
                                      "--seed", "1"], front, log_dir),
        "ue": LiveNode("ue", ["node", "ue", "--bind", ue, "--es", front, "--request-timeout-s", "30", *common], ue,
                       log_dir),
    }
    nodes["broker"].pub = pub  # type: ignore[attr-defined]
    for node in nodes.values():
        node.spawn()
    try:
        for node in nodes.values():
            node.wait_listening()
    except Exception:
        for node in nodes.values():
            node.stop()
        raise
    return nodes


# --- talking to a node ---------------------------------------------------------------------------------------------


def ask(ctx: zmq.Context, address: str, parts: list[bytes], timeout_s: float = 10.0) -> Frame | None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(parts)
        if not sock.poll(int(timeout_s * 1000)):
            return None
        raw = sock.recv_multipart()
        return from_parts(raw[1:])
    finally:
        sock.close(0)


def ask_frame(ctx, address, frame: Frame, timeout_s: float = 10.0) -> Frame | None:
    return ask(ctx, address, [b"", *to_parts(frame)], timeout_s)


def legit_request(ctx, node) -> Frame:
    """The request each node exists for: ES and broker a MEG request, the UE a generate (UE -> broker -> ES)."""
    rid = f"legit-{time.monotonic_ns()}"
    if node.name == "ue":
        reply = ask_frame(ctx, node.address, P.generate_frame(make_spec(rid=rid, distance_m=None, snr_db_set=20.0)),
                           30)
        assert reply is not None and reply.kind == P.RESULT, reply
    else:
        reply = ask_frame(ctx, node.address, P.request_frame(make_spec(rid=rid), time.monotonic_ns()), 30)
        assert reply is not None and reply.kind == P.HANDOFF, reply
    return reply
