"""The training link: merged handoffs through the channel emulator's analog path, the paper's sigma, draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megbed.testbed.distill.config import NoiseConfig
from megbed.testbed.distill.link import NoiseDraw, TrainingLink


def _latent(shape=(4, 32, 32), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _nmse(y: torch.Tensor, x: torch.Tensor) -> float:
    return float(((y.double() - x.double()) ** 2).sum() / (x.double() ** 2).sum())


def test_noiseless_unmerged_latent_is_the_wire_cast_at_beta_0():
    link = TrainingLink(NoiseConfig(kind="none"))
    x = _latent()
    got = link.receive(x, 0.0, 7, NoiseDraw("none", 0))
    assert torch.equal(got.latent, x.half().float()) and got.nmse == 0.0
    merged = link.receive(x, 0.5, 7, NoiseDraw("none", 0)).latent
    assert not torch.equal(merged, got.latent)
    # Half of the tokens are copies of their window's destination, and the destinations hold averages now.
    changed = (merged != got.latent).float().mean().item()
    assert 0.5 <= changed <= 0.75


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_analog_awgn_mmse_distortion_matches_theory(snr_db):
    link = TrainingLink(NoiseConfig(kind="snr", link={"model": "awgn", "analog": {"equalizer": "mmse"}}),
                        wire_dtype="float32")
    x = _latent((4, 64, 64))
    got = link.receive(x, 0.0, 3, NoiseDraw("snr", 11, snr_db=snr_db))
    snr = 10 ** (snr_db / 10)
    assert got.snr_db == pytest.approx(snr_db)
    assert _nmse(got.latent, x) == pytest.approx(1 / (1 + snr), rel=0.05)  # MMSE on AWGN: NMSE = 1/(1 + SNR)
    assert got.nmse == pytest.approx(_nmse(got.latent, x), rel=1e-6)
    # The MMSE estimate shrinks the values by 1/(1 + 1/SNR): the decoder learns to undo what the link really does.
    gain = float((got.latent * x).sum() / (x * x).sum())
    assert gain == pytest.approx(snr / (1 + snr), rel=0.03)


def test_the_papers_sigma_noise_is_added_to_the_merged_values():
    link = TrainingLink(NoiseConfig(kind="sigma"), wire_dtype="float32")
    x = _latent((4, 64, 64))
    got = link.receive(x, 0.0, 3, NoiseDraw("sigma", 5, sigma=0.2)).latent
    assert float((got - x).std()) == pytest.approx(0.2, rel=0.02)
    assert float((got - x).mean()) == pytest.approx(0.0, abs=0.01)


def test_draws_are_seeded_and_deliveries_reproducible():
    link = TrainingLink(NoiseConfig(kind="snr", snr_min_db=-5, snr_max_db=15, clean_fraction=0.3))
    draws = [link.draw(np.random.default_rng([1, k])) for k in range(3000)]
    clean = np.mean([d.kind == "none" for d in draws])
    assert clean == pytest.approx(0.3, abs=0.03)
    snrs = np.array([d.snr_db for d in draws if d.kind == "snr"])
    assert snrs.min() >= -5 and snrs.max() <= 15 and abs(snrs.mean() - 5) < 0.5
    assert draws[:5] == [link.draw(np.random.default_rng([1, k])) for k in range(5)]
    x = _latent()
    d = NoiseDraw("snr", 123, snr_db=3.0)
    a, b = link.receive(x, 0.25, 1, d), link.receive(x, 0.25, 1, d)
    assert torch.equal(a.latent, b.latent)
    c = link.receive(x, 0.25, 1, NoiseDraw("snr", 124, snr_db=3.0))
    assert not torch.equal(a.latent, c.latent)


def test_link_kind_draws_the_snr_from_the_path_loss_model():
    # The paper's link: d ~ U[200, 300] m, PL = 35.3 + 37.6 log10 d, 30 dBm, -94 dBm noise -> SNR in [-4.4, 2.2] dB.
    link = TrainingLink(NoiseConfig(kind="link", clean_fraction=0.0))
    x = _latent((4, 16, 16))
    snrs = [link.receive(x, 0.5, 0, link.draw(np.random.default_rng(k))).snr_db for k in range(40)]
    lo = 30 + 94 - 35.3 - 37.6 * math.log10(300)
    hi = 30 + 94 - 35.3 - 37.6 * math.log10(200)
    assert all(lo - 1e-6 <= s <= hi + 1e-6 for s in snrs)
    assert max(snrs) - min(snrs) > 3.0


def test_rayleigh_block_fading_scales_the_realised_snr():
    link = TrainingLink(NoiseConfig(kind="snr", link={"model": "rayleigh_block"}))
    x = _latent((4, 16, 16))
    snrs = [link.receive(x, 0.0, 0, NoiseDraw("snr", k, snr_db=10.0)).snr_db for k in range(200)]
    gains = 10 ** ((np.array(snrs) - 10.0) / 10)
    assert gains.mean() == pytest.approx(1.0, abs=0.2)  # |h|^2 ~ Exp(1)
    assert np.std(snrs) > 2.0
