"""The broker on loopback: ES ROUTER thread <-> broker <-> UE DEALER."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from megbed.channel_emu.broker import Broker, BrokerAddresses
from megbed.megwire import (
    Frame,
    FrameError,
    FrameLimits,
    LinkTimeout,
    ZmqClientLink,
    bind_address,
    from_parts,
    make_socket,
    recv_frame,
    send_frame,
)

VALUES = np.linspace(-2, 2, 2000).astype(np.float16)


def _es(ctx, holder, ready, stop, seen):
    sock = make_socket(ctx, zmq.ROUTER, timeout_s=0.05)
    holder.append(bind_address(sock, "tcp://127.0.0.1:0"))
    ready.set()
    while not stop.is_set():
        try:
            envelope, frame = recv_frame(sock)
        except (LinkTimeout, FrameError):
            continue
        seen.append(frame)
        if frame.kind == "request":
            reply = Frame("handoff", meta={"request_id": frame.meta["request_id"],
                                           "channel_roles": {"tokens": "values", "map": "side"}},
                          buffers={"tokens": VALUES, "map": np.arange(64, dtype=np.uint8)})
        else:
            reply = Frame("heartbeat", meta={"echo": frame.kind})
        send_frame(sock, reply, envelope)
    sock.close(0)


@pytest.fixture
def setup():
    ctx = zmq.Context()
    holder, ready, stop, seen = [], threading.Event(), threading.Event(), []
    es = threading.Thread(target=_es, args=(ctx, holder, ready, stop, seen), daemon=True)
    es.start()
    ready.wait(5)
    cfg = {"mode": "analog", "model": "awgn", "snr_db": 3.0, "symbol_rate_hz": 20_000.0}
    broker = Broker(cfg, seed=7, addresses=BrokerAddresses("tcp://127.0.0.1:0", holder[0], "tcp://127.0.0.1:0"),
                    limits=FrameLimits(max_total_bytes=1 << 20), ctx=ctx).start()
    sub = make_socket(ctx, zmq.SUB, timeout_s=10)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(broker.pub_address)
    time.sleep(0.2)  # let the SUB join before anything is published
    yield ctx, broker, sub, seen
    sub.close(0)
    broker.stop()
    stop.set()
    es.join(5)
    ctx.term()


def test_end_to_end_airtime_corruption_and_records(setup):
    ctx, broker, sub, seen = setup
    # start() warmed every mode up before serving.
    assert {"bler_table", "analog", "abstraction", "coded"} <= set(broker.warm_up_s)
    with ZmqClientLink(broker.listen_address, ctx=ctx, timeout_s=60) as ue:
        link = {"link_model": "awgn", "tx_mode": "analog", "distance_m": None, "snr_db": 3.0}
        t0 = time.monotonic()
        reply = ue.request(Frame("request", meta={"request_id": "r1", "request": {"link": link}}))
        elapsed = time.monotonic() - t0
    # Uplink passed through untouched.
    assert seen[0].kind == "request" and seen[0].meta["request"]["link"] == link
    rec = reply.meta["delivery"]
    assert reply.kind == "handoff" and reply.buffers["tokens"].dtype == np.float16
    assert reply.buffers["tokens"].shape == VALUES.shape
    assert not np.array_equal(reply.buffers["tokens"], VALUES)  # analog noise at 3 dB
    np.testing.assert_array_equal(reply.buffers["map"], np.arange(64, dtype=np.uint8))  # side arrives exactly
    assert rec["airtime_s"] >= 1000 / 20_000 and elapsed >= rec["airtime_s"]
    assert 0.2 < rec["nmse"] < 0.6  # MMSE at 3 dB: 1/(1+2) = 0.33
    published = from_parts(sub.recv_multipart())
    assert published.kind == "delivery" and published.meta["request_id"] == "r1"
    assert published.meta["airtime_s"] == pytest.approx(rec["airtime_s"])
    assert published.meta["t_release_ns"] - published.meta["t_done_ns"] >= rec["airtime_s"] * 1e9 - 1
    # The published record is the answer's delivery record (its JSON made once for both) plus the release fields.
    assert list(published.meta) == [*rec, "request_id", "direction", "t_done_ns", "t_release_ns", "queue_s"]
    assert json.dumps({k: published.meta[k] for k in rec}) == json.dumps(rec)
    assert published.meta["direction"] == "downlink" and published.meta["queue_s"] >= 0


def test_bad_frames_get_error_records_and_broker_keeps_serving(setup):
    ctx, broker, sub, _ = setup
    dealer = make_socket(ctx, zmq.DEALER, timeout_s=10)
    dealer.connect(broker.listen_address)
    dealer.send_multipart([b"", b"garbage"])
    _, err = recv_frame(dealer)
    assert err.kind == "error" and err.meta["code"] == "malformed"
    record = from_parts(sub.recv_multipart())
    assert record.kind == "delivery" and "truncated" in record.meta["error"]
    # Oversized (above the broker's 1 MiB limit).
    send_frame(dealer, Frame("request", meta={"request_id": "big"}, buffers={"x": np.zeros(1 << 19, np.float32)}))
    _, err = recv_frame(dealer)
    assert err.kind == "error" and err.meta["code"] == "oversized"
    dealer.close(0)
    # Control frames bypass the channel; a normal request still works.
    with ZmqClientLink(broker.listen_address, ctx=ctx, timeout_s=60) as ue:
        hb = ue.request(Frame("heartbeat"))
        assert hb.kind == "heartbeat" and "delivery" not in hb.meta
        assert ue.request(Frame("request", meta={"request_id": "r2"})).kind == "handoff"
    assert broker.stats["errors"] == 2
