from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from megbed.channel_emu.config import LinkConfig, LinkConfigError, load
from megbed.channel_emu.pathloss import path_loss_db, snr_db_at
from megbed.channel_emu.process import ChannelProcess, ReplayProcess, ar1_rho
from megbed.channel_emu.record import COLUMNS, DeliveryRecord

SCHEMA_LINK_COLUMNS = ("link_model, tx_mode, distance_m, ch_snr_db, ch_gain_db, ch_mcs, ch_code_rate, ch_payload_bits, "
                       "ch_coded_bits, ch_symbols, ch_airtime_s, ch_retransmissions, ch_ber, ch_bler, ch_nmse, "
                       "ch_bandwidth_hz, ch_bandwidth_scale")


def test_pathloss_matches_the_paper_formula():
    # 35.3 + 37.6 log10(200) = 121.819 dB -> 30 - 121.819 + 94 = +2.18 dB; at 300 m: -4.44 dB.
    assert path_loss_db(200.0) == pytest.approx(35.3 + 37.6 * math.log10(200.0))
    assert snr_db_at(200.0) == pytest.approx(30 - (35.3 + 37.6 * math.log10(200)) + 94, abs=1e-9)
    assert snr_db_at(200.0) == pytest.approx(2.18, abs=0.01)
    assert snr_db_at(300.0) == pytest.approx(-4.44, abs=0.01)


def test_config_errors_name_the_bad_key(tmp_path):
    with pytest.raises(LinkConfigError, match="process.d_mn_m"):
        LinkConfig.from_dict({"process": {"d_mn_m": 3}})
    with pytest.raises(LinkConfigError, match="mode"):
        LinkConfig.from_dict({"mode": "digital"})
    with pytest.raises(LinkConfigError, match="snr_db: must be a number"):
        LinkConfig.from_dict({"snr_db": "high"})
    with pytest.raises(LinkConfigError, match="mcs"):
        LinkConfig.from_dict({"mcs": 1})
    y = tmp_path / "link.yaml"
    y.write_text("mode: coded\nmodel: rayleigh_block\nmcs: auto\nprocess:\n  distance: random_walk\n")
    cfg = load(y)
    assert (cfg.mode, cfg.model, cfg.mcs, cfg.process.distance) == ("coded", "rayleigh_block", "auto", "random_walk")
    t = tmp_path / "link.toml"
    t.write_text('mode = "abstraction"\nsnr_db = 5.0\n[ofdm]\ncsi = "perfect"\n')
    assert load(t).ofdm.csi == "perfect"
    bad = tmp_path / "bad.toml"
    bad.write_text("[ofdm]\nfft = 3\n")
    with pytest.raises(LinkConfigError, match="bad.toml.*ofdm.fft"):
        load(bad)


def test_record_columns_are_the_schema_names():
    rec = DeliveryRecord(mode="analog", model="awgn")
    assert tuple(rec.to_columns()) == COLUMNS == tuple(SCHEMA_LINK_COLUMNS.split(", "))


def test_process_seeded_and_within_bounds():
    cfg = LinkConfig(model="rayleigh_block", process={"distance": "random_walk", "distance_step_m": 20.0})
    a = ChannelProcess(cfg, seed=3).record(200)
    b = ChannelProcess(cfg, seed=3).record(200)
    pd.testing.assert_frame_equal(a, b)
    assert a["distance_m"].between(200, 300).all()
    assert not a.equals(ChannelProcess(cfg, seed=4).record(200))
    np.testing.assert_allclose(a["snr_db"], 30 + a["gain_db"])
    np.testing.assert_allclose(a["gain_db"], -a["path_loss_db"] + a["fading_gain_db"] + 94, atol=1e-9)


def test_ar1_correlation_and_rayleigh_marginal():
    cfg = LinkConfig(model="rayleigh_block", snr_db=10.0, process={"doppler_hz": 0.05, "request_interval_s": 3.0})
    proc = ChannelProcess(cfg, seed=0)
    assert proc.rho == pytest.approx(ar1_rho(0.05, 3.0))
    df = proc.record(20000)
    h = df["fading_re"].to_numpy() + 1j * df["fading_im"].to_numpy()
    assert np.mean(np.abs(h) ** 2) == pytest.approx(1.0, abs=0.05)  # unit-power Rayleigh at every step
    corr = np.mean(h[1:] * np.conj(h[:-1])).real
    assert corr == pytest.approx(proc.rho, abs=0.03)
    # The paper's default: i.i.d. uniform distance, no fading for AWGN.
    paper = ChannelProcess(None, seed=1).record(2000)
    assert (paper["fading_gain_db"] == 0).all() and paper["distance_m"].between(200, 300).all()
    assert paper["snr_db"].min() > -4.45 and paper["snr_db"].max() < 2.19


def test_recorded_trace_replays_exactly(tmp_path):
    proc = ChannelProcess(LinkConfig(model="rayleigh_block"), seed=11)
    path = proc.save(tmp_path / "trace.parquet", 50)
    rec = proc.record(50)
    replay = ReplayProcess(path)
    states = [replay.reset()] + [replay.step() for _ in range(49)]
    assert [s.to_dict() for s in states] == rec.to_dict("records")
    with pytest.raises(IndexError):
        replay.step()
    assert replay.reset() == states[0]


def test_process_without_config_for_the_policy_env():
    proc = ChannelProcess(seed=5)
    s0 = proc.reset()
    s1 = proc.step()
    assert (s0.index, s1.index) == (0, 1) and math.isfinite(s1.snr_db)
    assert proc.reset(5) == s0


def test_exponent_numbers_in_yaml_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1.0e6 and 1e-7 as strings; the old coercion never ran for plain float fields, so a
    # link file's `bandwidth_hz: 1.0e6` got through as text and failed later as a comparison of str with int.
    y = tmp_path / "link.yaml"
    y.write_text("bandwidth_hz: 1.0e6\nsymbol_rate_hz: 2e6\nofdm: {delay_spread_s: 1e-7, carrier_hz: 2.4E+9}\n")
    cfg = load(y)
    assert (cfg.bandwidth_hz, cfg.symbol_rate_hz) == (1e6, 2e6)
    assert (cfg.ofdm.delay_spread_s, cfg.ofdm.carrier_hz) == (1e-7, 2.4e9)
    y.write_text('bandwidth_hz: "1.0e6"\n')  # quoted: text, refused naming the key
    with pytest.raises(LinkConfigError, match=r"link.yaml: bandwidth_hz: must be a number, got '1.0e6'"):
        load(y)


def test_every_problem_of_a_link_file_is_named_at_once():
    with pytest.raises(LinkConfigError) as info:
        LinkConfig.from_dict({"mode": "digital", "process": {"d_min_m": 400.0, "fading": "rician"}, "mcs": True})
    text = str(info.value)
    for key in ("mode:", "process.d_max_m: 300.0 is below d_min_m=400", "process.fading:", "mcs:"):
        assert key in text, key
    with pytest.raises(LinkConfigError, match="process.distance: 'fixd' is not one of"):
        LinkConfig(process={"distance": "fixd"})  # keyword construction raises the config's own error too
