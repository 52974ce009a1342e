"""Clock sync glue: nodes answer ``clock_sync`` frames with the measurement layer's reply function, and the
orchestrator runs the measurement layer's :class:`~megbed.measurements.clocksync.ClockSync` over its control connections.

The NTP-style exchange, min-delay filtering and the offset/drift fit live in :mod:`megbed.measurements.clocksync`; this
module binds them to the node server (answers are produced in the server's loop thread with ``t2`` stamped when the
message was received, so a running job never delays them) and to the orchestrator's RPC clients.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from megbed.measurements.clocksync import ClockMap, ClockSync, clock_sync_reply, fit_clock
from megbed.megwire import Frame, FrameError, Link, LinkTimeout
from megbed.testbed.nodes import protocol as P

log = logging.getLogger(__name__)

__all__ = ["ClockMap", "NodeClock", "register_clock_sync"]


def register_clock_sync(server: Any) -> None:
    """Serve ``clock_sync`` frames on ``server`` (``t2`` = the loop's receive stamp, ``t3`` = just before the answer,
    both on ``server.clock``)."""
    clock = server.clock

    def answer(frame: Frame, peer: Any) -> Frame:
        try:
            return clock_sync_reply(frame, peer.t_recv_ns, clock)
        except FrameError as exc:
            raise P.ProtocolError(f"clock_sync: {exc}") from exc

    server.handle(P.CLOCK_SYNC, answer)


class _RpcLink(Link):
    """An :class:`~megbed.testbed.nodes.rpc.RpcClient` seen as a megwire ``Link`` (what ``ClockSync`` talks to)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._last: str | None = None

    def send(self, frame: Frame) -> None:
        self._last = self.client.send(frame)

    def recv(self, timeout_s: float | None = None) -> Frame:
        if self._last is None:
            raise LinkTimeout("nothing sent")
        return self.client.wait(self._last, timeout_s, raise_errors=False)


class NodeClock:
    """Clock sync with one node over the orchestrator's control connection, kept over the whole run.

    Parameters
    ----------
    client : RpcClient
        The orchestrator's control client of the node (used only between requests).
    name : str
        The node's name (log lines).
    timeout_s : float
        Wait per exchange.
    min_drift_span_s : float
        Drift is fitted only over bursts at least this far apart. Each burst's offset is known to about half a round
        trip (~0.1 ms on a LAN); two bursts 20 ms apart would "measure" a drift of thousands of ppm from that noise
        alone, and extrapolating it over a run shifts stamps by milliseconds. Closer bursts give the best single
        offset with drift 0.
    """

    def __init__(self, client: Any, name: str, timeout_s: float = 1.0, min_drift_span_s: float = 30.0) -> None:
        self.name = name
        self.min_drift_span_s = float(min_drift_span_s)
        self.sync = ClockSync(_RpcLink(client), timeout_s=timeout_s)
        self.map: ClockMap = ClockMap.unsynced()
        self.t_last_burst: float = -float("inf")

    def burst(self, n: int = 16) -> ClockMap:
        """One burst of ``n`` exchanges, then refit over every burst so far (offset + drift)."""
        try:
            self.sync.burst(n)
        except (LinkTimeout, RuntimeError, FrameError) as exc:
            log.warning("clock sync with %s failed: %s (keeping %s map)", self.name, exc, self.map.method)
            return self.map
        self.t_last_burst = time.monotonic()
        self.map = fit_clock(self.sync.exchanges, min_span_s=self.min_drift_span_s)
        log.info("clock %s: offset %.0f ns +- %.0f ns, drift %.3f ppm (%s, %d bursts)", self.name,
                 self.map.offset_ns, self.map.uncertainty_ns, self.map.drift * 1e6, self.map.method,
                 self.map.samples)
        return self.map

    def records(self) -> list[dict[str, Any]]:
        """Manifest records: the fit in force first, then each burst's best exchange as a timed sync point."""
        records = self.sync.manifest_records()
        if records:
            records[0] = self.map.to_dict()
        return records
