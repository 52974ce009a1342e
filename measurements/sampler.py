"""A background sampler per probe: fixed-rate reads, monotonic stamps, sequence numbers, a growing raw trace.

The sampler never stops on a read error: the failed read is stored as an invalid sample (NaN powers, the reason
kept) and the next tick reads again. ``tick()`` is public so tests (and single-threaded tools) can drive it with a
clock they control instead of a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from megbed.measurements.integrate import NS_PER_S, refresh_period_s
from megbed.measurements.probes.base import PowerProbe, PowerReading

log = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 100.0


@dataclass
class TraceArrays:
    """A probe's samples as arrays (a consistent snapshot).

    Attributes
    ----------
    rails : tuple[str, ...]
        Rail keys, the column order of ``power_mw`` / ``energy_mj``.
    seq : numpy.ndarray, shape (n,), int64
        Sequence numbers (consecutive from 0; each tick and each forced read takes one).
    t_ns : numpy.ndarray, shape (n,), int64
        Read stamps on the probe's monotonic clock (ns).
    valid : numpy.ndarray, shape (n,), bool
        False where the read failed.
    power_mw : numpy.ndarray, shape (n, rails), float64
        Power per rail (mW), NaN where unknown.
    energy_mj : numpy.ndarray, shape (n, rails), float64
        Cumulative counter energy per rail (mJ); NaN for probes without a counter.
    reasons : dict[int, str]
        Failure reason by sequence number, for invalid samples only.
    extra_keys : tuple[str, ...]
        Names of the side readings (units in the name, e.g. ``ext5v_mv``).
    extra : numpy.ndarray, shape (n, extra_keys), float64
        Side readings (NaN where absent).
    """

    rails: tuple[str, ...]
    seq: np.ndarray
    t_ns: np.ndarray
    valid: np.ndarray
    power_mw: np.ndarray
    energy_mj: np.ndarray
    reasons: dict[int, str]
    extra_keys: tuple[str, ...] = ()
    extra: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.t_ns.size)

    def to_frame(self, probe: str = ""):
        """A tidy-wide pandas DataFrame: ``seq, t_ns, valid, reason, power_mw_<rail>..., energy_mj_<rail>...``."""
        import pandas as pd

        data: dict[str, object] = {
            "seq": self.seq, "t_ns": self.t_ns, "valid": self.valid,
            "reason": np.array([self.reasons.get(int(s), "") for s in self.seq], dtype=object),
        }
        for j, rail in enumerate(self.rails):
            data[f"power_mw_{rail}"] = self.power_mw[:, j]
        if np.isfinite(self.energy_mj).any():
            for j, rail in enumerate(self.rails):
                data[f"energy_mj_{rail}"] = self.energy_mj[:, j]
        if self.extra is not None:
            for j, key in enumerate(self.extra_keys):
                data[key] = self.extra[:, j]
        df = pd.DataFrame(data)
        if probe:
            df.insert(0, "probe", probe)
        return df


class _Growable:
    """Amortised-O(1) append of fixed-width rows, with cheap consistent snapshots."""

    FIELDS = ("seq", "t", "valid", "p", "e", "x")

    def __init__(self, n_rails: int, n_extra: int = 0, capacity: int = 4096) -> None:
        self.n = 0
        self.seq = np.empty(capacity, np.int64)
        self.t = np.empty(capacity, np.int64)
        self.valid = np.empty(capacity, bool)
        self.p = np.empty((capacity, n_rails), np.float64)
        self.e = np.empty((capacity, n_rails), np.float64)
        self.x = np.empty((capacity, n_extra), np.float64)

    def _grow(self) -> None:
        cap = self.t.size * 2
        for name in self.FIELDS:
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def append(self, seq: int, t: int, valid: bool, p: np.ndarray, e: np.ndarray, x: np.ndarray) -> None:
        if self.n == self.t.size:
            self._grow()
        i = self.n
        self.seq[i], self.t[i], self.valid[i] = seq, t, valid
        self.p[i], self.e[i], self.x[i] = p, e, x
        self.n = i + 1

    def drop_before(self, index: int) -> None:
        keep = self.n - index
        for name in self.FIELDS:
            arr = getattr(self, name)
            arr[:keep] = arr[index:self.n]
        self.n = keep


class Sampler:
    """Reads one probe at a fixed rate on a background thread and keeps the samples.

    Parameters
    ----------
    probe : PowerProbe
        What to read.
    rate_hz : float
        Target read rate (Hz). Reads are scheduled on absolute deadlines so the rate does not drift; a late read
        skips the deadlines it missed rather than bursting.
    keep_s : float or None
        Keep only the last ``keep_s`` seconds of samples (None keeps everything, for trace files).

    The thread reads on the probe's clock; tests drive ``tick()`` directly with a fake clock instead.
    """

    def __init__(
        self,
        probe: PowerProbe,
        rate_hz: float = DEFAULT_RATE_HZ,
        *,
        keep_s: float | None = None,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.probe = probe
        self.rate_hz = float(rate_hz)
        self.keep_s = keep_s
        self._rails = probe.rail_keys
        self._extra_keys = tuple(probe.extra_keys)
        self._buf = _Growable(len(self._rails), len(self._extra_keys))
        self._reasons: dict[int, str] = {}
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._seq = 0
        self._n_invalid = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_t: int | None = None
        self._last: PowerReading | None = None
        self._listeners: list[Callable[[PowerReading], None]] = []

    # --- reading -------------------------------------------------------------------------------------------
    def tick(self) -> PowerReading:
        """Read the probe once now and store the sample (thread-safe; also used for forced edge reads)."""
        with self._read_lock:
            reading = self.probe.sample()
            with self._lock:
                seq = self._seq
                self._seq += 1
                p = np.array([reading.power_mw.get(k, np.nan) for k in self._rails], np.float64)
                if reading.energy_mj is not None:
                    e = np.array([reading.energy_mj.get(k, np.nan) for k in self._rails], np.float64)
                else:
                    e = np.full(len(self._rails), np.nan)
                x = np.array([reading.extra.get(k, np.nan) for k in self._extra_keys], np.float64)
                if not reading.valid:
                    self._n_invalid += 1
                    self._reasons[seq] = reading.reason
                    if self._n_invalid in (1, 10, 100) or self._n_invalid % 1000 == 0:
                        log.warning("%s: invalid read #%d: %s", self.probe.name, self._n_invalid, reading.reason)
                self._buf.append(seq, reading.t_ns, reading.valid, p, e, x)
                if self._first_t is None:
                    self._first_t = reading.t_ns
                self._last = reading
                self._trim(reading.t_ns)
        for fn in self._listeners:
            fn(reading)
        return reading

    def _trim(self, now_ns: int) -> None:
        if self.keep_s is None or self._buf.n < 1024:
            return
        cutoff = now_ns - int(self.keep_s * NS_PER_S)
        idx = int(np.searchsorted(self._buf.t[: self._buf.n], cutoff))
        if idx > self._buf.n // 2:  # compact rarely: only when half the buffer is stale
            first_kept = int(self._buf.seq[idx])
            for s in [s for s in self._reasons if s < first_kept]:
                del self._reasons[s]
            self._buf.drop_before(idx)

    def add_listener(self, fn: Callable[[PowerReading], None]) -> None:
        """Call ``fn(reading)`` after every read (e.g. a live display); exceptions in ``fn`` propagate."""
        self._listeners.append(fn)

    # --- thread --------------------------------------------------------------------------------------------
    def start(self) -> Sampler:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.probe.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period_ns = int(NS_PER_S / self.rate_hz)
        clock = self.probe.clock
        next_t = clock()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a sampler must outlive any single bad read
                log.exception("%s: unexpected error in sampler tick", self.probe.name)
                with self._lock:
                    self._reasons[self._seq] = f"sampler error: {exc!r}"
            next_t += period_ns
            now = clock()
            if now > next_t:  # late: skip missed deadlines instead of bursting
                next_t = now + period_ns - (now - next_t) % period_ns
            delay = (next_t - now) / NS_PER_S
            if delay > 0:
                self._stop.wait(delay)

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- results -------------------------------------------------------------------------------------------
    def snapshot(self, since_seq: int = 0) -> TraceArrays:
        """The samples kept so far (copies), optionally only those with ``seq >= since_seq``."""
        with self._lock:
            n = self._buf.n
            start = int(np.searchsorted(self._buf.seq[:n], since_seq)) if since_seq else 0
            sl = slice(start, n)
            seq = self._buf.seq[sl].copy()
            reasons = {s: r for s, r in self._reasons.items() if s >= since_seq}
            return TraceArrays(self._rails, seq, self._buf.t[sl].copy(), self._buf.valid[sl].copy(),
                               self._buf.p[sl].copy(), self._buf.e[sl].copy(), reasons, self._extra_keys,
                               self._buf.x[sl].copy())

    def window_arrays(self, t0_ns: int, t1_ns: int, margin_ns: int) -> TraceArrays:
        """Samples with stamps in ``[t0 - margin, t1 + margin]`` (copies)."""
        with self._lock:
            n = self._buf.n
            t = self._buf.t[:n]
            a = max(0, int(np.searchsorted(t, t0_ns - margin_ns)) - 1)
            b = min(n, int(np.searchsorted(t, t1_ns + margin_ns, side="right")) + 1)
            sl = slice(a, b)
            seq = self._buf.seq[sl].copy()
            return TraceArrays(self._rails, seq, t[sl].copy(), self._buf.valid[sl].copy(),
                               self._buf.p[sl].copy(), self._buf.e[sl].copy(),
                               {int(s): self._reasons[int(s)] for s in seq if int(s) in self._reasons},
                               self._extra_keys, self._buf.x[sl].copy())

    def latest_t_ns(self) -> int | None:
        with self._lock:
            return int(self._buf.t[self._buf.n - 1]) if self._buf.n else None

    @property
    def last_reading(self) -> PowerReading | None:
        return self._last

    @property
    def n_samples(self) -> int:
        return self._seq

    @property
    def n_invalid(self) -> int:
        return self._n_invalid

    def achieved_rate_hz(self) -> float | None:
        """Mean read rate over the kept samples (Hz)."""
        with self._lock:
            n = self._buf.n
            if n < 2:
                return None
            span = int(self._buf.t[n - 1] - self._buf.t[0])
        return (n - 1) * NS_PER_S / span if span > 0 else None

    def measured_refresh_period_s(self) -> float | None:
        """The sensor's refresh period measured from value changes in the kept samples (s), or None.

        Only resolvable when reads are faster than the sensor; compare with the probe's declared
        ``sensor_period_s()``.
        """
        snap = self.snapshot()
        ok = snap.valid
        return refresh_period_s(snap.t_ns[ok], snap.power_mw[ok])

    def stats(self) -> dict:
        """Figures for the manifest: rate asked and achieved, sample counts, measured refresh period."""
        return {
            "rate_hz": self.rate_hz,
            "achieved_rate_hz": self.achieved_rate_hz(),
            "n_samples": self.n_samples,
            "n_invalid": self.n_invalid,
            "measured_refresh_period_s": self.measured_refresh_period_s(),
        }
