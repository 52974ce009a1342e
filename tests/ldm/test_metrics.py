from __future__ import annotations

import math

import pytest
import torch

from megbed.testbed.ldm.metrics import (
    MSE_FLOOR,
    MetricError,
    ms_ssim,
    ms_ssim_settings,
    mse,
    neg_log_mse,
    psnr_db,
    quality,
    ssim,
)


def _images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def test_mse_psnr_and_reward_closed_form():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)
    assert mse(x, y).tolist() == pytest.approx([0.01, 0.01])
    assert psnr_db(x, y).tolist() == pytest.approx([20.0, 20.0])
    assert neg_log_mse(x, y).tolist() == pytest.approx([-math.log(0.01)] * 2)
    # a single reference broadcasts, a [C, H, W] image is a batch of one
    assert mse(x[0], y[:1]).shape == (1,)
    assert mse(x, y[:1]).tolist() == pytest.approx([0.01, 0.01])


def test_identical_images_stay_finite():
    x = _images()
    assert neg_log_mse(x, x).tolist() == pytest.approx([-math.log(MSE_FLOOR)] * 2)
    assert psnr_db(x, x).tolist() == pytest.approx([100.0, 100.0])


@pytest.mark.parametrize("size,win,levels", [(33, 3, 4), (64, 3, 5), (128, 7, 5), (160, 9, 5), (256, 11, 5)])
def test_ms_ssim_settings_for_small_images(size, win, levels):
    s = ms_ssim_settings(size, size)
    assert (s.win_size, s.levels) == (win, levels)
    assert sum(s.weights) == pytest.approx(1.0, abs=2e-4)
    assert size > (s.win_size - 1) * 16  # pytorch_msssim's own assertion
    assert size / 2 ** (s.levels - 1) >= s.win_size  # coarsest scale still one window wide


def test_ms_ssim_orders_distortions_and_is_one_on_identity():
    x = _images(size=128)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    light = (x + 0.02 * noise).clamp(0, 1)
    heavy = (x + 0.2 * noise).clamp(0, 1)
    assert ms_ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert bool((ms_ssim(light, x) > ms_ssim(heavy, x)).all())
    # at >= 161 px the library defaults apply unchanged
    from pytorch_msssim import ms_ssim as lib

    big = _images(1, 192)
    big_noisy = (big + 0.05 * torch.randn(big.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    expected = lib(big_noisy.double(), big.double(), data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(big_noisy, big), expected)


def test_small_images_use_ssim():
    x = _images(size=32)
    with pytest.raises(MetricError, match="32 px"):
        ms_ssim(x, x)
    q = quality(x, x)
    assert "ssim" in q and "ms_ssim" not in q
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert set(quality(_images(size=64), _images(size=64, seed=3))) == {"mse", "neg_log_mse", "psnr_db", "ms_ssim"}


def test_bad_inputs_name_the_problem():
    x = _images()
    with pytest.raises(MetricError, match="differ in shape"):
        mse(x, _images(size=32))
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        mse(x * 2, x)
    with pytest.raises(MetricError, match="NaN"):
        mse(x.masked_fill(x > 0.5, float("nan")), x)
    with pytest.raises(MetricError, match="float"):
        mse((x * 255).to(torch.uint8), x)
