"""The fused fast paths (issue 21) against the paths they shortcut: the half casts and the exp polynomial against
numpy, the fp16 analog kernel against the general fast path on the same draws, the per-symbol Rayleigh side block
against Sionna's EESM mapping and the generic abstraction loop (same law)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit
from scipy import stats

from megbed.channel_emu import analog
from megbed.channel_emu.analog import transmit_values
from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.digital import _exp_fading_round, abstract_transfer
from megbed.channel_emu.links import make_link
from megbed.channel_emu.mcs import eesm_beta, eesm_db, effective_snr_db
from megbed.channel_emu.noise import NoiseSource, draw_words, log_one_minus_uniform, log_one_minus_uniform_at
from megbed.channel_emu.vecmath import NATIVE_HALF, exp32, float_to_half, half_to_float, log32


@njit(cache=False)
def _widen(x, out):
    for i in range(x.size):
        out[i] = half_to_float(x[i])


@njit(cache=False)
def _narrow(x, out):
    for i in range(x.size):
        out[i] = float_to_half(x[i])


@njit(cache=False)
def _map(f, x, out):
    """out[i] = f(x[i]) for an njit scalar function f (exp32, log32)."""
    for i in range(x.size):
        out[i] = f(x[i])


half_casts = pytest.mark.skipif(not NATIVE_HALF, reason="no native half casts on this CPU (fused fp16 path off)")


@half_casts
def test_half_casts_are_numpys_on_every_half_and_on_floats_of_every_scale():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(bits.size, np.float32)
    _widen(bits, got)
    ref = bits.view(np.float16).astype(np.float32)
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(got.view(np.uint32)[ok], ref.view(np.uint32)[ok])
    assert np.all(np.isnan(got[~ok]))
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000) * s for s in (1e-7, 1e-5, 1e-2, 1.0, 1e3, 6e4, 1e6)]
                       + [[0.0, -0.0, 65504.0, 65519.99, 65520.0, np.inf, -np.inf, 2.0**-25, 3 * 2.0**-26]])
    x = x.astype(np.float32)
    back = np.empty(x.size, np.uint16)
    _narrow(x, back)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(back, x.astype(np.float16).view(np.uint16))  # ties to even, inf past 65520


def test_exp_polynomial_is_within_one_and_a_half_ulp():
    rng = np.random.default_rng(1)
    y = np.concatenate([-rng.uniform(0, 87.3, 300_000), -rng.uniform(0, 1, 300_000), [0.0, -87.3]]).astype(np.float32)
    got = np.empty(y.size, np.float32)
    _map(exp32, y, got)
    ref = np.exp(y.astype(np.float64))
    assert got[y == 0.0][0] == 1.0
    assert np.max(np.abs(got - ref) / np.spacing(ref.astype(np.float32))) < 1.5
    below = np.array([-87.31, -100.0, -np.inf], np.float32)
    _map(exp32, below, got[:3])
    assert np.all(got[:3] == 0.0)


def test_log_polynomial_is_within_one_ulp_on_the_draws_range_and_beyond():
    rng = np.random.default_rng(2)
    # (0, 1] as the draws give it (1 - u of 40 bits, down to 2^-40) and below, then any positive normal float.
    x = np.concatenate([1.0 - rng.random(400_000), 2.0 ** -rng.uniform(0, 53, 200_000),
                        10.0 ** rng.uniform(-37, 38, 200_000), [1.0, 2.0**-40, 2.0**-53, 0.5, 2.0, 1.17549435e-38,
                                                                 3.4e38, np.nextafter(np.float32(1), np.float32(0))]])
    x = x.astype(np.float32)
    got = np.empty(x.size, np.float32)
    _map(log32, x, got)
    ref = np.log(x.astype(np.float64))
    ulp = np.abs(got - ref) / np.spacing(np.abs(ref).astype(np.float32))
    assert np.max(ulp[ref != 0]) < 1.0
    one = got[x == 1.0]
    assert np.all(one == 0.0) and not np.any(np.signbit(one))  # -log(1) must be +0 (the exponential draws)


def _general(monkeypatch, *args, **kw):
    monkeypatch.setattr(analog, "_transmit_half", lambda *a: None)
    try:
        return transmit_values(*args, **kw)
    finally:
        monkeypatch.undo()


@half_casts
@pytest.mark.parametrize("model", ["awgn", "rayleigh_block", "rayleigh_symbol"])
@pytest.mark.parametrize("equalizer", ["mmse", "zf"])
# One latent; several buffers with an odd total (padding), one ending exactly at S, one value, two buffers of S.
# Two buffers across the kernel's symbol blocks (analog._BLOCK) with a segment edge inside a block.
@pytest.mark.parametrize("sizes", [(4, 64, 64), ((3, 50), 41, 1, 0), ((10,), (3,), (7,)), (1,), ((5,), (5,)),
                                   ((3001,), (2500,))])
def test_fused_fp16_path_equals_the_general_fast_path(monkeypatch, model, equalizer, sizes):
    rng = np.random.default_rng(7)
    shapes = [sizes] if isinstance(sizes[0], int) else list(sizes)
    x = {f"b{i}": (rng.standard_normal(s) * (i + 1)).astype(np.float16) for i, s in enumerate(shapes)}
    link = make_link(LinkConfig(model=model))
    fused = transmit_values(x, link, 3.0, NoiseSource(9), equalizer=equalizer)
    general = _general(monkeypatch, x, link, 3.0, NoiseSource(9), equalizer=equalizer)
    for k in x:
        assert fused.values[k].dtype == np.float16 and fused.values[k].shape == x[k].shape
        # The same draws and float32 arithmetic; contraction into FMAs may move a value by one fp16 rounding step.
        np.testing.assert_allclose(fused.values[k].astype(np.float64), general.values[k].astype(np.float64),
                                   rtol=1e-3, atol=1e-6)
        assert np.count_nonzero(fused.values[k] != general.values[k]) <= max(1, x[k].size // 100)
    assert fused.energy == pytest.approx(general.energy, rel=1e-12)
    assert fused.nmse == pytest.approx(general.nmse, rel=1e-3)
    assert (fused.symbols, fused.airtime_s, fused.num_values) == (general.symbols, general.airtime_s,
                                                                  general.num_values)
    # Both leave the noise source at the same point: the next draws agree.
    a, b = NoiseSource(9), NoiseSource(9)
    transmit_values(x, link, 3.0, a, equalizer=equalizer)
    _general(monkeypatch, x, link, 3.0, b, equalizer=equalizer)
    np.testing.assert_array_equal(a.standard_normal(5), b.standard_normal(5))


def test_fused_fp16_path_sends_non_finite_values_as_zero_like_the_general_path():
    x = {"v": np.array([1.0, np.nan, -2.0, np.inf], np.float16)}
    res = transmit_values(x, make_link(LinkConfig()), 20.0, NoiseSource(0))
    assert np.all(np.isfinite(res.values["v"])) and math.isnan(res.nmse)


@pytest.mark.parametrize("mcs, snr", [(3, 1.6), (10, 30.0), (27, 1000.0), (0, 0.01)])
def test_exp_fading_round_is_the_eesm_of_its_own_exp1_gains(mcs, snr):
    beta, lo, hi = eesm_beta(mcs)
    acc, e, effs = np.empty((3, 5000), np.float32), np.empty(5000, np.float32), np.empty(3)
    state = np.zeros(1, np.uint64)
    _exp_fading_round(123, state, acc, True, snr, beta, lo, hi, e, effs)
    first = acc.copy()
    np.testing.assert_allclose(effs, effective_snr_db(first * np.float32(snr), mcs), atol=5e-5)
    _exp_fading_round(123, state, acc, False, snr, beta, lo, hi, e, effs)  # Chase
    assert np.all(acc > first) and not np.array_equal(acc - first, first)
    assert state[0] == 2 * draw_words(acc.size)  # two rounds, two draws a word
    np.testing.assert_allclose(effs, effective_snr_db(acc * np.float32(snr), mcs), atol=5e-5)
    # A key given as a Python int (typed int64) draws as its bits: the same gains as from np.uint64.
    big, again = np.empty((1, 64), np.float32), np.empty((1, 64), np.float32)
    _exp_fading_round(2**63 - 5, np.zeros(1, np.uint64), big, True, snr, beta, lo, hi, e, effs)
    _exp_fading_round(np.uint64(2**63 - 5), np.zeros(1, np.uint64), again, True, snr, beta, lo, hi, e, effs)
    np.testing.assert_array_equal(big, again)
    assert eesm_db(0.0, 0, beta, lo, hi) == -300.0


def test_fade_draws_are_the_same_whichever_blocks_ask_for_them():
    # Two draws a word: a block may start on either half, and blocks must give the draws one call gives.
    key, start = np.uint64(12345), np.uint64(7)
    whole = np.empty(1001, np.float32)
    log_one_minus_uniform_at(key, start, 0, whole)
    for cuts in [(0, 1, 2, 3, 1001), (0, 5, 500, 1000, 1001), (0, 999, 1000, 1001)]:
        got = np.full(1001, np.nan, np.float32)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            log_one_minus_uniform_at(key, start, a, got[a:b])
        np.testing.assert_array_equal(got, whole)
    state = np.array([start], np.uint64)
    np.testing.assert_array_equal(log_one_minus_uniform(np.uint64(12345), state, 1001), whole)
    assert state[0] == start + draw_words(1001) == start + 501
    assert np.all(whole <= 0) and np.all(np.isfinite(whole))


def test_exp_fading_gains_are_exp1():
    acc = np.empty((1, 400_000), np.float32)
    _exp_fading_round(5, np.zeros(1, np.uint64), acc, True, 1.0, 1.0, 0.0, 1e9, np.empty(acc.size, np.float32),
                      np.empty(1))
    g = acc[0]
    assert abs(float(g.mean()) - 1) < 5 / math.sqrt(g.size) and stats.kstest(g, "expon").pvalue > 1e-3
    p = math.exp(-6.0)  # the tail
    assert abs(np.count_nonzero(g > 6.0) - p * g.size) < 5 * math.sqrt(p * g.size)


def test_rayleigh_side_block_fast_path_has_the_generic_loops_law(monkeypatch):
    # A 4-block payload at an SNR where a block fails ~ half the time: transmissions, failures and residual blocks
    # over many transfers agree with the generic loop (the same law from other numbers).
    link = make_link(LinkConfig(model="rayleigh_symbol"))
    runs = 600

    def stats_of(fast: bool) -> np.ndarray:
        if not fast:
            monkeypatch.setattr(link, "iid_exp_gains", False)
        rng = np.random.default_rng(11)
        out = np.array([[r.transmissions, r.failures, r.residual_blocks, r.airtime_s * 1e3]
                        for r in (abstract_transfer(None, 4 * 3800, 7, link, 1.2, rng, True, 2, corrupt=False)
                                  for _ in range(runs))])
        monkeypatch.undo()
        return out

    fast, slow = stats_of(True), stats_of(False)
    assert 0.2 < fast[:, 1].mean() / (4 * fast[:, 0].mean()) < 0.9  # the regime where both paths matter
    for j in range(4):
        se = math.sqrt((fast[:, j].var() + slow[:, j].var()) / runs) + 1e-12
        assert abs(fast[:, j].mean() - slow[:, j].mean()) < 5 * se
