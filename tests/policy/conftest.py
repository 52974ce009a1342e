"""Fixtures for the policy tests: SYNTHETIC campaign datasets (megbed.testing.parametric_campaign) and channel stand-ins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # known_optimum, fake_testbed, policy_helpers (--env module:Class)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """A small synthetic campaign (3 N x 3 beta x 2 distances x 6 repetitions, with fading)."""
    from megbed.testing.parametric_campaign import SyntheticCampaign, write_synthetic_campaign

    spec = SyntheticCampaign(n_steps=(4, 8, 12), merge_ratios=(0.0, 0.375, 0.75), distances_m=(200.0, 300.0),
                             repetitions=6, failed_fraction=0.03)
    return write_synthetic_campaign(tmp_path_factory.mktemp("synthetic_run"), spec, seed=3)


@pytest.fixture(scope="session")
def fixed_snr_run(tmp_path_factory) -> Path:
    """A synthetic campaign without fading (one SNR per distance), 20 repetitions per point."""
    from megbed.testing.parametric_campaign import SyntheticCampaign, write_synthetic_campaign

    spec = SyntheticCampaign(n_steps=(4, 8, 12), merge_ratios=(0.0, 0.75), distances_m=(200.0, 300.0),
                             repetitions=20, fading_sigma_db=0.0, include_baselines=False)
    return write_synthetic_campaign(tmp_path_factory.mktemp("fixed_snr_run"), spec, seed=5)
