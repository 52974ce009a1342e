"""The paper's link accounting (``shannon`` mode) and the ``scale_to_latent`` bandwidth scaling."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from megbed.channel_emu.config import LinkConfig, LinkConfigError
from megbed.channel_emu.emulator import ChannelEmulator
from megbed.megwire import Frame

SDXL = (1, 4, 128, 128)  # 65,536 values


def _handoff(shape, side: np.ndarray | None = None) -> Frame:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float16)
    buffers = {"latent": x}
    roles = {"latent": "values"}
    if side is not None:
        buffers["map"], roles["map"] = side, "side"
    return Frame("handoff", {"channel_roles": roles}, buffers)


def _paper_link(d_m: float, **more) -> dict:
    # The paper's link: 1 MHz, 30 dBm, PL = 35.3 + 37.6 log10 d, -94 dBm (LinkConfig's defaults), AWGN.
    return {"mode": "shannon", "model": "awgn", "bandwidth_hz": 1e6,
            "process": {"distance": "fixed", "distance_m": d_m}, **more}


@pytest.mark.parametrize(("distance_m", "airtime_s"), [(200.0, 0.745), (300.0, 2.365)])
def test_paper_accounting_reproduces_its_airtime(distance_m, airtime_s):
    em = ChannelEmulator(_paper_link(distance_m), seed=0)
    out, rec = em.deliver(_handoff(SDXL))
    assert rec.mode == "shannon" and rec.payload_bits == 65_536 * 16
    assert rec.airtime_s == pytest.approx(airtime_s, rel=0.01)
    assert rec.bandwidth_hz == 1e6 and rec.bandwidth_scale == 1.0
    # Distortion is the analog mode's MMSE noise at that SNR: NMSE 1 / (1 + SNR).
    snr = 10 ** (rec.snr_db / 10)
    assert rec.nmse == pytest.approx(1 / (1 + snr), rel=0.05)
    assert out.buffers["latent"].dtype == np.float16 and out.buffers["latent"].shape == SDXL


def test_distortion_is_the_analog_modes_noise_path():
    """Same seed, same link: the shannon and analog modes deliver the same values (one noise code path)."""
    frame = _handoff((1, 4, 16, 16))
    got_s, _ = ChannelEmulator(_paper_link(250.0), seed=3).deliver(frame)
    got_a, rec_a = ChannelEmulator({**_paper_link(250.0), "mode": "analog"}, seed=3).deliver(frame)
    np.testing.assert_array_equal(got_s.buffers["latent"], got_a.buffers["latent"])
    assert rec_a.airtime_s < 0.01  # analog: 512 symbols at 1 MHz, not the paper's bits at capacity


@pytest.mark.parametrize("model_latent", [[4, 16, 16], [4, 32, 32], [4, 64, 64]])
@pytest.mark.parametrize("distance_m", [200.0, 300.0])
def test_scaled_link_airtime_equals_the_reference_latents(model_latent, distance_m):
    ref = ChannelEmulator(_paper_link(distance_m), seed=0).deliver(_handoff(SDXL))[1]
    cfg = _paper_link(distance_m, scale_to_latent=[4, 128, 128], model_latent=model_latent)
    out, rec = ChannelEmulator(cfg, seed=0).deliver(_handoff((1, *model_latent)))
    assert rec.airtime_s == pytest.approx(ref.airtime_s, rel=0.01)
    assert rec.bandwidth_scale == pytest.approx(math.prod(model_latent) / 65_536)
    assert rec.bandwidth_hz == pytest.approx(1e6 * rec.bandwidth_scale)
    cols = rec.to_columns()
    assert cols["ch_bandwidth_hz"] == rec.bandwidth_hz and cols["ch_bandwidth_scale"] == rec.bandwidth_scale


def test_side_buffers_are_charged_and_arrive_exactly():
    side = np.arange(512, dtype=np.int16)
    em = ChannelEmulator(_paper_link(200.0), seed=0)
    out, rec = em.deliver(_handoff(SDXL, side))
    np.testing.assert_array_equal(out.buffers["map"], side)
    assert rec.payload_bits == 65_536 * 16 + 512 * 16 and rec.side_bits == 512 * 16
    assert rec.airtime_s == pytest.approx(0.745 * (1 + 512 / 65_536), rel=0.01)


def test_scaling_applies_to_the_other_modes_too():
    frame = _handoff((1, 4, 16, 16))
    plain = ChannelEmulator({**_paper_link(200.0), "mode": "analog"}, seed=0).deliver(frame)[1]
    scaled_cfg = {**_paper_link(200.0), "mode": "analog", "scale_to_latent": [4, 128, 128],
                  "model_latent": [4, 16, 16]}
    scaled = ChannelEmulator(scaled_cfg, seed=0).deliver(frame)[1]
    assert scaled.airtime_s == pytest.approx(plain.airtime_s * 64)


def test_per_request_override_selects_shannon():
    em = ChannelEmulator({"mode": "analog", "process": {"distance": "fixed", "distance_m": 200.0}}, seed=0)
    _, rec = em.deliver(_handoff(SDXL), link={"tx_mode": "shannon", "distance_m": 200.0})
    assert rec.mode == "shannon" and rec.airtime_s == pytest.approx(0.745, rel=0.01)


def test_scale_without_model_latent_is_refused_naming_the_key():
    cfg = LinkConfig.from_dict({"mode": "shannon", "scale_to_latent": [4, 128, 128]})  # a campaign's link file
    with pytest.raises(LinkConfigError, match="model_latent"):
        ChannelEmulator(cfg)
    with pytest.raises(LinkConfigError, match="scale_to_latent"):
        LinkConfig.from_dict({"scale_to_latent": [4, 0, 128], "model_latent": [4, 16, 16]})


def test_broker_holds_shannon_airtime_on_the_wall_clock():
    zmq = pytest.importorskip("zmq")
    from megbed.channel_emu.broker import Broker, BrokerAddresses
    from megbed.megwire import ZmqClientLink, make_socket, recv_frame, send_frame

    ctx = zmq.Context()
    es = make_socket(ctx, zmq.ROUTER, timeout_s=5)
    es_addr = f"tcp://127.0.0.1:{es.bind_to_random_port('tcp://127.0.0.1')}"
    # 2,048 fp16 values at 2.18 dB on 100 kHz: 32,768 bits / (1e5 * 1.42 bit/s/Hz) = 0.23 s.
    cfg = {**_paper_link(200.0), "bandwidth_hz": 1e5}
    broker = Broker(cfg, seed=1, addresses=BrokerAddresses("tcp://127.0.0.1:0", es_addr, "tcp://127.0.0.1:0"),
                    ctx=ctx, warm_up=False).start()
    try:
        with ZmqClientLink(broker.listen_address, ctx=ctx, timeout_s=30) as ue:
            import threading

            def serve():
                envelope, _ = recv_frame(es)
                send_frame(es, _handoff((1, 2, 32, 32)), envelope)

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            t0 = time.monotonic()
            reply = ue.request(Frame("request", meta={"request_id": "r1"}))
            elapsed = time.monotonic() - t0
            t.join(5)
        rec = reply.meta["delivery"]
        assert rec["mode"] == "shannon" and rec["airtime_s"] == pytest.approx(0.23, rel=0.05)
        assert elapsed >= rec["airtime_s"]
    finally:
        broker.stop()
        es.close(0)
        ctx.term()
