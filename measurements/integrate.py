"""Window energy from a power trace or a counter: the arithmetic, free of threads and hardware.

Units: time in ns (monotonic), power in mW, energy in mJ (mW x s). 1 mW over 1 ns is 1e-9 mJ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass
class RailIntegral:
    """Energy of one rail over a window.

    Attributes
    ----------
    energy_mj : float
        Trapezoidal integral over exactly [t0, t1] (mJ); NaN when it could not be formed.
    n_samples : int
        Valid samples strictly inside the window.
    problems : list[str]
        Why the figure cannot be trusted (empty when it can).
    """

    energy_mj: float
    n_samples: int
    problems: list[str] = field(default_factory=list)


def integrate_window(
    t_ns: np.ndarray,
    p_mw: np.ndarray,
    t0_ns: int,
    t1_ns: int,
    *,
    lag_ns: int = 0,
    max_gap_ns: int | None = None,
) -> RailIntegral:
    """Trapezoidal energy of one rail over ``[t0_ns, t1_ns]``, interpolating linearly at both edges.

    Parameters
    ----------
    t_ns : numpy.ndarray, shape (n,), int64
        Read stamps (ns), ascending.
    p_mw : numpy.ndarray, shape (n,), float
        Power (mW); NaN marks an invalid read, which is skipped (the integral bridges it linearly).
    t0_ns, t1_ns : int
        Window edges on the same clock (ns).
    lag_ns : int
        Shift applied to the stamps before integrating (an averaging sensor's centroid lag), ns.
    max_gap_ns : int, optional
        A span without valid samples longer than this (inside the window or at its edges) makes the result
        untrustworthy; it is still computed and the gap is named.

    Returns
    -------
    RailIntegral
    """
    if t1_ns < t0_ns:
        raise ValueError(f"window ends before it starts ({t0_ns} > {t1_ns})")
    t = np.asarray(t_ns, dtype=np.int64) - int(lag_ns)
    p = np.asarray(p_mw, dtype=np.float64)
    ok = np.isfinite(p)
    t, p = t[ok], p[ok]
    if t.size == 0:
        return RailIntegral(float("nan"), 0, ["no valid power samples"])
    problems: list[str] = []
    # Bracketing samples: the last at or before t0 and the first at or after t1 (or the nearest we have).
    lo = int(np.searchsorted(t, t0_ns, side="right")) - 1
    hi = int(np.searchsorted(t, t1_ns, side="left"))
    if lo < 0:
        lead = int(t[0] - t0_ns)
        if max_gap_ns is not None and lead > max_gap_ns:
            problems.append(f"no valid sample within {lead / 1e6:.1f} ms before the window start (held first value)")
        lo = 0
    if hi >= t.size:
        lag = int(t1_ns - t[-1])
        if max_gap_ns is not None and lag > max_gap_ns:
            problems.append(f"no valid sample within {lag / 1e6:.1f} ms after the window end (held last value)")
        hi = t.size - 1
    seg_t = t[lo:hi + 1]
    seg_p = p[lo:hi + 1]
    if max_gap_ns is not None and seg_t.size > 1:
        gaps = np.diff(seg_t)
        worst = int(gaps.max())
        if worst > max_gap_ns:
            problems.append(f"gap of {worst / 1e6:.1f} ms between valid samples (limit {max_gap_ns / 1e6:.1f} ms)")
    inner = (seg_t > t0_ns) & (seg_t < t1_ns)
    p0 = float(np.interp(t0_ns, seg_t, seg_p))
    p1 = float(np.interp(t1_ns, seg_t, seg_p))
    xs = np.concatenate(([t0_ns], seg_t[inner], [t1_ns])).astype(np.float64)
    ys = np.concatenate(([p0], seg_p[inner], [p1]))
    energy = float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) * 0.5 / NS_PER_S)
    return RailIntegral(energy, int(inner.sum()), problems)


def counter_delta_mj(e0: dict[str, float], e1: dict[str, float]) -> dict[str, float]:
    """Per-rail difference of two cumulative (already unwrapped) counter readings (mJ)."""
    return {k: float(e1[k]) - float(e0[k]) for k in e0 if k in e1}


def unwrap_counter(previous_raw: int, raw: int, max_range: int) -> int:
    """Increment of a wrapping hardware counter between two reads.

    The counter runs 0..``max_range`` and restarts at 0 (RAPL ``energy_uj`` with ``max_energy_range_uj``). A read
    lower than the previous one means exactly one wrap, provided reads are closer together than one wrap period
    (minutes at full power), which the sampler guarantees.
    """
    if raw >= previous_raw:
        return raw - previous_raw
    return raw + (max_range - previous_raw) + 1


def refresh_period_s(t_ns: np.ndarray, values: np.ndarray, *, min_changes: int = 5) -> float | None:
    """A sensor's refresh period estimated from when its reported value changes.

    Parameters
    ----------
    t_ns : numpy.ndarray, shape (n,)
        Read stamps (ns).
    values : numpy.ndarray, shape (n, k) or (n,)
        Reported values; a new sensor sample shows as a change in any column.
    min_changes : int
        Fewer changes than this give None (not enough evidence).

    Returns
    -------
    float or None
        Median interval between changes (s). Only meaningful when reads are faster than the sensor; otherwise it
        returns roughly the read interval, an upper bound.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    t = np.asarray(t_ns, dtype=np.int64)
    finite = np.all(np.isfinite(v), axis=1)
    t, v = t[finite], v[finite]
    if t.size < 2:
        return None
    changed = np.any(v[1:] != v[:-1], axis=1)
    change_t = t[1:][changed]
    if change_t.size < min_changes + 1:
        return None
    return float(np.median(np.diff(change_t))) / NS_PER_S
