"""Issue 20 (node side): each numbered defect, attacked on live ES / UE / broker processes, then a legitimate request.

The nodes run as their own processes (``megbed node es|ue|channel``, synthetic engine), so a crash is a process that
exits and a hang is a heartbeat that goes unanswered.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import zmq
from nodes_helpers import ask as _ask
from nodes_helpers import ask_frame as _frame
from nodes_helpers import legit_request as _legit
from nodes_helpers import make_spec

from megbed.megwire import Frame, FrameError, from_parts, to_parts
from megbed.testbed.nodes import protocol as P
from megbed.testing import node_fuzz as fuzz
from megbed.testing.live_nodes import flood_without_reading, free_port, rss_mb

pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


NODES = ("es", "broker", "ue")


# --- 1. one frame crashed a node -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NODES)
def test_1_every_hostile_frame_class_gets_an_error_and_the_node_serves_on(live_nodes, ctx, name):
    node = live_nodes[name]
    kind = "generate" if name == "ue" else "request"
    for cls, parts in fuzz.hostile_messages([kind]).items():
        reply = _ask(ctx, node.address, parts)
        assert reply is not None and reply.kind == P.ERROR, (cls, reply)
        assert len(json.dumps(reply.meta)) < 2000, cls  # clipped, whatever the frame held
        assert node.alive, cls
    _legit(ctx, node)


def test_1_from_parts_raises_only_frame_error_for_every_hostile_class():
    for cls, parts in fuzz.hostile_messages(["request"]).items():
        try:
            from_parts(parts[1:])
        except FrameError:
            continue
        assert cls in ("huge_msg_id", "msg_id_object", "wrong_types", "wrong_types_request"), cls  # node-level


def test_1_from_parts_is_total_on_arbitrary_parts():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.binary(max_size=300), max_size=4), st.data())
    def check(parts, data):
        # Half the cases get a valid prefix so the JSON and buffer checks are reached.
        if parts and data.draw(st.booleans()):
            body = parts[0]
            parts = [b"MGWB\x01\x00\x00\x00" + len(body).to_bytes(4, "little") + body, *parts[1:]]
        try:
            from_parts(parts)
        except FrameError:
            pass

    check()


# --- 2. a broker whose socket thread dies ----------------------------------------------------------------------------


def _broker():
    from megbed.channel_emu.broker import Broker, BrokerAddresses

    cfg = {"mode": "analog", "model": "awgn", "snr_db": 20.0, "symbol_rate_hz": 1e6}
    return Broker(cfg, seed=1, warm_up=False,
                  addresses=BrokerAddresses("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:0"))


def test_2_a_frame_that_breaks_a_handler_does_not_end_the_broker(monkeypatch, ctx):
    import megbed.channel_emu.broker as B

    broker = _broker().start()
    try:
        def boom(frame):
            raise RuntimeError("handler bug")

        monkeypatch.setattr(B, "_link_of", boom)
        reply = _frame(ctx, broker.listen_address, P.request_frame(make_spec(), 1), 2.0)
        assert reply is None  # forwarded nowhere (no ES), but the socket thread lived through the handler bug
        assert broker.stats["loop_errors"] == 1 and not broker.dead_threads()
        monkeypatch.undo()
        reply = _ask(ctx, broker.listen_address, [b"", b"garbage"])
        assert reply is not None and reply.kind == P.ERROR
    finally:
        broker.stop()


def test_2_a_dead_broker_thread_ends_serve_forever_with_an_error(monkeypatch):
    from megbed.channel_emu.broker import BrokerDied

    broker = _broker()

    def boom(*args):
        raise RuntimeError("socket loop bug")

    monkeypatch.setattr(broker, "_release_due", boom)
    t0 = time.monotonic()
    with pytest.raises(BrokerDied, match="socket loop bug"):
        broker.serve_forever()
    assert time.monotonic() - t0 < 10


def test_2_node_channel_exits_non_zero_when_its_thread_dies(monkeypatch, capsys):
    from megbed.channel_emu import cli
    from megbed.channel_emu.broker import Broker, BrokerDied

    def died(self):
        raise BrokerDied("channel broker thread(s) channel-broker died: test")

    monkeypatch.setattr(Broker, "serve_forever", died)
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_node_parser(sub)
    args = parser.parse_args(["channel", "--listen", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                              "--no-warm-up"])
    assert args.func(args) == 3


# --- 3. a peer that sends without reading ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["es", "ue"])
def test_3_slow_readers_flooding_do_not_stall_heartbeats_or_grow_memory(live_nodes, ctx, name):
    node = live_nodes[name]
    time.sleep(0.5)
    rss_before = rss_mb(node.proc.pid)
    stop = threading.Event()
    sent = [0]

    def flood(msg_id: str) -> threading.Thread:
        return threading.Thread(target=flood_without_reading, args=(ctx, node.address, msg_id, stop, sent, 4),
                                daemon=True)

    # Four with 200 KB msg_ids (the attack), one with a legal msg_id whose answers it never reads.
    threads = [flood("m" * 200_000) for _ in range(4)]
    threads.append(flood("ok"))
    for t in threads:
        t.start()
    worst_s = 0.0
    try:
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            beat = _frame(ctx, node.address, Frame(P.HEARTBEAT), 5.0)
            assert beat is not None and beat.kind == P.HEARTBEAT
            worst_s = max(worst_s, time.monotonic() - t0)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert sent[0] > 1000
    assert worst_s < 2.0, worst_s  # the issue: every heartbeat missed from t ~ 5 s
    stats = _frame(ctx, node.address, Frame(P.HEARTBEAT)).meta["stats"]
    assert stats["rejected"].get("malformed", 0) > 0
    _legit(ctx, node)
    time.sleep(1.0)
    assert rss_mb(node.proc.pid) - rss_before < 50, (rss_before, rss_mb(node.proc.pid))


def test_3_answers_to_a_peer_that_does_not_read_are_dropped_and_counted(ctx):
    from megbed.testbed.nodes.server import NodeServer

    srv = NodeServer("es", "tcp://127.0.0.1:0", send_hwm=4).start()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 1024)
        sock.connect(srv.address)
        parts = [b"", *to_parts(Frame(P.HEARTBEAT, meta={"msg_id": "x" * 100}))]
        deadline = time.monotonic() + 20
        while srv.stats.dropped_replies == 0 and time.monotonic() < deadline:
            for _ in range(500):
                try:
                    sock.send_multipart(parts, flags=zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.01)
        assert srv.stats.dropped_replies > 0
        t0 = time.monotonic()
        assert _frame(ctx, srv.address, Frame(P.HEARTBEAT), 5).kind == P.HEARTBEAT
        assert time.monotonic() - t0 < 2
        sock.close(0)
    finally:
        srv.stop()


def test_3_msg_id_is_bounded_and_never_echoed(live_nodes, ctx):
    es = live_nodes["es"]
    for bad in ("m" * 200_000, {"a": 1}, [1], 2**70, True):
        reply = _frame(ctx, es.address, Frame(P.HEARTBEAT, meta={"msg_id": bad}))
        assert reply.kind == P.ERROR and reply.meta["code"] == P.CODE_MALFORMED and "msg_id" not in reply.meta
        assert len(reply.meta["error"]) < 300
    assert _frame(ctx, es.address, Frame(P.HEARTBEAT, meta={"msg_id": "x" * 128})).meta["msg_id"] == "x" * 128


# --- 4. the UE's decoder chosen by a path on the wire --------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["/etc", "../../../tmp", "/tmp/evil/ue_decoder", "distilled/../../x"])
def test_4_a_generate_naming_a_path_is_refused_without_paths_in_the_answer(live_nodes, ctx, decoder):
    ue = live_nodes["ue"]
    spec = make_spec(rid=f"dec-{abs(hash(decoder))}", decoder=decoder)
    reply = _frame(ctx, ue.address, P.generate_frame(spec))
    assert reply.kind == P.ERROR and reply.meta["code"] == P.CODE_BAD_REQUEST
    assert "/work" not in reply.meta["error"] and "/home" not in reply.meta["error"]
    _legit(ctx, ue)


# --- 5. CURVE gaps ---------------------------------------------------------------------------------------------------


def test_5_broker_pub_refuses_keyless_subscribers_and_admits_keyed_ones(tmp_path):
    from megbed.channel_emu.broker import Broker, BrokerAddresses
    from megbed.megwire import make_socket
    from megbed.testbed.nodes.keys import client_curve, generate, server_curve

    generate(tmp_path)
    ctx = zmq.Context()
    broker = Broker({"mode": "analog", "model": "awgn", "snr_db": 20.0}, seed=1, warm_up=False, ctx=ctx,
                    addresses=BrokerAddresses("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:0"),
                    curve_server=server_curve(tmp_path, "channel")).start()
    try:
        keyed = make_socket(ctx, zmq.SUB, timeout_s=5, curve=client_curve(tmp_path, "orchestrator", "channel"))
        keyless = make_socket(ctx, zmq.SUB, timeout_s=1)
        for s in (keyed, keyless):
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(broker.pub_address)
        time.sleep(0.5)
        # A malformed uplink frame publishes an error record (the front socket requires keys too: use one).
        ue = make_socket(ctx, zmq.DEALER, timeout_s=5, curve=client_curve(tmp_path, "ue", "channel"))
        ue.connect(broker.listen_address)
        ue.send_multipart([b"", b"not a frame"])
        assert from_parts(ue.recv_multipart()[1:]).kind == P.ERROR
        assert from_parts(keyed.recv_multipart()).kind == "delivery"
        with pytest.raises(zmq.Again):
            keyless.recv_multipart()
        for s in (keyed, keyless, ue):
            s.close(0)
    finally:
        broker.stop()


def test_5_node_channel_with_a_secret_key_and_no_client_list_refuses_to_start(tmp_path):
    import argparse

    from megbed.channel_emu import cli
    from megbed.testbed.nodes.keys import generate

    generate(tmp_path)
    parser = argparse.ArgumentParser()
    cli.add_node_parser(parser.add_subparsers())
    args = parser.parse_args(["channel", "--curve-secret", str(tmp_path / "channel.key_secret"), "--no-warm-up"])
    with pytest.raises(SystemExit, match="--allow-any-client"):
        args.func(args)


def test_5_a_curve_server_without_a_client_list_needs_allow_any_client(tmp_path):
    from megbed.megwire import CurveConfig, make_socket
    from megbed.testbed.nodes.keys import generate, server_curve

    generate(tmp_path, ["es"])
    ctx = zmq.Context()
    with pytest.raises(ValueError, match="allow_any_client"):
        make_socket(ctx, zmq.ROUTER, curve=CurveConfig(tmp_path / "es.key_secret"))
    sock = make_socket(ctx, zmq.ROUTER, curve=server_curve(tmp_path, "es", allow_any_client=True))
    assert sock.curve_server
    sock.close(0)
    from megbed.megwire import stop_authenticator

    stop_authenticator(ctx)
    ctx.term()


def test_5_refused_handshakes_are_logged_at_most_once_per_interval(tmp_path, caplog):
    import zmq.auth

    from megbed.megwire.logutil import set_rate_limit_interval
    from megbed.testbed.nodes.keys import generate, server_curve
    from megbed.testbed.nodes.server import NodeServer

    generate(tmp_path, ["es"])
    server_public, _ = zmq.auth.load_certificate(str(tmp_path / "es.key"))
    set_rate_limit_interval(60.0)
    srv = NodeServer("es", "tcp://127.0.0.1:0", curve=server_curve(tmp_path, "es")).start()
    ctx = zmq.Context()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(40):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                public, secret = zmq.curve_keypair()  # a well-formed key the server does not authorise
                s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret, public, server_public
                s.connect(srv.address)
                try:  # never block: once the server refuses the handshake the DEALER has no pipe to queue on
                    s.send_multipart([b"", b"x"], flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                time.sleep(0.02)
                s.close(0)
            time.sleep(1.0)
        assert srv.stats.refused_handshakes >= 10
        lines = [r for r in caplog.records if "refused a connection" in r.getMessage()]
        assert 1 <= len(lines) <= 2, len(lines)
    finally:
        set_rate_limit_interval(0.0)
        srv.stop()
        ctx.term()


# --- 6. logs echo attacker text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NODES)
def test_6_huge_kinds_write_a_bounded_log(live_nodes, ctx, name):
    node = live_nodes[name]
    parts = fuzz.hostile_messages(["request"])["huge_kind"]
    before = node.log_bytes()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.address)
    for _ in range(200):
        sock.send_multipart(parts)
        assert sock.poll(10_000)
        reply = from_parts(sock.recv_multipart()[1:])
        assert reply.kind == P.ERROR and len(reply.meta["error"]) < 400
    sock.close(0)
    time.sleep(0.3)
    assert node.log_bytes() - before < 50_000  # the issue: 184 MB for the same 200 frames
    _legit(ctx, node)


def test_6_clip_and_rate_limit_filter():
    from megbed.megwire.logutil import RateLimitFilter, clip

    assert len(clip("k" * 900_000)) < 250 and clip([1] * 10**6).startswith("<list")
    now = [0.0]
    filt = RateLimitFilter(5.0, clock=lambda: now[0])
    rec = lambda: logging.LogRecord("x", logging.WARNING, "f", 1, "refused %s", ("a",), None)  # noqa: E731
    assert filt.filter(rec()) and not filt.filter(rec()) and not filt.filter(rec())
    now[0] = 6.0
    r = rec()
    assert filt.filter(r) and "+2 similar lines suppressed" in r.getMessage()


# --- 7. unbounded requests; link fields the broker would refuse -----------------------------------------------------


@pytest.mark.parametrize("change, match", [
    (dict(height_px=1024, width_px=1024), "over this node's bounds"),
    (dict(height_px=8192, width_px=64), "over this node's bounds"),
    (dict(n_steps=500, es_steps=500), "steps"),
    (dict(link_model="nope", tx_mode="analog", distance_m=200.0, snr_db_set=None), "link_model"),
    (dict(link_model="awgn", tx_mode="digital", distance_m=200.0, snr_db_set=None), "tx_mode"),
    (dict(link_model="awgn", tx_mode="analog", distance_m=None, snr_db_set=95.0), "snr_db"),
    (dict(link_model="awgn", tx_mode="analog", distance_m=0.0, snr_db_set=None), "distance_m"),
])
def test_7_the_es_refuses_out_of_bounds_requests_before_computing(live_nodes, ctx, change, match):
    es = live_nodes["es"]
    # Built as a peer would send it: past this process's own contract check.
    frame = P.request_frame(make_spec(rid=f"b-{abs(hash(str(change)))}"), 1)
    frame.meta["request"].update(change)
    t0 = time.monotonic()
    reply = _frame(ctx, es.address, frame)
    assert reply.kind == P.ERROR and reply.meta["code"] == P.CODE_BAD_REQUEST, reply.meta
    assert match in reply.meta["error"]
    assert time.monotonic() - t0 < 2.0
    _legit(ctx, es)


def test_7_bounds_derive_from_the_model_and_the_link_vocabulary_from_channel_emu():
    from megbed.channel_emu.config import MODELS, MODES
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine

    bounds = SyntheticEngine().default_bounds()
    assert bounds.max_side_px == 2 * 128 and bounds.max_steps == 200
    from megbed import testbed

    assert testbed.request.LINK_MODELS is MODELS and testbed.request.TX_MODES is MODES


# --- 9. minor --------------------------------------------------------------------------------------------------------


def test_9_duplicate_buffer_names_are_refused(live_nodes, ctx):
    parts = fuzz.hostile_messages(["request"])["duplicate_names"]
    with pytest.raises(FrameError, match="duplicate"):
        from_parts(parts[1:])
    reply = _ask(ctx, live_nodes["es"].address, parts)
    assert reply.kind == P.ERROR and "duplicate" in reply.meta["error"]


def test_9_unknown_scheduler_on_the_synthetic_engine_is_a_bad_request(live_nodes, ctx):
    frame = P.request_frame(make_spec(rid="sch"), 1)
    frame.meta["request"]["scheduler"] = "nope"  # as a peer would send it: past this process's contract check
    reply = _frame(ctx, live_nodes["es"].address, frame)
    assert reply.kind == P.ERROR and reply.meta["code"] == P.CODE_BAD_REQUEST, reply.meta
    assert "scheduler" in reply.meta["error"]


def test_9_a_dead_broker_is_reported_as_unreachable_promptly(ctx):

    from megbed.testbed.nodes.rpc import NodeError, RpcClient
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine
    from megbed.testbed.nodes.ue import UeNode

    dead = f"tcp://127.0.0.1:{free_port()}"
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=dead, request_timeout_s=60).start()
    try:
        t0 = time.monotonic()
        with RpcClient(ue.address, ctx, timeout_s=30) as client, pytest.raises(NodeError) as err:
            client.call(P.generate_frame(make_spec(rid="nobroker")))
        assert "unreachable" in str(err.value) and "no answer from the ES" not in str(err.value)
        assert time.monotonic() - t0 < 10
    finally:
        ue.stop()


def test_9_a_ue_gives_up_when_stopped_or_when_the_orchestrator_lease_lapses(ctx):
    from megbed.testbed.nodes.es import EsNode
    from megbed.testbed.nodes.rpc import NodeError, RpcClient
    from megbed.testbed.nodes.synthetic_engine import SyntheticEngine
    from megbed.testbed.nodes.ue import UeNode

    es = EsNode(SyntheticEngine(compute_s_per_step=10.0), bind="tcp://127.0.0.1:0").start()  # 40 s per request
    ue = UeNode(SyntheticEngine(), bind="tcp://127.0.0.1:0", es_address=es.address, request_timeout_s=60,
                lease_s=1.5).start()
    try:
        with RpcClient(ue.address, ctx, timeout_s=30) as client:
            client.call(Frame(P.HEARTBEAT))  # an orchestrator was there ...
            t0 = time.monotonic()
            with pytest.raises(NodeError, match="no heartbeat from the orchestrator"):
                client.call(P.generate_frame(make_spec(rid="lease")))  # ... and went silent
            assert time.monotonic() - t0 < 5
            client.call(Frame(P.HEARTBEAT))  # the lease is fresh again: only the stop can end this wait
            client.send(P.generate_frame(make_spec(rid="stop")))
            time.sleep(0.3)
        t0 = time.monotonic()
        ue.stop()
        assert time.monotonic() - t0 < 5  # the issue: a UE outlived its killed orchestrator by 33 s
    finally:
        ue.stop()
        es.server.shutdown_grace_s = 0.1
        es.stop()
