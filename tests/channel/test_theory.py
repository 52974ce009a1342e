"""The physical layer against closed forms (statistical tolerances sized for ~1e5 bits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erfc

from megbed.channel_emu.simulate import simulate


def q(x):
    return 0.5 * erfc(x / math.sqrt(2))


def _tol(p, n, sigmas=5):
    return sigmas * math.sqrt(p * (1 - p) / n) + 1e-4


@pytest.mark.parametrize("modulation,ebno_db", [("bpsk", 4.0), ("qpsk", 4.0), ("qam16", 6.0)])
def test_uncoded_ber_awgn(modulation, ebno_db):
    g = 10 ** (ebno_db / 10)
    if modulation in ("bpsk", "qpsk"):
        theory = q(math.sqrt(2 * g))
    else:  # exact Gray 16-QAM
        a = math.sqrt(4 * g / 5)
        theory = 0.75 * q(a) + 0.5 * q(3 * a) - 0.25 * q(5 * a)
    n = 120_000
    out = simulate("uncoded", modulation, ebno_db, n, seed=1)
    assert out["ber"] == pytest.approx(theory, abs=_tol(theory, n))


def test_uncoded_qpsk_rayleigh_average_ber():
    g = 10 ** (8.0 / 10)
    theory = 0.5 * (1 - math.sqrt(g / (1 + g)))
    n = 100_000
    out = simulate("uncoded", "qpsk", 8.0, n, model="rayleigh_symbol", seed=2)
    # Errors come in fades: allow for the correlation within a symbol's two bits.
    assert out["ber"] == pytest.approx(theory, abs=2 * _tol(theory, n))


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_analog_nmse_is_one_over_snr(snr_db):
    from megbed.channel_emu.analog import transmit_values
    from megbed.channel_emu.config import LinkConfig
    from megbed.channel_emu.links import make_link
    from megbed.channel_emu.noise import NoiseSource

    rng = np.random.default_rng(0)
    noise = NoiseSource(0)
    x = rng.standard_normal(40_000).astype(np.float32)
    link = make_link(LinkConfig(snr_db=snr_db))
    zf = transmit_values({"x": x}, link, snr_db, noise, equalizer="zf")
    mmse = transmit_values({"x": x}, link, snr_db, noise, equalizer="mmse")
    s = 10 ** (snr_db / 10)
    assert zf.nmse == pytest.approx(1 / s, rel=0.05)
    assert mmse.nmse == pytest.approx(1 / (1 + s), rel=0.05)
    assert zf.symbols == 20_000 and zf.airtime_s == pytest.approx(0.02)


def test_coded_bler_low_above_the_waterfall():
    # QPSK r~0.51 (MCS 7): the waterfall of a ~4k-bit 5G code is near Eb/N0 1.5 dB; at 3 dB no block fails.
    out = simulate("coded", "qpsk", 3.0, 40_000, seed=3)
    assert out["blocks"] >= 5 and out["bler"] < 1e-2 and out["ber"] == 0.0
    low = simulate("coded", "qpsk", -1.0, 8_000, seed=3)
    assert low["bler"] > 0.5


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_analog_mmse_nmse_on_per_symbol_rayleigh_matches_theory(snr_db):
    # Per symbol no_eff = N0 / g, g = |h|^2 ~ Exp(1); the MMSE estimate's error is 1 / (1 + SNR g) of the value's
    # power, so NMSE = E[1 / (1 + SNR g)] = e^(1/SNR) E1(1/SNR) / SNR. This checks the fading draws (Exp(1) by
    # inversion), the noise and the per-symbol equaliser together.
    from scipy.special import exp1

    from megbed.channel_emu.analog import transmit_values
    from megbed.channel_emu.config import LinkConfig
    from megbed.channel_emu.links import make_link
    from megbed.channel_emu.noise import NoiseSource

    x = np.random.default_rng(3).standard_normal(200_000).astype(np.float32)
    s = 10 ** (snr_db / 10)
    res = transmit_values({"x": x}, make_link(LinkConfig(model="rayleigh_symbol")), snr_db, NoiseSource(4))
    assert res.nmse == pytest.approx(math.exp(1 / s) * exp1(1 / s) / s, rel=0.03)
