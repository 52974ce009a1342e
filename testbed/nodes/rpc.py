"""Calling a node: a DEALER that matches answers to calls and drops stale ones.

A node answers control frames at once and jobs later, so answers on one connection can come out of call order and
an answer may arrive after its call timed out. Every call carries a fresh ``meta["msg_id"]`` (the server copies it
into the answer); :meth:`RpcClient.call` waits for that id and discards anything else.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import zmq

from megbed.megwire import (
    DEFAULT_LIMITS,
    CurveConfig,
    Frame,
    FrameError,
    FrameLimits,
    LinkTimeout,
    make_socket,
    recv_frame,
)
from megbed.megwire import send_frame as _send_frame
from megbed.testbed.nodes import protocol as P

log = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """A node answered with an ``error`` frame.

    Attributes
    ----------
    code : str
        The error code (``bad_request``, ``malformed``, ``internal``, ...).
    meta : dict
        The error frame's meta.
    """

    def __init__(self, message: str, code: str, meta: dict) -> None:
        super().__init__(message)
        self.code = code
        self.meta = meta


_COUNTER = itertools.count()


class RpcClient:
    """A DEALER connected to one node (or to the broker in front of it).

    Parameters
    ----------
    address : str
        The node's ROUTER address.
    ctx : zmq.Context
        Shared context (one per process).
    timeout_s : float
        Default time to wait for an answer.
    curve : CurveConfig, optional
        Client keys (``server_public_key_file`` set) when the node requires CURVE.
    limits : FrameLimits
        Limits for decoding answers.
    name : str
        Label for log lines.
    """

    def __init__(self, address: str, ctx: zmq.Context, *, timeout_s: float = 10.0, curve: CurveConfig | None = None,
                 limits: FrameLimits = DEFAULT_LIMITS, name: str = "client") -> None:
        self.address, self.ctx, self.timeout_s, self.limits, self.name = address, ctx, timeout_s, limits, name
        self._curve = curve
        self._prefix = f"{os.getpid():x}.{next(_COUNTER)}"
        self._seq = itertools.count()
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = make_socket(self.ctx, zmq.DEALER, timeout_s=self.timeout_s, curve=self._curve,
                           max_message_bytes=self.limits.max_total_bytes + self.limits.max_header_bytes + 65536)
        sock.connect(self.address)
        # One poller for the socket's life: Socket.poll builds and registers a new one on every call.
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def reconnect(self) -> None:
        """Drop the socket (and anything queued on it) and connect a fresh one."""
        self.sock.close(0)
        self.sock = self._connect()

    def send(self, frame: Frame) -> str:
        """Send ``frame`` with a fresh msg_id; returns the id."""
        msg_id = f"{self._prefix}.{next(self._seq)}"
        frame.meta["msg_id"] = msg_id
        _send_frame(self.sock, frame)
        return msg_id

    def wait(self, msg_id: str, timeout_s: float | None = None, *, raise_errors: bool = True) -> Frame:
        """The answer carrying ``msg_id``; raises :class:`LinkTimeout` past the timeout, :class:`NodeError` on an
        ``error`` answer (unless ``raise_errors`` is false)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._poller.poll(remaining_ms):
                raise LinkTimeout(f"{self.name}: no answer from {self.address} within "
                                  f"{self.timeout_s if timeout_s is None else timeout_s:.1f} s")
            try:
                _, frame = recv_frame(self.sock, self.limits)
            except FrameError as exc:
                log.warning("%s: undecodable answer from %s dropped: %s", self.name, self.address, exc)
                continue
            got = frame.meta.get("msg_id")
            if got != msg_id:
                # An error about an undecodable frame of ours carries no msg_id; anything else is stale.
                log.debug("%s: dropped stale %r (msg_id %r, waiting for %r)", self.name, frame.kind, got, msg_id)
                continue
            if frame.kind == P.ERROR and raise_errors:
                raise NodeError(str(frame.meta.get("error")), str(frame.meta.get("code")), dict(frame.meta))
            return frame

    def call(self, frame: Frame, timeout_s: float | None = None, *, raise_errors: bool = True) -> Frame:
        """Send ``frame`` and wait for its answer."""
        return self.wait(self.send(frame), timeout_s, raise_errors=raise_errors)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
