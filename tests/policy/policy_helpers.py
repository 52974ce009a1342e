"""Channel stand-ins for the policy tests (megbed.channel_emu.process is exercised where it is installed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
    """Test stand-in for megbed.channel_emu.process: AR(1) SNR in dB around a mean."""

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
