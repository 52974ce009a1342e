"""The project's fuzzer against live ES, UE and channel-broker processes: random / mutated / hostile frames and
structure-aware (hypothesis) mutations of valid frames. Every message gets an answer, no process dies, and each node
serves a legitimate request afterwards. 1,000 frames per node in the default run, 10,000 in ``make test-slow``."""

from __future__ import annotations

import time

import pytest
import zmq
from nodes_helpers import legit_request, make_spec

from megbed.megwire import Frame, from_parts
from megbed.testbed.nodes import protocol as P
from megbed.testing import node_fuzz as fuzz

NODES = ("es", "broker", "ue")


def _seeds(name: str) -> list[Frame]:
    link = {"distance_m": None, "snr_db_set": 20.0}
    main = P.generate_frame(make_spec(rid="g", **link)) if name == "ue" else \
        P.request_frame(make_spec(rid="q", **link), 1)
    return [Frame(P.HEARTBEAT), Frame(P.HELLO), main]


def _control(frame: Frame) -> bool:
    return frame.kind in (P.HEARTBEAT, P.HELLO, P.CLOCK_SYNC)


def _fuzz(node, ctx, n_mixed: int, n_structured: int, seed: int) -> dict:
    seeds = _seeds(node.name)
    stream = list(fuzz.messages(seeds, n_mixed, seed=seed, is_valid=_control))
    stream += fuzz.structured_messages(seeds, n_structured, seed=seed, is_valid=_control)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.address)
    counts = {"sent": 0, "answered": 0, "errors": 0}
    for parts in stream:
        sock.send_multipart(parts)
        counts["sent"] += 1
        # A structured mutation can stay a valid request (served as a job, answered later): take whatever comes.
        assert sock.poll(30_000), f"{node.name}: no answer to message #{counts['sent']}: {parts[:2]!r:.200}"
        reply = from_parts(sock.recv_multipart()[1:])
        counts["answered"] += 1
        counts["errors"] += reply.kind == P.ERROR
        assert node.alive, f"{node.name} died on message #{counts['sent']}: {parts[:2]!r:.300}"
    sock.close(0)
    return counts


def _legit(node, ctx) -> None:
    legit_request(ctx, node)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


@pytest.mark.parametrize("name", NODES)
def test_fuzz_live_node_1000_frames(live_nodes, ctx, name):
    node = live_nodes[name]
    counts = _fuzz(node, ctx, 700, 300, seed=20 + NODES.index(name))
    assert counts["sent"] == counts["answered"] == 1000
    assert counts["errors"] >= 950, counts  # a few structured mutations are still valid requests, served
    time.sleep(0.2)
    assert node.alive
    _legit(node, ctx)


@pytest.mark.slow
@pytest.mark.parametrize("name", NODES)
def test_fuzz_live_node_10000_frames(live_nodes, ctx, name):
    node = live_nodes[name]
    counts = _fuzz(node, ctx, 7000, 3000, seed=200 + NODES.index(name))
    assert counts["sent"] == counts["answered"] == 10_000
    assert counts["errors"] >= 9500, counts
    assert node.alive
    _legit(node, ctx)
