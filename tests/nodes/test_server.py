from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import zmq

from megbed.megwire import (
    CurveConfig,
    Frame,
    LinkTimeout,
    generate_keys,
    make_socket,
    recv_frame,
    stop_authenticator,
)
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.rpc import NodeError, RpcClient
from megbed.testbed.nodes.server import NodeServer
from megbed.testbed.request import Request
from megbed.testing import node_fuzz as fuzz


def _spec(**kw):
    base = dict(request_id="r1", scheme="meg", prompt="a cat", seed=1, n_steps=4, es_steps=4, merge_ratio=0.5,
                link_model="awgn", tx_mode="analog", distance_m=200.0, snr_db_set=None, point_id="p", repetition=0)
    base.update(kw)
    return Request(**base)


@pytest.fixture
def server():
    srv = NodeServer("t", "tcp://127.0.0.1:0")
    gate = threading.Event()

    def slow(frame, peer):
        spec = P.parse_request_meta(frame)
        gate.wait(5)
        return Frame("done", meta={"request_id": spec.request_id})

    srv.handle(P.REQUEST, slow, blocking=True)
    srv.handle("boom", lambda f, p: 1 / 0)
    srv.start()
    ctx = zmq.Context()
    yield srv, ctx, gate
    gate.set()
    srv.stop()
    ctx.term()


def test_heartbeat_answers_while_a_job_runs(server):
    srv, ctx, gate = server
    with RpcClient(srv.address, ctx, timeout_s=5) as client:
        job = client.send(P.request_frame(_spec(), 0))
        time.sleep(0.05)
        beat = client.call(Frame(P.HEARTBEAT))
        assert beat.meta["busy_with"] == "r1"
        gate.set()
        assert client.wait(job).meta["request_id"] == "r1"


def test_errors_keep_the_server_alive(server, caplog):
    srv, ctx, gate = server
    gate.set()
    with RpcClient(srv.address, ctx, timeout_s=5) as client, caplog.at_level(logging.WARNING):
        with pytest.raises(NodeError) as info:
            client.call(Frame("boom"))
        assert info.value.code == P.CODE_INTERNAL and "ZeroDivisionError" in str(info.value)
        with pytest.raises(NodeError) as info:
            client.call(Frame(P.REQUEST, meta={"request_id": "x", "request": {"request_id": "x"}}))
        assert info.value.code == P.CODE_BAD_REQUEST and "missing field" in str(info.value)
        assert info.value.meta["request_id"] == "x"
        assert client.call(Frame(P.HEARTBEAT)).kind == P.HEARTBEAT
    assert "ZeroDivisionError" in caplog.text


def test_stale_answers_are_dropped(server):
    srv, ctx, gate = server
    with RpcClient(srv.address, ctx, timeout_s=5) as client:
        with pytest.raises(LinkTimeout):
            client.call(P.request_frame(_spec(request_id="late"), 0), timeout_s=0.1)
        gate.set()
        time.sleep(0.1)  # the late answer is now queued on the socket
        assert client.call(Frame(P.HELLO)).meta["node"] == "t"


def _is_valid(frame: Frame) -> bool:
    if frame.kind in (P.HEARTBEAT, P.HELLO):
        return True
    if frame.kind != P.REQUEST:
        return False
    try:
        P.parse_request_meta(frame)
    except P.ProtocolError:
        return False
    return True


def test_fuzz_1000_messages_all_refused(server, caplog):
    srv, ctx, gate = server
    gate.set()
    seeds = [P.request_frame(_spec(), 123), P.request_frame(_spec(scheme="ue_local", es_steps=0), 5),
             Frame(P.HEARTBEAT, buffers={"x": np.arange(4, dtype=np.float32)})]
    sock = make_socket(ctx, zmq.DEALER, timeout_s=5)
    sock.connect(srv.address)
    codes = {}
    with caplog.at_level(logging.WARNING):
        for parts in fuzz.messages(seeds, 1000, seed=7, is_valid=_is_valid):
            sock.send_multipart(parts)
            _, reply = recv_frame(sock)
            assert reply.kind == P.ERROR, (parts[:2], reply)
            codes[reply.meta["code"]] = codes.get(reply.meta["code"], 0) + 1
    sock.close(0)
    assert {P.CODE_MALFORMED, P.CODE_VERSION, P.CODE_OVERSIZED, P.CODE_UNKNOWN_KIND, P.CODE_BAD_REQUEST} <= set(codes)
    assert srv.stats.received >= 1000
    with RpcClient(srv.address, ctx, timeout_s=5) as client:
        assert client.call(Frame(P.HEARTBEAT)).kind == P.HEARTBEAT
    assert "protocol version mismatch" in caplog.text


