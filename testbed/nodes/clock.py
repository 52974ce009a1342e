"""Clock sync glue: the nodes answer ``clock_sync`` frames with the measurement layer's responder, and the
orchestrator maps each node's monotonic stamps onto its own timeline with the measurement layer's fit.

The NTP-style exchange, filtering and the offset/drift fit live in ``measurements.clocksync``; this module only binds
them to the node server (answers are produced in the server's loop thread, so a running job never delays them) and
gives the orchestrator one small type, :class:`ClockMap`, whatever the fit object looks like.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from megwire import Frame
from testbed.nodes import protocol as P

log = logging.getLogger(__name__)


def _clocksync() -> Any:
    try:
        from measurements import clocksync
    except ImportError:
        return None
    return clocksync


def register_clock_sync(server: Any) -> bool:
    """Serve ``clock_sync`` frames on ``server`` with the measurement layer's responder; False when absent."""
    cs = _clocksync()
    if cs is None or not hasattr(cs, "ClockSyncResponder"):
        log.warning("%s: measurements.clocksync not available: clock_sync frames will be refused", server.name)
        return False
    responder = cs.ClockSyncResponder()

    def answer(frame: Frame, peer: Any) -> Frame:
        return responder.answer(frame, t_recv_ns=peer.t_recv_ns)

    server.handle(P.CLOCK_SYNC, answer)
    return True


@dataclass(frozen=True)
class ClockMap:
    """Maps a node's monotonic nanoseconds onto the orchestrator's.

    ``local = remote + offset_ns + drift * (remote - ref_remote_ns)``.

    Attributes
    ----------
    node : str
        The node's name.
    offset_ns : float
        Offset at ``ref_remote_ns`` (ns).
    drift : float
        Relative rate difference (dimensionless; 1e-6 = 1 ppm).
    ref_remote_ns : int
        Reference point of the fit on the node's clock.
    uncertainty_ns : float
        Bound of the offset (half the minimum round trip, ns); NaN when not synchronised.
    method : str
        ``ntp_fit`` (fitted from exchanges) or ``unsynced`` (identity; only right on one host).
    samples : int
        Exchanges the fit used.
    """

    node: str
    offset_ns: float = 0.0
    drift: float = 0.0
    ref_remote_ns: int = 0
    uncertainty_ns: float = math.nan
    method: str = "unsynced"
    samples: int = 0

    def to_local(self, remote_ns: int) -> int:
        return int(round(remote_ns + self.offset_ns + self.drift * (remote_ns - self.ref_remote_ns)))

    def offset_at(self, remote_ns: int) -> int:
        return self.to_local(remote_ns) - int(remote_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "offset_ns": self.offset_ns, "drift": self.drift,
                "ref_remote_ns": self.ref_remote_ns, "uncertainty_ns": self.uncertainty_ns, "method": self.method,
                "samples": self.samples}


def sync_node(client: Any, name: str, *, exchanges: int = 32, previous: ClockMap | None = None) -> ClockMap:
    """Clock-sync one node over its control connection (``client``: an :class:`~testbed.nodes.rpc.RpcClient`).

    Returns an ``unsynced`` identity map (uncertainty NaN, with a warning) when the measurement layer's clock sync
    is absent or the node does not answer ``clock_sync``.
    """
    cs = _clocksync()
    if cs is None or not hasattr(cs, "ClockSyncClient"):
        log.warning("measurements.clocksync not available: %s's stamps are used unmapped", name)
        return previous or ClockMap(name)
    fit = cs.ClockSyncClient(lambda frame, timeout_s: client.call(frame, timeout_s)).sync(exchanges)
    return ClockMap(name, offset_ns=float(fit.offset_ns), drift=float(getattr(fit, "drift", 0.0)),
                    ref_remote_ns=int(getattr(fit, "ref_remote_ns", 0)),
                    uncertainty_ns=float(fit.uncertainty_ns), method="ntp_fit",
                    samples=int(getattr(fit, "samples", exchanges)))
