from __future__ import annotations

import numpy as np
import pytest
import torch

from megbed.testbed.ldm.feature_metrics import (
    ClipFeatures,
    FeatureMetricError,
    clip_score,
    fd_clip,
    frechet_distance,
    lpips_distance,
    optional_metrics,
)
from megbed.testing.random_weight_models import tokenizer_vocab_size, write_clip_tokenizer


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    v = tokenizer_vocab_size()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=v - 2, eos_token_id=v - 1,
                         pad_token_id=v - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(FeatureMetricError, match="matching shapes"):
        frechet_distance(mu1, np.diag(v1), mu2[:2], np.diag(v2[:2]))


def test_clip_score_and_fd_with_local_weights(tiny_clip_dir):
    clip = ClipFeatures(tiny_clip_dir)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 64, generator=g)
    score = clip_score(images, ["a cat", "a dog", "the sun"], clip)
    assert score.ok and len(score.per_image) == 3
    assert all(0.0 <= v <= 100.0 for v in score.per_image)
    assert score.value == pytest.approx(np.mean(score.per_image))
    same = fd_clip(images, images, clip)
    other = fd_clip(images, torch.rand(4, 3, 32, 32, generator=g) * 0.2, clip)
    assert same.value == pytest.approx(0.0, abs=1e-6) and other.value > same.value
    with pytest.raises(FeatureMetricError, match="2 prompts for 3 images"):
        clip_score(images, ["a", "b"], clip)


def test_everything_skips_cleanly_without_weights(tmp_path):
    images = torch.rand(2, 3, 32, 32)
    out = optional_metrics(images, images, ["a", "b"])
    assert set(out) == {"clip_score", "fd_clip", "lpips"}
    for outcome in out.values():
        assert not outcome.ok and outcome.value is None and outcome.skipped.startswith(outcome.name + " skipped")
    assert "CLIP" in out["clip_score"].skipped
    lp = lpips_distance(images, images)
    assert not lp.ok and "lpips" in lp.skipped
    with pytest.raises(FeatureMetricError, match="no config.json"):
        ClipFeatures(tmp_path)
