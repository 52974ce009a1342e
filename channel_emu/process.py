"""The channel across consecutive requests: a seeded, time-correlated state sequence for the CMDP.

One :class:`ChannelState` per request. Large scale: the ES-UE distance (i.i.d. uniform per request as in the paper,
a bounded random walk, or fixed) and its log-distance path loss, or a fixed SNR. Block fading: a complex gain h
following the AR(1) (Gauss-Markov) model h[t+1] = rho h[t] + sqrt(1 - rho^2) w, w ~ CN(0, 1), with the Jakes
correlation rho = J0(2 pi f_D T) for Doppler f_D and request interval T, so |h|^2 is exponential (Rayleigh) at every
step and consecutive requests are correlated as a Jakes channel sampled every T seconds.

``snr_db = P_tx + gain_db`` where ``gain_db = -PL + fading_gain_db - N`` (the paper's "channel gain-to-noise").
For a fixed-SNR link ``snr_db = snr_db_set + fading_gain_db`` and distance / path loss are NaN.

A process can be recorded (:meth:`ChannelProcess.record`, :meth:`ChannelProcess.save`) and played back exactly by
:class:`ReplayProcess`, which has the same interface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import j0

from megbed.channel_emu.config import LinkConfig, LinkConfigError
from megbed.channel_emu.pathloss import gain_db, path_loss_db


@dataclass(frozen=True)
class ChannelState:
    """The channel of one request.

    Attributes
    ----------
    index : int
        Request index since the last reset (0-based).
    distance_m : float
        ES-UE distance (m); NaN for a fixed-SNR link.
    path_loss_db : float
        Path loss (dB, positive); NaN for a fixed-SNR link.
    fading_gain_db : float
        Block-fading power gain 10 log10 |h|^2 (dB); 0 without block fading.
    gain_db : float
        Channel gain-to-noise (dB): SNR = P_tx + gain_db.
    snr_db : float
        Average received SNR (Es/N0 per complex symbol) of the request (dB).
    fading_re, fading_im : float
        The complex block-fading coefficient h (1 + 0j without block fading).
    """

    index: int
    distance_m: float
    path_loss_db: float
    fading_gain_db: float
    gain_db: float
    snr_db: float
    fading_re: float = 1.0
    fading_im: float = 0.0

    @property
    def fading(self) -> complex:
        return complex(self.fading_re, self.fading_im)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(ChannelState))


def _as_config(config: LinkConfig | Mapping[str, Any] | None) -> LinkConfig:
    if config is None:
        return LinkConfig()
    if isinstance(config, LinkConfig):
        return config
    if isinstance(config, Mapping):
        return LinkConfig.from_dict(config)
    raise LinkConfigError(f"channel process config must be a LinkConfig or a mapping, got {type(config).__name__}")


def ar1_rho(doppler_hz: float, interval_s: float) -> float:
    """Jakes correlation of the complex gain between two requests T apart: J0(2 pi f_D T)."""
    return float(j0(2.0 * math.pi * doppler_hz * interval_s))


class ChannelProcess:
    """Seeded, time-correlated request-to-request channel (see the module docstring).

    Parameters
    ----------
    config : LinkConfig, mapping or None
        The link configuration (its ``process``, ``pathloss`` and ``snr_db`` are used); None: the paper's link.
    seed : int, optional
        Seed of the sequence; ``reset(seed)`` restarts with another.
    """

    def __init__(self, config: LinkConfig | Mapping[str, Any] | None = None, seed: int | None = None) -> None:
        self.config = _as_config(config)
        self.seed = seed
        p = self.config.process
        self.rho = float(p.rho) if p.rho is not None else ar1_rho(p.doppler_hz, p.request_interval_s)
        self._rng = np.random.default_rng(seed)
        self._index = -1
        self._distance = math.nan
        self._h = 1.0 + 0.0j
        self._started = False

    # --- the sequence --------------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> ChannelState:
        """Restart the sequence (with ``seed`` when given, else the constructor's seed); returns request 0."""
        if seed is not None:
            self.seed = seed
        self._rng = np.random.default_rng(self.seed)
        self._index = -1
        self._distance = math.nan
        self._h = self._draw_cn() if self.config.block_fading else 1.0 + 0.0j
        self._started = True
        return self.step()

    def step(self) -> ChannelState:
        """Advance by one request and return its state."""
        if not self._started:
            return self.reset()
        first = self._index < 0
        self._index += 1
        self._distance = self._next_distance(first)
        if self.config.block_fading and not first:
            self._h = self.rho * self._h + math.sqrt(max(0.0, 1.0 - self.rho ** 2)) * self._draw_cn()
        return self.state_at(self._distance, self._h, self._index)

    def state_at(self, distance_m: float | None, h: complex = 1.0 + 0.0j, index: int = 0) -> ChannelState:
        """The state for a given distance (None/NaN: fixed SNR) and block-fading coefficient."""
        cfg = self.config
        fading_db = 10.0 * math.log10(max(abs(h) ** 2, 1e-30))
        if cfg.fixed_snr or distance_m is None or math.isnan(distance_m):
            snr = float(cfg.snr_db if cfg.snr_db is not None else 0.0) + fading_db
            return ChannelState(index, math.nan, math.nan, fading_db, snr - cfg.pathloss.tx_power_dbm, snr,
                                float(h.real), float(h.imag))
        pl = float(path_loss_db(distance_m, cfg.pathloss))
        g = gain_db(pl, fading_db, cfg.pathloss)
        return ChannelState(index, float(distance_m), pl, fading_db, g, cfg.pathloss.tx_power_dbm + g,
                            float(h.real), float(h.imag))

    def _draw_cn(self) -> complex:
        re, im = self._rng.standard_normal(2) * math.sqrt(0.5)
        return complex(re, im)

    def _next_distance(self, first: bool) -> float:
        cfg = self.config
        p = cfg.process
        if cfg.fixed_snr:
            return math.nan
        if p.distance == "fixed":
            return float(p.distance_m)
        if p.distance == "uniform" or first:
            return float(self._rng.uniform(p.d_min_m, p.d_max_m))
        # Reflected random walk: stays in [d_min, d_max] without piling up at the edges.
        d = self._distance + p.distance_step_m * float(self._rng.standard_normal())
        lo, hi = p.d_min_m, p.d_max_m
        width = hi - lo
        if width <= 0:
            return lo
        x = (d - lo) % (2 * width)
        return float(lo + (x if x <= width else 2 * width - x))

    # --- recording -----------------------------------------------------------------------------------------------

    def record(self, n: int, seed: int | None = None) -> pd.DataFrame:
        """Reset (to ``seed`` or the process's seed) and return the first ``n`` states, one row per request."""
        if n < 1:
            raise ValueError(f"record needs n >= 1, got {n}")
        states = [self.reset(seed)] + [self.step() for _ in range(n - 1)]
        df = pd.DataFrame([s.to_dict() for s in states], columns=list(COLUMNS))
        df.attrs["rho"] = self.rho
        return df

    def save(self, path: str | Path, n: int, seed: int | None = None) -> Path:
        """Record ``n`` states to a Parquet file (replayable by :class:`ReplayProcess`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.record(n, seed).to_parquet(path, index=False)
        return path


class ReplayProcess:
    """Plays a recorded channel trace (Parquet or DataFrame) back exactly, with the :class:`ChannelProcess` interface.

    Parameters
    ----------
    source : path or pandas.DataFrame
        A trace written by :meth:`ChannelProcess.save` (columns of :class:`ChannelState`).
    loop : bool
        Start again at the first row after the last one; otherwise stepping past the end raises ``IndexError``.
    """

    def __init__(self, source: str | Path | pd.DataFrame, loop: bool = False) -> None:
        df = source if isinstance(source, pd.DataFrame) else pd.read_parquet(source)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"channel trace lacks column(s) {missing}")
        if len(df) == 0:
            raise ValueError("channel trace is empty")
        self._rows = [ChannelState(**{c: (int(r[c]) if c == "index" else float(r[c])) for c in COLUMNS})
                      for r in df[list(COLUMNS)].to_dict("records")]
        self.loop = loop
        self._pos = -1

    def __len__(self) -> int:
        return len(self._rows)

    def reset(self, seed: int | None = None) -> ChannelState:
        """Back to the first recorded state (``seed`` is accepted for interface parity and ignored)."""
        self._pos = -1
        return self.step()

    def step(self) -> ChannelState:
        self._pos += 1
        if self._pos >= len(self._rows):
            if not self.loop:
                raise IndexError(f"channel trace exhausted after {len(self._rows)} states (use loop=True)")
            self._pos = 0
        return self._rows[self._pos]
