"""Confidence intervals over repetitions.

* Means: Student-t interval, ``mean ± t_{1-α/2, n-1} · s / √n`` (s: sample standard deviation, ddof = 1).
* Relative change between two independent groups, ``100 · (mean_a / mean_b − 1)`` in %: seeded percentile
  bootstrap, each group resampled with replacement on its own, ``n_boot`` resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_LEVEL = 0.95
DEFAULT_BOOT = 4000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (``nan`` bounds when it cannot be computed).

    Attributes
    ----------
    value : float
        The estimate.
    low, high : float
        Interval bounds.
    n : int
        Samples used (per group, the smaller one for two-group estimates).
    method : str
        How the interval was computed.
    """

    value: float
    low: float
    high: float
    n: int
    method: str

    def fmt(self, digits: int = 3, unit: str = "") -> str:
        """``value [low, high] unit`` with ``digits`` significant digits."""
        if not math.isfinite(self.value):
            return "n/a"
        u = f" {unit}" if unit else ""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.value:.{digits}g}{u} (n={self.n})"
        return f"{self.value:.{digits}g}{u} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


    def fmt_pct(self) -> str:
        """``-12.3% [-26.5%, +6.8%]`` for a relative change."""
        if not math.isfinite(self.value):
            return "n/a"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.value:+.1f}% (n={self.n})"
        return f"{self.value:+.1f}% [{self.low:+.1f}%, {self.high:+.1f}%]"


def _clean(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def mean_ci(x, level: float = DEFAULT_LEVEL) -> Estimate:
    """Mean with a Student-t confidence interval; bounds are ``nan`` with fewer than two finite samples."""
    a = _clean(x)
    n = len(a)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "t")
    m = float(a.mean())
    if n < 2:
        return Estimate(m, math.nan, math.nan, n, "t")
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Estimate(m, m - half, m + half, n, "t")


def relative_change_ci(a, b, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Estimate:
    """Change of group ``a`` relative to group ``b`` in %, ``100 · (mean(a) / mean(b) − 1)``, with a bootstrap CI.

    Parameters
    ----------
    a, b : array_like
        Independent samples (e.g. end-to-end latency of MEG and of CEG requests, s).
    level : float
        Confidence level.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling (the interval is reproducible).
    """
    xa, xb = _clean(a), _clean(b)
    n = min(len(xa), len(xb))
    method = f"percentile bootstrap ({n_boot} resamples, seed {seed})"
    if n == 0 or xb.mean() == 0:
        return Estimate(math.nan, math.nan, math.nan, n, method)
    value = 100.0 * (xa.mean() / xb.mean() - 1.0)
    if n < 2:
        return Estimate(float(value), math.nan, math.nan, n, method)
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))].mean(axis=1)
    mb = xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = 100.0 * (ma / mb - 1.0)
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(float(value), float(lo), float(hi), n, method)
