"""Cross-host clock sync over megwire: NTP-style four-timestamp exchanges, min-delay filtering, offset + drift fit.

Each exchange: the orchestrator (local clock) stamps ``t1`` and sends ``Frame(kind="clock_sync")``; the node stamps
``t2`` on receipt and ``t3`` just before answering; the orchestrator stamps ``t4`` on receipt. Then

* round-trip delay ``delta = (t4 - t1) - (t3 - t2)``,
* offset ``theta = ((t1 - t2) + (t4 - t3)) / 2`` **local minus remote** (what to add to a node's stamp to put it on
  the orchestrator's timeline; the dataset's ``clock_offset_ns`` convention),
* the true offset lies within ``theta +- delta / 2`` whatever the path asymmetry (the NTP bound).

Queueing only ever adds delay, so the exchange with the smallest delay in a burst is the most accurate (the NTP
clock filter). Over a run, the best exchange of each burst is fitted with a line ``offset(remote) = offset_ns +
drift * (remote - ref_remote_ns)``, so crystal drift between hosts (tens of ppm: ~0.1 ms per minute at 2 ppm...
5 ms/min at 80 ppm) is followed rather than frozen at the first sync.

Server side: a node's existing ROUTER loop calls :func:`clock_sync_reply` for ``clock_sync`` frames (stamp ``t2``
right after the receive returns). :class:`ClockSyncResponder` is a standalone responder thread for tests and tools.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from megbed.megwire import (
    Frame,
    FrameError,
    Link,
    LinkTimeout,
    bind_address,
    error_frame,
    make_socket,
    recv_frame,
    send_frame,
)

KIND = "clock_sync"
Clock = Callable[[], int]


# --------------------------------------------------------------------------------------------- server side


def clock_sync_reply(frame: Frame, t2_ns: int, clock: Clock = time.monotonic_ns) -> Frame:
    """Answer a ``clock_sync`` request: echo its ``seq``/``t1``, add ``t2`` (receipt) and ``t3`` (now, just before
    sending). Call it from a node's ROUTER loop with ``t2_ns = clock()`` taken right after the receive returned.

    Raises
    ------
    FrameError
        The frame is not a well-formed ``clock_sync`` request (the node answers with an error frame instead).
    """
    if frame.kind != KIND:
        raise FrameError(f"expected a {KIND!r} frame, got {frame.kind!r}")
    seq, t1 = frame.meta.get("seq"), frame.meta.get("t1")
    if not isinstance(seq, int) or not isinstance(t1, int):
        raise FrameError("clock_sync request needs integer 'seq' and 't1' in its meta")
    meta = {"seq": seq, "t1": t1, "t2": int(t2_ns)}
    if "burst" in frame.meta:
        meta["burst"] = frame.meta["burst"]
    meta["t3"] = int(clock())
    return Frame(KIND, meta=meta)


class ClockSyncResponder:
    """A ROUTER answering ``clock_sync`` frames on its own thread (tests, ``megbed`` tools, nodes without a loop).

    Parameters
    ----------
    address : str
        ``tcp://host:port`` to bind; port 0 or ``*`` picks a free port (see :attr:`address` after start).
    clock : callable
        The node's monotonic clock (ns); a test injects an offset/drifting clock here.
    """

    def __init__(self, address: str = "tcp://127.0.0.1:0", *, clock: Clock = time.monotonic_ns,
                 ctx: zmq.Context | None = None) -> None:
        self._bind = address
        self.clock = clock
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.address: str | None = None
        self.answered = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> ClockSyncResponder:
        self._thread = threading.Thread(target=self._run, name="clock-sync-responder", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("clock-sync responder did not start")
        if self._error is not None:
            raise RuntimeError(f"clock-sync responder failed to bind {self._bind}: {self._error}")
        return self

    def _run(self) -> None:
        sock = make_socket(self.ctx, zmq.ROUTER, timeout_s=0.05)
        try:
            self.address = bind_address(sock, self._bind)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            sock.close(0)
            return
        self._ready.set()
        while not self._stop.is_set():
            try:
                envelope, frame = recv_frame(sock)
                t2 = self.clock()
            except LinkTimeout:
                continue
            except FrameError as exc:
                send_frame(sock, error_frame(str(exc)), getattr(exc, "envelope", []))
                continue
            try:
                reply = clock_sync_reply(frame, t2, self.clock)
            except FrameError as exc:
                reply = error_frame(str(exc))
            send_frame(sock, reply, envelope)
            self.answered += 1
        sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> ClockSyncResponder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class Exchange:
    """One four-timestamp exchange (ns). ``t1``/``t4`` on the local clock, ``t2``/``t3`` on the remote one."""

    t1_ns: int
    t2_ns: int
    t3_ns: int
    t4_ns: int
    burst: int = 0

    @property
    def delay_ns(self) -> int:
        """Round-trip network delay, remote processing excluded."""
        return (self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)

    @property
    def offset_ns(self) -> float:
        """Local minus remote clock."""
        return ((self.t1_ns - self.t2_ns) + (self.t4_ns - self.t3_ns)) / 2

    @property
    def bound_ns(self) -> float:
        """Half the round trip: the true offset lies within ``offset_ns +- bound_ns``."""
        return self.delay_ns / 2

    @property
    def remote_mid_ns(self) -> float:
        return (self.t2_ns + self.t3_ns) / 2

    @property
    def local_mid_ns(self) -> float:
        return (self.t1_ns + self.t4_ns) / 2


@dataclass(frozen=True)
class ClockMap:
    """Maps a remote node's monotonic stamps onto the local (orchestrator) timeline.

    ``local = remote + offset_ns + drift * (remote - ref_remote_ns)``

    Attributes
    ----------
    offset_ns : float
        Local minus remote at ``ref_remote_ns``.
    drift : float
        d(offset)/d(remote time), dimensionless (1e-6 is 1 ppm).
    ref_remote_ns : float
        Remote time the offset refers to.
    uncertainty_ns : float
        Bound on the mapping error: the largest +-delta/2 of the exchanges used, plus the largest fit residual.
    samples : int
        Exchanges the fit used (one per burst after min-delay filtering).
    exchanges : int
        Exchanges made in all.
    min_delay_ns : float
        Smallest round trip seen (ns).
    residual_rms_ns : float
        RMS of the used offsets about the fitted line (ns).
    method : str
        ``ntp_fit`` (offset + drift over several bursts), ``ntp_min`` (one burst, drift 0) or ``unsynced``.
    """

    offset_ns: float
    drift: float = 0.0
    ref_remote_ns: float = 0.0
    uncertainty_ns: float = math.inf
    samples: int = 0
    exchanges: int = 0
    min_delay_ns: float = math.nan
    residual_rms_ns: float = math.nan
    method: str = "ntp_min"

    def offset_at(self, remote_ns):
        """Offset (local - remote, ns) at a remote time; scalars or arrays."""
        return self.offset_ns + self.drift * (np.asarray(remote_ns, dtype=np.float64) - self.ref_remote_ns)

    def to_local(self, remote_ns):
        """Remote monotonic stamp(s) (ns) on the local timeline (int64, rounded)."""
        r = np.asarray(remote_ns, dtype=np.int64)
        out = r + np.round(self.offset_at(r)).astype(np.int64)
        return int(out) if out.ndim == 0 else out

    def to_remote(self, local_ns):
        """Inverse of :meth:`to_local`."""
        loc = np.asarray(local_ns, dtype=np.float64)
        remote = (loc - self.offset_ns + self.drift * self.ref_remote_ns) / (1.0 + self.drift)
        out = np.round(remote).astype(np.int64)
        return int(out) if out.ndim == 0 else out

    def to_dict(self) -> dict[str, Any]:
        """Manifest record (``megbed.analysis.clock`` reads ``offset_ns``, ``drift``, ``ref_remote_ns``,
        ``uncertainty_ns``, ``method``, ``samples``)."""
        return {"offset_ns": float(self.offset_ns), "drift": float(self.drift),
                "drift_ppm": float(self.drift * 1e6), "ref_remote_ns": float(self.ref_remote_ns),
                "uncertainty_ns": float(self.uncertainty_ns), "method": self.method, "samples": self.samples,
                "exchanges": self.exchanges, "min_delay_ns": float(self.min_delay_ns),
                "residual_rms_ns": float(self.residual_rms_ns)}

    @classmethod
    def unsynced(cls) -> ClockMap:
        """The identity map for a node on the same host (or one never synchronised); uncertainty infinite."""
        return cls(0.0, method="unsynced")


def best_per_burst(exchanges: Sequence[Exchange]) -> list[Exchange]:
    """The minimum-delay exchange of each burst, in burst order."""
    best: dict[int, Exchange] = {}
    for ex in exchanges:
        cur = best.get(ex.burst)
        if cur is None or ex.delay_ns < cur.delay_ns:
            best[ex.burst] = ex
    return [best[b] for b in sorted(best)]


def fit_clock(exchanges: Sequence[Exchange], *, min_span_s: float = 0.25) -> ClockMap:
    """Fit offset and drift from exchanges, keeping the minimum-delay exchange of each burst.

    With one burst (or bursts closer together than ``min_span_s``) the drift is 0 and the offset is that of the best
    exchange (``ntp_min``): a few microseconds of stamp noise over a few milliseconds would read as hundreds of ppm
    of drift, so the default span keeps the drift error to tens of ppm at loopback noise; long runs should pass more
    (the orchestrator uses 30 s). With several, a least-squares line through the bursts' best offsets, weighted by
    ``1 / bound^2`` so that noisy bursts count less (``ntp_fit``).
    """
    if not exchanges:
        raise ValueError("no clock-sync exchanges to fit")
    if any(ex.delay_ns < 0 for ex in exchanges):
        raise ValueError("an exchange has a negative round trip: stamps from different clocks were mixed")
    pts = best_per_burst(exchanges)
    x = np.array([p.remote_mid_ns for p in pts], dtype=np.float64)
    y = np.array([p.offset_ns for p in pts], dtype=np.float64)
    b = np.array([max(p.bound_ns, 1.0) for p in pts], dtype=np.float64)
    min_delay = float(min(ex.delay_ns for ex in exchanges))
    if len(pts) < 2 or (x.max() - x.min()) < min_span_s * 1e9:
        i = int(np.argmin(b))
        return ClockMap(float(y[i]), 0.0, float(x[i]), float(b[i]), 1, len(exchanges), min_delay, 0.0, "ntp_min")
    ref = float(x.mean())
    w = 1.0 / b**2
    xc = x - ref
    sw, swx, swy = w.sum(), (w * xc).sum(), (w * y).sum()
    sxx, sxy = (w * xc * xc).sum(), (w * xc * y).sum()
    den = sw * sxx - swx * swx
    drift = float((sw * sxy - swx * swy) / den)
    offset = float((swy - drift * swx) / sw)
    resid = y - (offset + drift * xc)
    bound = float(b.max() + np.abs(resid).max())
    rms = float(np.sqrt(np.mean(resid**2)))
    return ClockMap(offset, drift, ref, bound, len(pts), len(exchanges), min_delay, rms, "ntp_fit")


# --------------------------------------------------------------------------------------------- client side


@dataclass
class ClockSync:
    """The orchestrator's side for one node: runs bursts of exchanges over a link and keeps them for the fit.

    Parameters
    ----------
    link : megwire.Link
        A link to the node's ROUTER (``ZmqClientLink``; also works through the channel broker).
    clock : callable
        The local (orchestrator) monotonic clock (ns).
    timeout_s : float
        Wait per reply; a lost reply costs one exchange, not the burst.
    """

    link: Link
    clock: Clock = time.monotonic_ns
    timeout_s: float = 1.0
    exchanges: list[Exchange] = field(default_factory=list)
    lost: int = 0
    _seq: int = 0
    _burst: int = 0

    def exchange_once(self) -> Exchange | None:
        """One exchange; None when the reply did not come in time (counted in ``lost``)."""
        seq = self._seq
        self._seq += 1
        t1 = self.clock()
        self.link.send(Frame(KIND, meta={"seq": seq, "t1": t1, "burst": self._burst}))
        deadline = t1 + int(self.timeout_s * 1e9)
        while True:
            remaining = (deadline - self.clock()) / 1e9
            if remaining <= 0:
                self.lost += 1
                return None
            try:
                reply = self.link.recv(remaining)
            except LinkTimeout:
                self.lost += 1
                return None
            t4 = self.clock()
            if reply.kind == "error":
                raise RuntimeError(f"clock-sync peer answered with an error: {reply.meta.get('error')}")
            if reply.kind != KIND or reply.meta.get("seq") != seq:
                continue  # a late reply to an earlier, timed-out exchange: not ours
            m = reply.meta
            try:
                ex = Exchange(int(m["t1"]), int(m["t2"]), int(m["t3"]), t4, self._burst)
            except (KeyError, TypeError, ValueError) as exc:
                raise FrameError(f"malformed clock_sync reply: {m!r}") from exc
            if ex.t1_ns != t1:
                continue
            self.exchanges.append(ex)
            return ex

    def burst(self, n: int = 16, gap_s: float = 0.0) -> list[Exchange]:
        """``n`` exchanges back to back (``gap_s`` apart); they form one burst for the min-delay filter."""
        got = []
        for _ in range(n):
            ex = self.exchange_once()
            if ex is not None:
                got.append(ex)
            if gap_s > 0:
                time.sleep(gap_s)
        self._burst += 1
        if not got:
            raise LinkTimeout(f"clock sync: none of {n} exchanges was answered within {self.timeout_s} s")
        return got

    def fit(self) -> ClockMap:
        """The offset/drift map over every burst so far."""
        return fit_clock(self.exchanges)

    def manifest_records(self) -> list[dict[str, Any]]:
        """For ``manifest['clock_sync'][node]``: the fit first, then the best exchange of each burst as a timed
        sync point ``{t_ns (local), offset_ns, uncertainty_ns, rtt_ns}``."""
        out: list[dict[str, Any]] = [self.fit().to_dict()] if self.exchanges else [ClockMap.unsynced().to_dict()]
        for ex in best_per_burst(self.exchanges):
            out.append({"t_ns": int(ex.local_mid_ns), "offset_ns": float(ex.offset_ns),
                        "uncertainty_ns": float(ex.bound_ns), "rtt_ns": int(ex.delay_ns), "burst": ex.burst})
        return out


class OffsetClock:
    """A clock running at ``(1 + drift)`` the rate of ``base`` and ``offset_ns`` ahead of it: a simulated remote host.

    ``remote(t) = base(t) + offset_ns + drift * (base(t) - t0)`` with ``t0`` the base time at construction.
    """

    def __init__(self, offset_ns: int, drift: float = 0.0, base: Clock = time.monotonic_ns) -> None:
        self.offset_ns, self.drift, self.base = int(offset_ns), float(drift), base
        self.t0 = base()

    def __call__(self) -> int:
        b = self.base()
        return b + self.offset_ns + int(self.drift * (b - self.t0))

    def true_local_minus_remote(self, local_ns: int) -> float:
        """The exact offset (local - remote) at a local time, for checking a fit."""
        return -(self.offset_ns + self.drift * (local_ns - self.t0))
