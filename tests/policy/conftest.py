"""Fixtures for the policy tests: SYNTHETIC campaign datasets (testbed.policy.synthetic) and channel stand-ins."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # known_optimum, for --env module:Class


@dataclass(frozen=True)
class _State:
    snr_db: float
    gain_db: float = math.nan
    distance_m: float = math.nan
    index: int = 0


class ConstantChannel:
    """Test stand-in: the same SNR for every request."""

    def __init__(self, snr_db: float) -> None:
        self.snr_db = snr_db
        self.i = 0

    def reset(self, seed=None):
        self.i = 0
        return _State(self.snr_db)

    def step(self):
        self.i += 1
        return _State(self.snr_db, index=self.i)


class AR1Channel:
    """Test stand-in for channel_emu.process: AR(1) SNR in dB around a mean."""

    def __init__(self, mean_db: float = -1.0, sigma_db: float = 3.0, rho: float = 0.9, seed: int | None = None):
        self.mean, self.sigma, self.rho = mean_db, sigma_db, rho
        self.rng = np.random.default_rng(seed)
        self.x = 0.0
        self.i = 0

    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.x = float(self.rng.standard_normal())
        self.i = 0
        return _State(self.mean + self.sigma * self.x)

    def step(self):
        self.x = self.rho * self.x + math.sqrt(1 - self.rho**2) * float(self.rng.standard_normal())
        self.i += 1
        return _State(self.mean + self.sigma * self.x, index=self.i)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """A small synthetic campaign (3 N x 3 beta x 2 distances x 6 repetitions, with fading)."""
    from testbed.policy.synthetic import SyntheticCampaign, write_synthetic_campaign

    spec = SyntheticCampaign(n_steps=(4, 8, 12), merge_ratios=(0.0, 0.375, 0.75), distances_m=(200.0, 300.0),
                             repetitions=6, failed_fraction=0.03)
    return write_synthetic_campaign(tmp_path_factory.mktemp("synthetic_run"), spec, seed=3)


@pytest.fixture(scope="session")
def fixed_snr_run(tmp_path_factory) -> Path:
    """A synthetic campaign without fading (one SNR per distance), 20 repetitions per point."""
    from testbed.policy.synthetic import SyntheticCampaign, write_synthetic_campaign

    spec = SyntheticCampaign(n_steps=(4, 8, 12), merge_ratios=(0.0, 0.75), distances_m=(200.0, 300.0),
                             repetitions=20, fading_sigma_db=0.0, include_baselines=False)
    return write_synthetic_campaign(tmp_path_factory.mktemp("fixed_snr_run"), spec, seed=5)
