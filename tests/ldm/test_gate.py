"""The 'auto' UE decoder: the noise estimate, the gate rule, per-latent routing, calibration, the decode stage."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from megbed.testbed.distill.gate_fit import GateFitError, fit_gate
from megbed.testbed.ldm.gate import GatedDecoder, GateRule, latent_noise_ratio, read_gate
from megbed.testbed.ldm.stages import DecodeStage


def _smooth_latents(b: int = 6, seed: int = 0) -> torch.Tensor:
    """Flat shapes on a flat background (what the shipped models' latents look like), ``[b, 4, 16, 16]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 4, 16, 16)
    for i in range(b):
        level = torch.randn(4, 1, 1, generator=g)
        r0, c0 = torch.randint(0, 8, (2,), generator=g).tolist()
        x[i] = 0.3 * torch.randn(4, 1, 1, generator=g)
        x[i, :, r0:r0 + 6, c0:c0 + 6] += level
    return x


def test_noise_ratio_is_small_on_smooth_latents_and_tracks_added_noise():
    x = _smooth_latents()
    clean = latent_noise_ratio(x)
    assert clean.shape == (6,) and float(clean.max()) < 0.02
    rms = x.pow(2).mean(dim=(1, 2, 3)).sqrt()
    g = torch.Generator().manual_seed(1)
    last = clean
    for sigma, rtol in ((0.05, 0.35), (0.2, 0.25), (0.5, 0.25)):
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        ratio = latent_noise_ratio(noisy)
        est = ratio * noisy.pow(2).mean(dim=(1, 2, 3)).sqrt()
        # the estimated noise std is close to the truth (shape edges bias it up when the noise is weak)
        assert torch.allclose(est, torch.full_like(est, sigma), rtol=rtol), (sigma, est)
        assert bool((ratio > last).all())
        last = ratio
    assert bool((latent_noise_ratio(x + 0.2 * torch.randn(x.shape, generator=g)) > 0.1 * 0.2 / rms.max()).all())
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        latent_noise_ratio(torch.zeros(4, 16, 16))


def test_gate_rule_decides_and_round_trips():
    rule = GateRule(noise_ratio_max=0.3, merge_ratio_min=0.75)
    r = torch.tensor([0.1, 0.5, 0.1, 0.29])
    assert rule.use_distilled(r, None).tolist() == [False, True, False, False]
    assert rule.use_distilled(r, 0.75).tolist() == [True, True, True, True]
    assert rule.use_distilled(r, torch.tensor([0.0, 0.0, 0.75, 0.5])).tolist() == [False, True, True, False]
    assert GateRule.from_json(rule.to_json()) == rule
    never = GateRule(0.3)
    assert never.to_json()["merge_ratio_min"] is None and math.isinf(GateRule.from_json(never.to_json()).merge_ratio_min)
    for bad in ({}, {"noise_ratio_max": "x"}, {"noise_ratio_max": -1.0}, {"noise_ratio_max": math.nan}):
        with pytest.raises(ValueError, match="gate"):
            GateRule.from_json(bad)


class _Const:
    """A decoder that paints every image one value and counts its calls."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((latents.shape[0], 3, 8 * latents.shape[2], 8 * latents.shape[3]), self.value)


def test_gated_decoder_routes_each_latent():
    base, dist = _Const(0.0), _Const(1.0)
    dec = GatedDecoder(base, dist, GateRule(noise_ratio_max=0.3))
    x = _smooth_latents(4)
    x[1] += 0.5 * torch.randn(x[1].shape, generator=torch.Generator().manual_seed(0))
    img = dec.decode(x)
    assert img.shape == (4, 3, 128, 128)
    assert img[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert dec.last_choice == ["base", "distilled", "base", "base"]
    assert (base.calls, dist.calls) == (1, 1)
    # one decoder call when the whole batch goes one way; beta alone can force the distilled decoder
    dec = GatedDecoder(base, dist, GateRule(noise_ratio_max=0.3, merge_ratio_min=0.5))
    assert dec.decode(_smooth_latents(3), merge_ratio=0.5)[:, 0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert dec.decode(_smooth_latents(3), merge_ratio=[0.0, 0.5, 0.25])[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]


def test_decode_stage_passes_the_requests_merge_ratio():
    dec = GatedDecoder(_Const(0.0), _Const(1.0), GateRule(noise_ratio_max=10.0, merge_ratio_min=0.5))
    stage = DecodeStage(dec)
    x = _smooth_latents(1)
    assert float(stage({"latents": x, "request": SimpleNamespace(merge_ratio=0.75)})["image"].mean()) == 1.0
    assert float(stage({"latents": x, "request": SimpleNamespace(merge_ratio=0.25)})["image"].mean()) == 0.0
    assert float(stage({"latents": x})["image"].mean()) == 0.0  # no request: beta taken as 0


def _rows(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Evaluation-like rows: the distilled decoder wins by 1 nat above a noise ratio of 0.3 and at beta 0.75,
    loses by 1 nat below it."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ratio, beta = float(rng.uniform(0.0, 0.8)), float(rng.choice([0.0, 0.25, 0.5, 0.75]))
        gain = 1.0 if (ratio > 0.3 or beta >= 0.75) else -1.0
        base = float(rng.normal(6.0, 0.5))
        for dec, v in (("base", base), ("distilled", base + gain)):
            out.append({"decoder": dec, "prompt": f"p{i}", "seed": i, "n_steps": 4, "beta": beta,
                        "condition": "c", "neg_log_mse": v, "noise_ratio": ratio})
    return pd.DataFrame(out)


def test_fit_gate_finds_the_crossover():
    rule, summary = fit_gate(_rows())
    assert 0.25 < rule.noise_ratio_max < 0.35 and rule.merge_ratio_min == 0.75
    assert summary["neg_log_mse_gate"] == pytest.approx(summary["neg_log_mse_best_per_latent"])
    assert summary["neg_log_mse_gate"] > max(summary["neg_log_mse_base"], summary["neg_log_mse_distilled"])
    with pytest.raises(GateFitError, match="decoders"):
        fit_gate(_rows()[lambda d: d["decoder"] == "base"])
    with pytest.raises(GateFitError, match="noise_ratio"):
        fit_gate(_rows().drop(columns="noise_ratio"))


def test_read_gate(tmp_path):
    assert read_gate(tmp_path) is None
    (tmp_path / "distill.json").write_text(json.dumps({"summary": {}}))
    assert read_gate(tmp_path) is None
    (tmp_path / "distill.json").write_text(json.dumps({"gate": {"noise_ratio_max": 0.2, "merge_ratio_min": None}}))
    assert read_gate(tmp_path) == GateRule(0.2)
