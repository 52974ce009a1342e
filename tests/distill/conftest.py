"""A small latent cache over the tiny SD-1.5-shaped model (``sd15`` in tests/conftest.py: random weights, 64x64 images,
4x8x8 latents)."""

from __future__ import annotations

import pytest

from megbed.testbed.distill.cache import build_cache
from megbed.testbed.distill.config import DistillConfig
from megbed.testbed.distill.prompts import training_prompts
from megbed.testing.torch_threads import torch_threads

# N in {2, 3}, reference at 3 steps: the smallest grid where N < N_ref exists.
TINY_RECIPE = {"num_prompts": 4, "val_prompts": 1, "n_min": 2, "n_max": 3, "steps": 6, "batch_size": 3,
               "warmup_steps": 2, "lr": 1e-3, "lr_min": 1e-4, "checkpoint_every": 2, "val_every": 0,
               "export_dtype": "float32", "noise": {"kind": "snr", "snr_min_db": 0.0, "snr_max_db": 20.0,
                                                    "clean_fraction": 0.25, "link": {"model": "awgn"}}}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_here(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def recipe():
    return DistillConfig.from_dict(TINY_RECIPE)


@pytest.fixture(scope="session")
def tiny_cache(sd15, recipe, tmp_path_factory):
    prompts = training_prompts("shapes", recipe.num_prompts + recipe.val_prompts, recipe.prompt_seed)
    with torch_threads(1):
        return build_cache(tmp_path_factory.mktemp("cache"), sd15, prompts, steps=recipe.step_choices(),
                           n_ref=recipe.reference_steps, guidance_scale=recipe.guidance_scale, progress=False)
