"""Tiny SD-1.5- and SDXL-shaped models (random weights, hand-written configs and tokenizer), built once per session
into a temp folder with save_pretrained and loaded back through load_pipeline (from_pretrained)."""

from __future__ import annotations

import pytest
import torch

from testbed.ldm.model import load_pipeline
from testbed.ldm.synthetic import build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models run fastest on one thread, and a second OpenMP thread spinning on a shared 2-core machine makes
    # them ~50x slower when other work is running.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
