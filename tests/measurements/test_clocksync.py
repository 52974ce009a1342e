from __future__ import annotations

import time

import numpy as np
import pytest

from megbed.measurements.clocksync import (
    ClockMap,
    ClockSync,
    ClockSyncResponder,
    Exchange,
    OffsetClock,
    clock_sync_reply,
    fit_clock,
)
from megbed.megwire import Frame, FrameError, InProcLink, ZmqClientLink


def _synthetic(offset_ns, drift, n_bursts, per_burst, rng, span_s=60.0):
    """Exchanges between a local clock and remote = local*(1+drift) + offset with random asymmetric delays."""
    out = []
    for b in range(n_bursts):
        base = int(b * span_s / max(n_bursts - 1, 1) * 1e9) + 10**12
        for i in range(per_burst):
            t1 = base + i * 5_000_000
            up, down = rng.exponential(200_000) + 50_000, rng.exponential(200_000) + 50_000
            def remote(local):
                return local + offset_ns + drift * (local - 10**12)
            t2 = int(remote(t1 + up))
            t3 = t2 + 20_000
            t4 = int(t1 + up + 20_000 / (1 + drift) + down)
            out.append(Exchange(t1, t2, t3, t4, b))
    return out


def test_exchange_arithmetic():
    ex = Exchange(t1_ns=1000, t2_ns=6100, t3_ns=6200, t4_ns=1300)  # remote 5000 ahead, 100 each way, 100 inside
    assert ex.delay_ns == 200
    assert ex.offset_ns == -5000
    assert ex.bound_ns == 100


def test_fit_recovers_offset_and_drift_within_bound():
    rng = np.random.default_rng(3)
    offset, drift = 7_654_321_000, 40e-6
    exs = _synthetic(offset, drift, n_bursts=8, per_burst=16, rng=rng)
    m = fit_clock(exs)
    assert m.method == "ntp_fit" and m.samples == 8 and m.exchanges == 128
    assert m.drift == pytest.approx(-drift, rel=0.02)
    for local in (10**12, 10**12 + 30 * 10**9, 10**12 + 60 * 10**9):
        remote = int(local + offset + drift * (local - 10**12))
        err = m.to_local(remote) - local
        assert abs(err) <= m.uncertainty_ns
        assert abs(err) < 100_000
    assert m.to_remote(m.to_local(123 * 10**12)) == pytest.approx(123 * 10**12, abs=2)


def test_min_delay_filter_ignores_queued_exchanges():
    good = Exchange(0, 1_000_100, 1_000_110, 210, 0)  # 100 ns each way, offset exactly -1_000_000
    queued = Exchange(1000, 1_001_100, 1_001_110, 5_000_110, 0)  # reply stuck 5 ms in a queue
    m = fit_clock([queued, good])
    assert m.offset_ns == pytest.approx(-1_000_000)  # the queued exchange would have said -3.5 ms
    assert m.method == "ntp_min" and m.uncertainty_ns == pytest.approx(100)


def test_reply_function_for_a_nodes_router_loop():
    clock = iter([500]).__next__
    reply = clock_sync_reply(Frame("clock_sync", meta={"seq": 3, "t1": 100, "burst": 1}), t2_ns=400, clock=clock)
    assert reply.kind == "clock_sync" and reply.meta == {"seq": 3, "t1": 100, "t2": 400, "burst": 1, "t3": 500}
    with pytest.raises(FrameError, match="seq"):
        clock_sync_reply(Frame("clock_sync", meta={"t1": 1}), 0)
    with pytest.raises(FrameError, match="expected"):
        clock_sync_reply(Frame("handoff"), 0)


def test_late_reply_from_a_lost_exchange_is_not_mistaken():
    a, b = InProcLink.pair(timeout_s=0.2)
    cs = ClockSync(a, timeout_s=0.05)
    assert cs.exchange_once() is None and cs.lost == 1  # nobody answered seq 0
    req0 = b.recv()
    late = clock_sync_reply(req0, 1_000)
    b.send(late)  # arrives while the client waits for seq 1
    remote = OffsetClock(10**9)

    import threading

    def answer():
        req = b.recv(1.0)
        b.send(clock_sync_reply(req, remote(), remote))

    th = threading.Thread(target=answer)
    cs.timeout_s = 5.0  # the answering thread may start late on a loaded box; the late reply is already queued
    th.start()
    ex = cs.exchange_once()
    th.join()
    assert ex is not None and ex.t1_ns != req0.meta["t1"]
    assert abs(ex.offset_ns + 10**9) < 50_000_000


def test_loopback_recovers_injected_offset_within_100us():
    remote_clock = OffsetClock(offset_ns=-98_765_432_100, drift=150e-6)
    with ClockSyncResponder(clock=remote_clock) as responder:
        link = ZmqClientLink(responder.address, timeout_s=1.0)
        try:
            cs = ClockSync(link)
            for _ in range(4):
                cs.burst(16)
                time.sleep(0.1)
            m = cs.fit()
            errors = []
            for _ in range(5):
                local = time.monotonic_ns()
                errors.append(m.to_local(remote_clock()) - local)
        finally:
            link.close()
    assert responder.answered >= 60
    assert max(abs(e) for e in errors) < 100_000, errors  # the bound: 100 us over loopback
    truth = remote_clock.true_local_minus_remote(time.monotonic_ns())
    assert abs(m.offset_at(remote_clock()) - truth) <= m.uncertainty_ns
    records = cs.manifest_records()
    assert records[0]["method"] == "ntp_fit" and records[0]["samples"] == 4
    assert all("t_ns" in r and r["uncertainty_ns"] > 0 for r in records[1:])


def test_unsynced_map_is_identity():
    m = ClockMap.unsynced()
    assert m.to_local(12345) == 12345 and m.to_dict()["method"] == "unsynced"
    assert list(m.to_local(np.array([1, 2]))) == [1, 2]
