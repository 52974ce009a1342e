"""Shared fixtures of the default-model tests: a tiny training run through the real entry point (run once)."""

from __future__ import annotations

import pytest
from model_helpers import TINY


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_here(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(out_dir, lines, state)`` of a complete tiny run of ``python -m megbed.testbed.modeltrain`` (in-process)."""
    from megbed.testbed.modeltrain.runner import main

    out = tmp_path_factory.mktemp("modeltrain") / "run"
    lines: list[str] = []
    import megbed.testbed.modeltrain.progress as progress

    real = progress.stdout_log
    progress.stdout_log = lambda line: (lines.append(line), real(line))[1]
    try:
        argv = ["--out", str(out), "--seed", "3", "--threads", "1"] + [a for kv in TINY for a in ("--set", kv)]
        assert main(argv) == 0
    finally:
        progress.stdout_log = real
    import json

    state = json.loads((out / "train_state.json").read_text())
    return out, lines, state
