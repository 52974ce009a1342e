"""Fixture run directories, written once per session (the synthetic writer uses the schema's column names)."""

from __future__ import annotations

import pytest

from megbed.testing.ground_truth_run import SyntheticSpec, write_synthetic_run

# Small but complete: every scheme, two N, two beta, two decoders, two distances, three repetitions.
FULL = SyntheticSpec(n_steps=(4, 8), merge_ratios=(0.0, 0.5), repetitions=3, distances_m=(200.0, 300.0),
                     decoders=("base", "distilled"), images=True, seed=3)
# Optional parts absent: no traces, no training log, no images, no model folder (FLOP fallback).
BARE = SyntheticSpec(n_steps=(4, 8), merge_ratios=(0.0, 0.5), repetitions=2, distances_m=(250.0,), traces=False,
                     training_logs=False, images=False, model_dir=False, seed=4)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("full") / "run", FULL)


@pytest.fixture(scope="session")
def bare_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("bare") / "run", BARE)


@pytest.fixture(scope="session")
def full_report(full_run, tmp_path_factory):
    from megbed.analysis.report import build_report
    from megbed.testbed.ldm import flops

    return build_report(full_run, tmp_path_factory.mktemp("full_report"), n_boot=500, flop_counter=flops)


@pytest.fixture(scope="session")
def bare_report(bare_run, tmp_path_factory):
    from megbed.analysis.report import build_report
    from megbed.testbed.ldm import flops

    return build_report(bare_run, tmp_path_factory.mktemp("bare_report"), n_boot=500, flop_counter=flops)
