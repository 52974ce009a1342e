"""The ldm tests run on the tiny SD-1.5- and SDXL-shaped models of tests/conftest.py (``sd15``, ``sdxl``: random
weights, hand-written configs and tokenizer, built once per session into a temp folder with save_pretrained and loaded
back through load_pipeline)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_here(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""
