"""Shared pytest configuration: hardware markers skip cleanly where the hardware is absent."""

from __future__ import annotations

import os

import pytest

from megbed.testing.torch_threads import torch_threads


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - any import problem means no usable GPU
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    skip_hil = pytest.mark.skip(reason="hardware-in-the-loop test: set MEGBED_HIL=1 on a real board")
    gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if gpu is None:
                gpu = _cuda_available()
            if not gpu:
                item.add_marker(skip_gpu)
        if "hil" in item.keywords and os.environ.get("MEGBED_HIL") != "1":
            item.add_marker(skip_hil)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (see :mod:`megbed.testing.torch_threads`); folders of tiny-model tests
    request it from an autouse fixture in their conftest."""
    with torch_threads(1):
        yield



def _tiny_model_fixtures(kind: str, scheduler: str, seed: int):
    """Session fixtures ``tiny_<kind>_dir`` (a random-weight ``kind``-shaped model folder: 64x64 images, 4x8x8
    latents for sd15) and ``<kind>`` (that folder loaded through ``load_pipeline`` on the CPU), built once."""

    @pytest.fixture(scope="session", name=f"tiny_{kind}_dir")
    def model_dir(tmp_path_factory):
        from megbed.testing.random_weight_models import build_tiny_model

        return build_tiny_model(tmp_path_factory.mktemp(f"tiny_{kind}"), kind, scheduler=scheduler, seed=seed)

    @pytest.fixture(scope="session", name=kind)
    def pipeline(request):
        from megbed.testbed.ldm.model import load_pipeline

        return load_pipeline(request.getfixturevalue(f"tiny_{kind}_dir"), device="cpu")

    return model_dir, pipeline


tiny_sd15_dir, sd15 = _tiny_model_fixtures("sd15", "ddim", 0)
tiny_sdxl_dir, sdxl = _tiny_model_fixtures("sdxl", "euler", 1)
