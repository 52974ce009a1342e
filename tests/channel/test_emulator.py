"""ChannelEmulator.deliver: frame contract, seeds, modes and residual policies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megbed.channel_emu.emulator import ChannelEmulator
from megbed.channel_emu.process import ChannelProcess
from megbed.megwire import Frame

LATENT = np.random.default_rng(0).standard_normal((4, 16, 16)).astype(np.float16)


def _handoff():
    return Frame("handoff", meta={"request_id": "r", "channel_roles": {"tokens": "values", "map": "side"}},
                 buffers={"tokens": LATENT, "map": np.arange(32, dtype=np.uint8), "extra": np.ones(3, np.int32)})


def _check_shape(out, frame):
    assert out.kind == frame.kind and list(out.buffers) == list(frame.buffers)
    for k in frame.buffers:
        assert out.buffers[k].dtype == frame.buffers[k].dtype and out.buffers[k].shape == frame.buffers[k].shape
    assert {k: v for k, v in out.meta.items() if k != "delivery"} == frame.meta
    assert out.meta["delivery"]["mode"] in ("analog", "coded", "abstraction")


@pytest.mark.parametrize("mode", ["analog", "abstraction"])
def test_identical_seeds_identical_output(mode):
    cfg = {"mode": mode, "model": "rayleigh_block", "mcs": 5}
    a = ChannelEmulator(cfg, seed=5)
    b = ChannelEmulator(cfg, seed=5)
    for _ in range(3):
        fa, ra = a.deliver(_handoff())
        fb, rb = b.deliver(_handoff())
        np.testing.assert_array_equal(fa.buffers["tokens"], fb.buffers["tokens"])
        da, db = ra.to_dict(), rb.to_dict()
        da.pop("processing_s"), db.pop("processing_s")
        assert da == db
    other, _ = ChannelEmulator(cfg, seed=6).deliver(_handoff())
    assert mode == "abstraction" or not np.array_equal(other.buffers["tokens"], fa.buffers["tokens"])


def test_analog_keeps_side_exact_and_counts_airtime():
    em = ChannelEmulator({"mode": "analog", "snr_db": 0.0}, seed=1)
    out, rec = em.deliver(_handoff())
    _check_shape(out, _handoff())
    np.testing.assert_array_equal(out.buffers["map"], np.arange(32, dtype=np.uint8))
    np.testing.assert_array_equal(out.buffers["extra"], np.ones(3, np.int32))  # unlisted -> side
    assert rec.analog_values == LATENT.size and 0.3 < rec.nmse < 0.7  # MMSE at 0 dB: 0.5
    analog_symbols = LATENT.size // 2
    assert rec.symbols > analog_symbols and rec.airtime_s == pytest.approx(rec.symbols / 1e6)
    assert rec.coded_bits > 0 and rec.mcs == -1 and math.isnan(rec.code_rate)
    cols = rec.to_columns()
    assert cols["tx_mode"] == "analog" and cols["ch_symbols"] == rec.symbols


def test_distance_based_state_and_per_request_override():
    em = ChannelEmulator({"mode": "analog"}, seed=2)
    _, rec = em.deliver(_handoff())
    assert 200 <= rec.distance_m <= 300 and rec.snr_db == pytest.approx(30 + rec.gain_db)
    _, rec = em.deliver(_handoff(), link={"link_model": "awgn", "tx_mode": "abstraction", "distance_m": 200.0,
                                          "snr_db": None})
    assert rec.mode == "abstraction" and rec.snr_db == pytest.approx(2.18, abs=0.01)
    state = ChannelProcess({"snr_db": 20.0}, seed=0).reset()
    _, rec = em.deliver(_handoff(), state)
    assert rec.snr_db == 20.0


def test_frame_without_roles_goes_digital_in_coded_mode_and_gets_corrupted():
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    frame = Frame("image", meta={"request_id": "c"}, buffers={"image": image})
    clean_em = ChannelEmulator({"mode": "coded", "snr_db": 12.0, "mcs": 9, "residual": "corrupt"}, seed=3)
    out, rec = clean_em.deliver(frame)
    _check_shape(out, frame)
    np.testing.assert_array_equal(out.buffers["image"], image)
    assert rec.ber == 0 and rec.bler == 0 and rec.payload_bits == image.nbytes * 8
    noisy = ChannelEmulator({"mode": "coded", "snr_db": 2.0, "mcs": 16, "residual": "corrupt"}, seed=3)
    out, rec = noisy.deliver(frame)
    assert rec.bler > 0.5 and rec.ber > 0 and not np.array_equal(out.buffers["image"], image)
    assert rec.retransmissions == 0


def test_harq_retransmits_until_clean():
    image = np.random.default_rng(2).integers(0, 256, 1500, dtype=np.uint8)
    frame = Frame("image", buffers={"image": image})
    em = ChannelEmulator({"mode": "coded", "snr_db": 1.5, "mcs": 9, "residual": "harq",
                          "max_retransmissions": 4}, seed=4)
    out, rec = em.deliver(frame)
    assert rec.retransmissions >= 1 and rec.block_errors >= 1 and rec.residual_block_errors == 0
    np.testing.assert_array_equal(out.buffers["image"], image)
    one_shot = ChannelEmulator({"mode": "coded", "snr_db": 1.5, "mcs": 9, "residual": "corrupt"}, seed=4)
    _, rec1 = one_shot.deliver(frame)
    assert rec.airtime_s > rec1.airtime_s


def test_abstraction_link_adaptation_and_tdl():
    em = ChannelEmulator({"mode": "abstraction", "mcs": "auto", "bler_target": 0.1, "snr_db": 15.0}, seed=0)
    _, hi = em.deliver(_handoff())
    em = ChannelEmulator({"mode": "abstraction", "mcs": "auto", "bler_target": 0.1, "snr_db": 0.0}, seed=0)
    _, lo = em.deliver(_handoff())
    assert hi.mcs > lo.mcs and hi.airtime_s < lo.airtime_s
    tdl = ChannelEmulator({"mode": "analog", "model": "tdl_a", "snr_db": 15.0,
                           "ofdm": {"csi": "ls_lmmse"}}, seed=0)
    out, rec = tdl.deliver(_handoff())
    slot_s = 14 * (64 + 8) / 1e6
    assert rec.airtime_s == pytest.approx(round(rec.airtime_s / slot_s) * slot_s)
    assert 0 < rec.nmse < 0.5


def test_segmentation_fits_sionna_encoder_for_every_mcs():
    from sionna.phy.fec.ldpc import LDPC5GEncoder

    from megbed.channel_emu.mcs import segment

    for mcs in range(3, 29):
        for bits in (100, 262_144, 1_048_576):
            s = segment(bits, mcs)
            LDPC5GEncoder(s.k, s.n, num_bits_per_symbol=s.bits_per_symbol)
            assert s.num_blocks * s.info_per_block >= bits and s.n % s.bits_per_symbol == 0
