from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from megbed.megwire import (
    CurveConfig,
    Frame,
    FrameError,
    InProcLink,
    LinkTimeout,
    ZmqClientLink,
    bind_address,
    error_frame,
    generate_keys,
    make_socket,
    recv_frame,
    send_frame,
    stop_authenticator,
)


def _echo_server(ctx, address_holder, ready, stop, curve=None):
    sock = make_socket(ctx, zmq.ROUTER, timeout_s=0.1, curve=curve)
    address_holder.append(bind_address(sock, "tcp://127.0.0.1:0"))
    ready.set()
    while not stop.is_set():
        try:
            envelope, frame = recv_frame(sock)
        except LinkTimeout:
            continue
        except FrameError as exc:
            send_frame(sock, error_frame(str(exc)), exc.envelope)
            continue
        send_frame(sock, Frame("echo", meta=frame.meta, buffers=frame.buffers), envelope)
    sock.close(0)


@pytest.fixture
def server():
    ctx = zmq.Context()
    holder, ready, stop = [], threading.Event(), threading.Event()
    t = threading.Thread(target=_echo_server, args=(ctx, holder, ready, stop), daemon=True)
    t.start()
    ready.wait(5)
    yield ctx, holder[0]
    stop.set()
    t.join(5)
    ctx.term()


def test_zmq_round_trip(server):
    ctx, address = server
    with ZmqClientLink(address, ctx=ctx, timeout_s=5) as link:
        reply = link.request(Frame("ping", meta={"i": 1}, buffers={"x": np.arange(10, dtype=np.float32)}))
    assert reply.kind == "echo" and reply.meta == {"i": 1}
    np.testing.assert_array_equal(reply.buffers["x"], np.arange(10, dtype=np.float32))


def test_malformed_message_gets_error_and_server_keeps_serving(server):
    ctx, address = server
    sock = make_socket(ctx, zmq.DEALER, timeout_s=5)
    sock.connect(address)
    sock.send_multipart([b"", b"garbage"])
    _, reply = recv_frame(sock)
    assert reply.kind == "error" and "truncated" in reply.meta["error"]
    sock.close(0)
    with ZmqClientLink(address, ctx=ctx, timeout_s=5) as link:
        assert link.request(Frame("ping")).kind == "echo"


def test_timeout_raises():
    with ZmqClientLink("tcp://127.0.0.1:9", timeout_s=0.05) as link, pytest.raises(LinkTimeout):
        link.recv()


def test_inproc_pair():
    a, b = InProcLink.pair(timeout_s=0.5)
    a.send(Frame("hello", buffers={"v": np.ones(3)}))
    got = b.recv()
    assert got.kind == "hello" and got.buffers["v"].sum() == 3
    with pytest.raises(LinkTimeout):
        b.recv(timeout_s=0.01)


def test_curve_refuses_unknown_and_plain_peers(tmp_path):
    server_pub, server_sec = generate_keys(tmp_path / "server", "server")
    client_pub, client_sec = generate_keys(tmp_path / "clients", "ue1")
    _, rogue_sec = generate_keys(tmp_path / "rogue", "rogue")
    ctx = zmq.Context()
    holder, ready, stop = [], threading.Event(), threading.Event()
    curve = CurveConfig(secret_key_file=server_sec, authorized_clients_dir=tmp_path / "clients")
    t = threading.Thread(target=_echo_server, args=(ctx, holder, ready, stop, curve), daemon=True)
    t.start()
    ready.wait(5)
    try:
        good = CurveConfig(secret_key_file=client_sec, server_public_key_file=server_pub)
        with ZmqClientLink(holder[0], ctx=ctx, timeout_s=5, curve=good) as link:
            assert link.request(Frame("ping")).kind == "echo"
        rogue = CurveConfig(secret_key_file=rogue_sec, server_public_key_file=server_pub)
        with ZmqClientLink(holder[0], ctx=ctx, timeout_s=0.5, curve=rogue) as link, pytest.raises(LinkTimeout):
            link.request(Frame("ping"))
        with ZmqClientLink(holder[0], ctx=ctx, timeout_s=0.5) as link, pytest.raises(LinkTimeout):
            link.request(Frame("ping"))
    finally:
        stop.set()
        t.join(5)
        stop_authenticator(ctx)
        ctx.term()


def test_bind_address_takes_a_free_port_for_0_and_keeps_an_explicit_address():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    try:
        bound = bind_address(a, "tcp://127.0.0.1:0")
        host, _, port = bound.rpartition(":")
        assert host == "tcp://127.0.0.1" and int(port) > 0
        assert a.getsockopt(zmq.LAST_ENDPOINT).decode() == bound
        assert bind_address(b, "inproc://bind-address-test") == "inproc://bind-address-test"
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