def test_peer_over_maxmsgsize_is_dropped_and_server_keeps_serving():
    srv = NodeServer("small", "tcp://127.0.0.1:0", max_message_bytes=4096).start()
    ctx = zmq.Context()
    try:
        sock = make_socket(ctx, zmq.DEALER, timeout_s=0.5)
        sock.connect(srv.address)
        sock.send_multipart([b"", b"x" * 100_000])
        with pytest.raises(zmq.Again):
            sock.recv_multipart()
        sock.close(0)
        with RpcClient(srv.address, ctx, timeout_s=5) as client:
            assert client.call(Frame(P.HEARTBEAT)).kind == P.HEARTBEAT
    finally:
        srv.stop()
        ctx.term()


def test_curve_refuses_unauthenticated_peers(tmp_path, caplog):
    _, server_secret = generate_keys(tmp_path / "server", "es")
    server_public = tmp_path / "server" / "es.key"
    _, client_secret = generate_keys(tmp_path / "authorized", "ue")
    _, rogue_secret = generate_keys(tmp_path / "rogue", "rogue")
    srv = NodeServer("es", "tcp://127.0.0.1:0",
                     curve=CurveConfig(server_secret, authorized_clients_dir=tmp_path / "authorized")).start()
    ctx = zmq.Context()
    try:
        good = CurveConfig(client_secret, server_public_key_file=server_public)
        with RpcClient(srv.address, ctx, timeout_s=5, curve=good) as client:
            assert client.call(Frame(P.HEARTBEAT)).kind == P.HEARTBEAT
        with caplog.at_level(logging.WARNING):
            rogue = CurveConfig(rogue_secret, server_public_key_file=server_public)
            for curve in (rogue, None):
                with RpcClient(srv.address, ctx, timeout_s=0.5, curve=curve) as client, pytest.raises(LinkTimeout):
                    client.call(Frame(P.HEARTBEAT))
            deadline = time.monotonic() + 3
            while srv.stats.refused_handshakes < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert srv.stats.refused_handshakes >= 2
        assert "refused a connection" in caplog.text
    finally:
        srv.stop()
        stop_authenticator(ctx)
        ctx.term()


def test_clock_sync_recovers_an_injected_offset():
    from megbed.measurements.clocksync import OffsetClock
    from megbed.testbed.nodes.clock import NodeClock, register_clock_sync

    remote = OffsetClock(offset_ns=3_000_000_000, drift=0.0)
    srv = NodeServer("remote", "tcp://127.0.0.1:0", clock=remote)
    register_clock_sync(srv)
    srv.start()
    ctx = zmq.Context()
    try:
        with RpcClient(srv.address, ctx, timeout_s=2) as client:
            clock = NodeClock(client, "remote")
            fit = clock.burst(16)
            assert fit.method in ("ntp_min", "ntp_fit")
            # local - remote = -3 s, within the fit's own bound (half the best round trip) and 1 ms here.
            assert abs(fit.offset_ns + 3e9) <= max(fit.uncertainty_ns, 1.0) + 1e5
            assert fit.uncertainty_ns < 1e6
            assert clock.records()[0]["method"] == fit.method
    finally:
        srv.stop()
        ctx.term()


def test_an_answer_encoded_by_its_handler_gets_the_msg_id_and_arrives_whole():
    from megbed.megwire.frames import GrowingFrame

    srv = NodeServer("t", "tcp://127.0.0.1:0")
    values = np.arange(8, dtype=np.float16)

    def encoded(frame, peer):
        out = GrowingFrame(Frame("handoff", meta={"n": 1}, buffers={"v": values}))
        out.add({"size": out.packed_size, "t_recv_ns": peer.t_recv_ns})
        return out

    srv.handle(P.REQUEST, encoded, blocking=True)
    srv.handle("inline", encoded)
    srv.start()
    ctx = zmq.Context()
    try:
        with RpcClient(srv.address, ctx, timeout_s=5) as client:
            for kind in (P.REQUEST, "inline", P.REQUEST):
                answer = client.call(Frame(kind))
                assert answer.kind == "handoff" and answer.meta["n"] == 1 and answer.meta["size"] > values.nbytes
                assert np.array_equal(answer.buffers["v"], values) and isinstance(answer.meta["t_recv_ns"], int)
        assert srv.stats.jobs_done == 2  # counted before the answer is queued (replied: after it is sent)
    finally:
        srv.stop()
        ctx.term()
