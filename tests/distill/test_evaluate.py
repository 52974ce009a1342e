"""The distortion table: paired draws, the exact-reference corner, summaries and the printed table."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from megbed.testbed.distill.cache import build_cache
from megbed.testbed.distill.config import NoiseConfig
from megbed.testbed.distill.decoder import TrainableDecoder
from megbed.testbed.distill.evaluate import conditions, evaluate, format_tables, paired, summarize
from megbed.testbed.distill.link import TrainingLink
from megbed.testbed.distill.prompts import heldout_prompts


@pytest.fixture(scope="module")
def eval_cache(sd15, tmp_path_factory):
    return build_cache(tmp_path_factory.mktemp("eval"), sd15, heldout_prompts("shapes", 2), steps=[2, 3], n_ref=3,
                       guidance_scale=5.0, target_dtype="float32", progress=False)


def test_table_over_beta_and_snr(sd15, eval_cache):
    import torch

    other = TrainableDecoder(copy.deepcopy(sd15.pipe.vae))
    with torch.no_grad():
        other.vae.decoder.conv_out.bias.add_(0.02)
    conds = conditions([10.0, 0.0], sigmas=[0.1])
    assert [c.label for c in conds] == ["noiseless", "SNR 10 dB", "SNR 0 dB", "σ = 0.1"]
    link = TrainingLink(NoiseConfig(kind="snr"))
    rows = evaluate(eval_cache, {"base": sd15.base_decoder, "distilled": other}, steps=[2, 3], betas=[0.0, 0.5],
                    conds=conds, link=link, seed=1)
    assert len(rows) == 2 * 2 * 2 * len(conds) * 2  # decoders x prompts x N x conditions x betas
    exact = rows[(rows.decoder == "base") & (rows.n_steps == 3) & (rows.beta == 0) & (rows.kind == "none")]
    assert (exact["psnr_db"] > 70.0).all()  # N = N_ref, beta 0, noiseless: the reference up to the fp16 wire
    # Paired: both decoders saw the same received latents (same realised SNR per cell).
    snr = rows[rows.kind == "snr"].pivot_table(index=["prompt", "n_steps", "beta", "condition"], columns="decoder",
                                               values="ch_snr_db")
    assert np.allclose(snr["base"], snr["distilled"])
    noisy = rows[(rows.kind != "none") & (rows.decoder == "base")]
    assert (noisy["psnr_db"] < exact["psnr_db"].min()).all()
    low, high = (rows[(rows.decoder == "base") & (rows.condition == c)]["psnr_db"].mean()
                 for c in ("SNR 0 dB", "SNR 10 dB"))
    assert low < high
    summary = summarize(rows, [2])
    assert set(summary["steps"]) == {"2"} and len(summary) == 2 * 2 * len(conds)
    assert summary["n_images"].eq(2).all()
    pt = paired(rows, steps=[2])
    assert list(pt["condition"][:4]) == [c.label for c in conds]
    text = format_tables(rows, [2])
    assert "Δ -lnMSE" in text and "SNR 0 dB" in text and "per N" in text
