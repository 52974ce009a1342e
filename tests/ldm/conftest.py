"""Tiny SD-1.5- and SDXL-shaped models (random weights, hand-written configs and tokenizer), built once per session
into a temp folder with save_pretrained and loaded back through load_pipeline (from_pretrained)."""

from __future__ import annotations

import pytest

from megbed.testbed.ldm.model import load_pipeline
from megbed.testing.random_weight_models import build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_here(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_sd15"), "sd15", scheduler="ddim", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl", scheduler="euler", seed=1)


@pytest.fixture(scope="session")
def sd15(tiny_sd15_dir):
    return load_pipeline(tiny_sd15_dir, device="cpu")


@pytest.fixture(scope="session")
def sdxl(tiny_sdxl_dir):
    return load_pipeline(tiny_sdxl_dir, device="cpu")
