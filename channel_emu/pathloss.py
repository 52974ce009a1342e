"""Large-scale link budget: log-distance path loss and the SNR it gives.

The paper's setting: PL(dB) = 35.3 + 37.6 log10(d / 1 m), P_tx = 30 dBm, noise N = -94 dBm over B = 1 MHz, so
SNR(dB) = P_tx - PL(d) - N, i.e. +2.18 dB at 200 m and -4.44 dB at 300 m. The "channel gain-to-noise" of the CMDP
state is gain_db = -PL + fading - N (dB), so that SNR = P_tx + gain_db.
"""

from __future__ import annotations

import math

import numpy as np

from megbed.channel_emu.config import PathLossConfig


def path_loss_db(distance_m: float | np.ndarray, cfg: PathLossConfig | None = None) -> float | np.ndarray:
    """Path loss (dB, positive) at ``distance_m`` metres."""
    cfg = cfg or PathLossConfig()
    if isinstance(distance_m, (int, float)):  # the per-request case: plain math, no array round trip
        if not distance_m > 0:
            raise ValueError(f"distance must be > 0 m, got {distance_m!r}")
        return cfg.intercept_db + cfg.slope_db * math.log10(distance_m)
    d = np.asarray(distance_m, dtype=np.float64)
    if np.any(d <= 0):
        raise ValueError(f"distance must be > 0 m, got {distance_m!r}")
    out = cfg.intercept_db + cfg.slope_db * np.log10(d)
    return float(out) if out.ndim == 0 else out


def gain_db(path_loss: float, fading_gain_db: float, cfg: PathLossConfig | None = None) -> float:
    """Channel gain-to-noise (dB): -PL + fading - N."""
    cfg = cfg or PathLossConfig()
    return float(-path_loss + fading_gain_db - cfg.noise_dbm)


def snr_db_at(distance_m: float, cfg: PathLossConfig | None = None, fading_gain_db: float = 0.0) -> float:
    """SNR (dB) at ``distance_m`` with an optional fading gain (dB): P_tx - PL(d) + fading - N."""
    cfg = cfg or PathLossConfig()
    return float(cfg.tx_power_dbm + gain_db(path_loss_db(distance_m, cfg), fading_gain_db, cfg))
