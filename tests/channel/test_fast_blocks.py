"""The hand-written fast blocks against what they replace: the noise source against the normal law, the analog fast
path against the generic complex-symbol path, the numpy BLER table against Sionna's ``get_bler``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from megbed.channel_emu.analog import transmit_values
from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.links import make_link
from megbed.channel_emu.noise import NoiseSource


def test_noise_source_is_standard_normal_and_seeded():
    src = NoiseSource(11)
    # Odd sizes and many calls exercise the pair layout (cosine half, sine half, an odd n's unused sine).
    x = np.concatenate([src.standard_normal(n) for n in [1, 3, 16, 1001] * 20 + [2_000_000]])
    assert abs(float(x.mean())) < 5 / math.sqrt(x.size) and abs(float(x.var()) - 1) < 5 * math.sqrt(2 / x.size)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    for t in (2.0, 3.0, 4.0):  # the tails (Box-Muller radius from a 40-bit uniform)
        p = 2 * stats.norm.sf(t)
        assert abs(np.count_nonzero(np.abs(x) > t) - p * x.size) < 5 * math.sqrt(p * x.size)
    e = src.exponential(200_000)
    assert abs(float(e.mean()) - 1) < 0.01 and stats.kstest(e, "expon").pvalue > 1e-3
    np.testing.assert_array_equal(NoiseSource(3).standard_normal(999), NoiseSource(3).standard_normal(999))
    assert not np.array_equal(NoiseSource(3).standard_normal(99), NoiseSource(4).standard_normal(99))


def test_box_muller_cos_sin_polynomials_match_float64_on_every_quadrant():
    from megbed.channel_emu.noise import _polar_pairs

    k = np.random.default_rng(0).integers(0, 1 << 24, 200_001).astype(np.int32)
    k[:6] = [0, 1 << 22, 1 << 23, 3 << 22, (1 << 22) - 1, (1 << 24) - 1]  # quadrant edges
    n = 2 * k.size - 1  # odd: the last pair gives its cosine only
    out = np.full(n + 1, 7.0, np.float32)
    _polar_pairs(np.full(k.size, -0.5, np.float32), k, n, out[:n])  # log v = -1/2: r = 1
    theta = k * (2 * math.pi / 2**24)
    np.testing.assert_allclose(out[:k.size], np.cos(theta), rtol=0, atol=3e-7)
    np.testing.assert_allclose(out[k.size:n], np.sin(theta[:n - k.size]), rtol=0, atol=3e-7)
    assert out[n] == 7.0


@pytest.mark.parametrize("model", ["rayleigh_block", "rayleigh_symbol"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_analog_fast_path_equals_generic_path(model, dtype):
    # impl="sionna" on these links takes the generic path (complex symbols through link.transmit), which draws the
    # same numbers in the same order: both must deliver the same values to float rounding.
    x = {"a": (np.random.default_rng(1).standard_normal((3, 50)) * 2).astype(dtype),
         "b": np.random.default_rng(2).standard_normal(41).astype(dtype)}  # odd total: a padded last symbol
    fast = transmit_values(x, make_link(LinkConfig(model=model)), 6.0, NoiseSource(5), impl="fast")
    slow = transmit_values(x, make_link(LinkConfig(model=model, impl="sionna")), 6.0, NoiseSource(5), impl="sionna")
    tol = 2e-3 if dtype == np.float16 else 1e-5
    for k in x:
        assert fast.values[k].dtype == dtype and fast.values[k].shape == x[k].shape
        np.testing.assert_allclose(fast.values[k].astype(np.float64), slow.values[k].astype(np.float64),
                                   rtol=tol, atol=tol)
    assert fast.nmse == pytest.approx(slow.nmse, rel=1e-2) and fast.symbols == slow.symbols == 96


def test_analog_sionna_awgn_block_gives_the_same_statistics():
    x = {"v": np.random.default_rng(0).standard_normal(40_000).astype(np.float16)}
    s = 10 ** (3.0 / 10)
    for impl in ("fast", "sionna"):
        res = transmit_values(x, make_link(LinkConfig(impl=impl)), 3.0, NoiseSource(1), equalizer="zf", impl=impl)
        assert res.nmse == pytest.approx(1 / s, rel=0.05)


def test_analog_non_finite_values_go_as_zero_and_show_in_nmse():
    x = {"v": np.array([1.0, np.nan, -2.0, np.inf], np.float32)}
    res = transmit_values(x, make_link(LinkConfig()), 20.0, NoiseSource(0))
    assert np.all(np.isfinite(res.values["v"])) and math.isnan(res.nmse)


def test_bler_table_matches_sionna_get_bler():
    from megbed.channel_emu.mcs import CBS_GRID, SNR_GRID_DB, bler, bler_table

    rng = np.random.default_rng(0)
    mcs = rng.integers(3, 29, 400)
    cbs = rng.integers(24, 8449, 400)
    # Keep away from the midpoints between grid points, where Sionna (float32) and the table (float64) may round
    # to different neighbours.
    snr = SNR_GRID_DB[0] + SNR_GRID_DB[2] * (rng.integers(-8, 170, 400) + rng.uniform(-0.4, 0.4, 400))
    table = bler_table()
    for m, c, x in zip(mcs, cbs, snr, strict=True):
        want = bler(int(m), int(c), float(x), impl="sionna")[0]
        assert table.lookup(m, c, x)[0] == want and table.scalar(int(m), int(c), float(x)) == want
    assert table.n_cbs == len(range(*CBS_GRID))
