"""Links: a swappable point-to-point frame channel between two megbed endpoints.

Neither end knows which link it got (srsRAN's ZMQ radio idea): ``InProcLink`` joins two objects in one process,
``ZmqClientLink`` connects a DEALER to a peer's ROUTER -- directly, or through the channel broker, which looks the
same from both ends.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod

import zmq

from megbed.megwire.frames import DEFAULT_LIMITS, Frame, FrameLimits, from_parts, to_parts
from megbed.megwire.sockets import (
    DEFAULT_TIMEOUT_S,
    CurveConfig,
    LinkTimeout,
    make_socket,
    recv_frame,
    send_frame,
)


class Link(ABC):
    """Send and receive frames with timeouts."""

    @abstractmethod
    def send(self, frame: Frame) -> None:
        """Send one frame; raises :class:`LinkTimeout` if it cannot leave in time."""

    @abstractmethod
    def recv(self, timeout_s: float | None = None) -> Frame:
        """Receive one frame; raises :class:`LinkTimeout` when none arrives in time."""

    def request(self, frame: Frame, timeout_s: float | None = None) -> Frame:
        """Send ``frame`` and wait for the next frame."""
        self.send(frame)
        return self.recv(timeout_s)

    def close(self) -> None:  # noqa: B027 - optional for links without resources
        """Release the link's resources."""

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcLink(Link):
    """One end of an in-process link. Frames go through the same encode/decode as on a socket."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue, timeout_s: float, limits: FrameLimits) -> None:
        self._inbox, self._outbox = inbox, outbox
        self.timeout_s, self.limits = timeout_s, limits

    @classmethod
    def pair(cls, timeout_s: float = DEFAULT_TIMEOUT_S, limits: FrameLimits = DEFAULT_LIMITS) -> tuple[InProcLink, InProcLink]:
        """Two connected ends."""
        a, b = queue.Queue(), queue.Queue()
        return cls(a, b, timeout_s, limits), cls(b, a, timeout_s, limits)

    def send(self, frame: Frame) -> None:
        # Encoding here catches an unserialisable frame at the sender, exactly as a socket would.
        self._outbox.put([bytes(p) for p in to_parts(frame)])

    def recv(self, timeout_s: float | None = None) -> Frame:
        try:
            parts = self._inbox.get(timeout=self.timeout_s if timeout_s is None else timeout_s)
        except queue.Empty as exc:
            raise LinkTimeout("receive timed out") from exc
        return from_parts(parts, self.limits)


class ZmqClientLink(Link):
    """A DEALER connected to a server's ROUTER (or to the broker in front of it)."""

    def __init__(
        self,
        address: str,
        *,
        ctx: zmq.Context | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        curve: CurveConfig | None = None,
        limits: FrameLimits = DEFAULT_LIMITS,
        identity: bytes | None = None,
    ) -> None:
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.address, self.timeout_s, self.limits = address, timeout_s, limits
        self.sock = make_socket(self.ctx, zmq.DEALER, timeout_s=timeout_s, curve=curve, identity=identity)
        self.sock.connect(address)

    def send(self, frame: Frame) -> None:
        send_frame(self.sock, frame)

    def recv(self, timeout_s: float | None = None) -> Frame:
        if timeout_s is not None:
            self.sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
        try:
            _, frame = recv_frame(self.sock, self.limits)
        finally:
            if timeout_s is not None:
                self.sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
        return frame

    def close(self) -> None:
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()
