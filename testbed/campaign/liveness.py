"""Liveness of the UE -> ES path: heartbeats sent through the address the UE uses for the ES (the channel broker).

The orchestrator heartbeats the ES and the UEs directly, so a node whose serving loop hangs is declared dead within
``timeouts.dead_after_s`` and restarted. The channel broker sits between them and answers nothing of its own: a
broker whose socket thread died (its process still up) used to go unnoticed, and every MEG/CEG request after it
failed at ``request_s`` each. The broker forwards ``heartbeat`` frames to the ES untouched (a bypass kind) and the
ES's answer back, so a heartbeat sent to the broker's front address is answered exactly when both the broker and the
ES serve; with the ES known alive (its own heartbeats), silence means the broker is unresponsive.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from megbed.megwire import CurveConfig, Frame, FrameError, LinkTimeout
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.rpc import NodeError, RpcClient

log = logging.getLogger(__name__)


@dataclass
class PathProbe:
    """Heartbeats to one UE's upstream address (the broker's front, or the ES when there is no broker).

    Parameters
    ----------
    address : str
        The ZeroMQ address the UE sends its requests to.
    ctx : zmq.Context
        The orchestrator's context.
    curve : CurveConfig, optional
        Client keys when that address requires CURVE.
    heartbeat_s : float
        Wait for one heartbeat's answer (s).
    local_name : str, optional
        The local cluster's process behind ``address`` (``channel``), restartable; None for a remote path.
    """

    address: str
    ctx: Any
    curve: CurveConfig | None = None
    heartbeat_s: float = 1.0
    local_name: str | None = None
    _client: RpcClient | None = field(default=None, repr=False)

    def ping(self, window_s: float) -> bool:
        """Send heartbeats (one every ``heartbeat_s``) until one is answered or ``window_s`` has passed."""
        deadline = time.monotonic() + max(window_s, self.heartbeat_s)
        if self._client is None:
            self._client = RpcClient(self.address, self.ctx, timeout_s=self.heartbeat_s, curve=self.curve,
                                     name=f"path-probe->{self.address}")
        while True:
            try:
                self._client.call(Frame(P.HEARTBEAT), timeout_s=self.heartbeat_s)
                return True
            except (LinkTimeout, NodeError, FrameError) as exc:
                log.debug("path probe %s: %s", self.address, exc)
                # A fresh socket: nothing stale queued, and a restarted peer is reached at once.
                self._client.reconnect()
            if time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# How long a freshly started node may take to answer at all: its first moments pay one-off costs (imports, the
# broker's warm-up -- Sionna, BLER tables, numba kernels -- before it binds) that a loaded machine stretches many
# times. A node that dies meanwhile is noticed at once (its process exits), so this bound costs nothing when healthy.
STARTUP_WAIT_S = 120.0


def startup_wait_s(request_s: float) -> float:
    """Seconds to wait for freshly started nodes to answer (or to serve their first, warm-up request)."""
    return max(STARTUP_WAIT_S, float(request_s))


def wait_for_local_broker(cluster: Any, ctx: Any, curve: CurveConfig | None, heartbeat_s: float,
                          wait_s: float) -> PathProbe | None:
    """Block until the local cluster's channel broker answers heartbeats through to the ES; None without a broker.

    The broker binds its sockets only after its warm-up, so a request sent before that waits in the UE's queue and
    can time out on a loaded machine: callers wait here (readiness, not a sleep) before the first request.

    Raises
    ------
    RuntimeError
        A node process exited (with its log tail), or the broker did not answer within ``wait_s``.
    """
    if cluster.broker is None:
        return None
    probe = PathProbe(cluster.broker, ctx, curve, heartbeat_s, "channel")
    deadline = time.monotonic() + wait_s
    while not probe.ping(min(5.0, max(0.0, deadline - time.monotonic()))):
        cluster.check_started()  # a broker that exited says why, at once
        if time.monotonic() >= deadline:
            probe.close()
            raise RuntimeError(f"the local channel broker at {probe.address} did not answer within {wait_s:.0f} s; "
                               f"see {cluster.nodes['channel'].log_path}")
    return probe
