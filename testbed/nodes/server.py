"""The node server loop: one ROUTER that never stops answering, and a worker thread for long jobs.

Every testbed node (ES, UE) is a :class:`NodeServer`: a ROUTER socket bound to one address, served by a loop that

* decodes each message with the frame limits and answers a malformed frame, a wrong protocol version, an oversized
  declared payload or an unknown kind with an ``error`` frame (and a log line saying what was wrong and from whom),
  then keeps serving;
* answers control frames (``heartbeat``, ``hello``, ``clock_sync``) at once, in the loop thread, even while a long
  job runs -- so an orchestrator tells a busy node from a dead one, and clock-sync timestamps are not delayed by
  compute;
* hands long jobs (generation) to one worker thread, in arrival order (a node computes one request at a time, like
  one GPU), and sends their replies when they finish: the worker encodes each reply and queues its parts, then wakes
  the loop's poll through a socket pair (ZeroMQ sockets are not shared between threads; a queue and one byte cost a
  fraction of an inproc ZeroMQ hand-off, which builds and reads a message per part);
* watches the socket's monitor for refused CURVE handshakes and logs them (rate-limited: a flood of refused peers
  writes one line per interval with a count);
* never blocks on a peer: answers go out non-blocking into the peer's bounded pipe (``SNDHWM``); a peer that does not
  read gets its surplus answers dropped and counted (``stats.dropped_replies``), while everyone else -- heartbeats
  included -- is answered on time;
* is total: whatever a message holds, the peer gets an ``error`` frame (or nothing, when the message carries no
  routing id) and the loop goes on; every peer-chosen string (``kind``, ``msg_id``, error text) is clipped before it
  reaches a log line or an answer, and a ``msg_id`` that is not a short string or a 63-bit integer is refused rather
  than echoed.

Handlers are plain functions ``fn(frame, peer) -> Frame | GrowingFrame | None`` (a ``GrowingFrame``: an answer the
handler encoded already, to size it; the server adds the ``msg_id`` to it without encoding it again); raising :class:`~megbed.testbed.nodes.protocol.ProtocolError`
turns into a ``bad_request`` error answer naming the field, any other exception into an ``internal`` error answer
(logged with its traceback); the loop survives both.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from megbed.megwire import (
    DEFAULT_LIMITS,
    CurveConfig,
    Frame,
    FrameError,
    FrameLimits,
    error_frame,
    from_parts,
    make_socket,
    split_envelope,
    stop_authenticator,
    to_parts,
)

# answers encoded once, raw-part plumbing (plain-int flags): internal to megwire's modules, not its public face
from megbed.megwire.frames import GrowingFrame
from megbed.megwire.logutil import clip, rate_limit
from megbed.megwire.sockets import NOBLOCK, recv_parts, send_parts
from megbed.testbed.nodes import protocol as P

log = rate_limit(logging.getLogger(__name__))

MAX_MSG_ID_CHARS = 128
DEFAULT_SEND_HWM = 256  # answers queued per peer before the surplus is dropped (a peer that does not read)
DEFAULT_RECV_HWM = 64  # messages buffered per peer before libzmq stops reading its connection (TCP back-pressure)

# ZMQ_EVENTS read in plain ints: "is another message waiting?" costs ~1 us this way, where a NOBLOCK receive that
# finds none raises zmq.Again (~5 us: pyzmq builds the exception's errno enum and message).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


@dataclass
class Peer:
    """Who sent a frame: the ROUTER envelope (routing ids) to answer to, plus when it arrived.

    Attributes
    ----------
    envelope : list[bytes]
        Routing ids, outermost first (a frame relayed by the broker has two).
    t_recv_ns : int
        ``time.monotonic_ns()`` when the loop received the message.
    """

    envelope: list[bytes]
    t_recv_ns: int

    @property
    def label(self) -> str:
        return "/".join(e.hex()[:10] for e in self.envelope) or "?"


Handler = Callable[[Frame, Peer], "Frame | GrowingFrame | None"]


@dataclass
class _Route:
    fn: Handler
    blocking: bool


@dataclass
class ServerStats:
    """Counters a node reports in its heartbeat answers."""

    received: int = 0
    replied: int = 0
    rejected: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    refused_handshakes: int = 0
    jobs_done: int = 0
    dropped_replies: int = 0
    loop_errors: int = 0

    def to_meta(self) -> dict:
        return {
            "received": self.received, "replied": self.replied, "rejected": dict(self.rejected),
            "by_kind": dict(self.by_kind), "refused_handshakes": self.refused_handshakes, "jobs_done": self.jobs_done,
            "dropped_replies": self.dropped_replies, "loop_errors": self.loop_errors,
        }


def _waiting(sock: zmq.Socket) -> bool:
    """Whether another message waits on ``sock`` (False once the socket is closing: the loop then polls again)."""
    try:
        return bool(sock.getsockopt(_EVENTS) & _POLLIN)
    except zmq.ZMQError:
        return False


def _valid_msg_id(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_MSG_ID_CHARS
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _answer_parts(reply: Frame | GrowingFrame, msg_id: object) -> list:
    """The parts of a handler's answer, carrying the request's ``msg_id`` unless the handler set one."""
    if isinstance(reply, GrowingFrame):
        if msg_id is not None and "msg_id" not in reply.frame.meta:
            reply.add({"msg_id": msg_id})
        return reply.to_parts()
    if msg_id is not None and "msg_id" not in reply.meta:
        reply.meta["msg_id"] = msg_id
    return to_parts(reply)


def normalise_bind(address: str) -> str:
    """``tcp://host:0`` -> ``tcp://host:*`` (an ephemeral port, read back from the socket)."""
    if address.startswith("tcp://") and address.endswith(":0"):
        return address[:-1] + "*"
    return address


class NodeServer:
    """A ROUTER-based node server with inline control handlers and a serial worker for jobs.

    Parameters
    ----------
    name : str
        Node name in log lines and heartbeat answers (``es``, ``ue1``, ...).
    bind : str
        ZeroMQ address to bind (``tcp://127.0.0.1:5555``; port 0 picks a free one; see :attr:`address`).
    ctx : zmq.Context, optional
        Context to use (a private one otherwise).
    curve : CurveConfig, optional
        CURVE server keys (``authorized_clients_dir`` set): only the listed client keys get through.
    limits : FrameLimits
        Frame limits applied before anything is allocated.
    max_message_bytes : int, optional
        ZMQ_MAXMSGSIZE: libzmq drops a peer that sends more (defaults to the limits plus slack).
    queue_max : int
        Jobs that may wait for the worker; more are refused with a ``busy`` error.
    send_timeout_s : float
        SNDTIMEO of the socket (answers themselves are sent non-blocking; kept for the socket's other uses).
    send_hwm : int
        Answers queued per peer (``SNDHWM``); past it a non-reading peer's answers are dropped and counted.
    recv_hwm : int
        Messages buffered per peer (``RCVHWM``); a peer sending faster than the node serves is slowed by TCP
        back-pressure instead of filling the node's memory.
    shutdown_grace_s : float
        How long :meth:`stop` waits for a running job before leaving it to die with the process.
    clock : callable
        The node's monotonic clock (ns) for receive stamps (clock sync's ``t2``); injected in tests.
    """

    def __init__(
        self,
        name: str,
        bind: str,
        *,
        ctx: zmq.Context | None = None,
        curve: CurveConfig | None = None,
        limits: FrameLimits = DEFAULT_LIMITS,
        max_message_bytes: int | None = None,
        queue_max: int = 64,
        send_timeout_s: float = 5.0,
        send_hwm: int = DEFAULT_SEND_HWM,
        recv_hwm: int = DEFAULT_RECV_HWM,
        shutdown_grace_s: float = 5.0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.clock = clock
        self.limits = limits
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._curve = curve
        self._routes: dict[str, _Route] = {}
        # A SimpleQueue (implemented in C) bounded by hand: queue.Queue's Python-level condition variables cost
        # microseconds per hand-off. Each count is written by one thread only (put: loop, got: worker).
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.queue_max = int(queue_max)
        self._jobs_put = 0
        self._jobs_got = 0
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.stats = ServerStats()
        self.t0_ns = time.monotonic_ns()
        self.busy_with: str | None = None
        self.shutdown_grace_s = float(shutdown_grace_s)
        self.last_heartbeat_s: float | None = None  # time.monotonic() of the last heartbeat served
        max_bytes = max_message_bytes or (limits.max_total_bytes + limits.max_header_bytes + 65536)
        self.max_message_bytes = max_bytes
        self._router = make_socket(self.ctx, zmq.ROUTER, timeout_s=1.0, send_timeout_s=send_timeout_s,
                                   max_message_bytes=max_bytes, curve=curve)
        # Sending to a peer that left raises instead of dropping silently, so it is counted.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.SNDHWM, int(send_hwm))
        self._router.setsockopt(zmq.RCVHWM, int(recv_hwm))
        self._router.bind(normalise_bind(bind))
        self.address = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._monitor = self._router.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
        )
        # Job answers: encoded parts queued by the worker, which then writes a byte to wake the loop's poll.
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._worker: threading.Thread | None = None
        # Callables run on the worker thread as it exits (closing sockets the jobs created there).
        self.worker_cleanup: list[Callable[[], None]] = []
        self._loop_thread: threading.Thread | None = None
        self.handle(P.HEARTBEAT, self._heartbeat)
        self.handle(P.HELLO, self._hello)
        self.info: dict = {"node": name}

    # --- registration -----------------------------------------------------------------------------------------------

    def handle(self, kind: str, fn: Handler, *, blocking: bool = False) -> None:
        """Serve frames of ``kind`` with ``fn``; ``blocking`` jobs run on the worker thread, one at a time."""
        self._routes[kind] = _Route(fn, blocking)

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker (the one it runs is not counted)."""
        return self._jobs_put - self._jobs_got

    @property
    def kinds(self) -> list[str]:
        return sorted(self._routes)

    # --- built-in control handlers ----------------------------------------------------------------------------------

    def _heartbeat(self, frame: Frame, peer: Peer) -> Frame:
        self.last_heartbeat_s = time.monotonic()
        return Frame(P.HEARTBEAT, meta={
            "node": self.name, "t_ns": time.monotonic_ns(), "uptime_s": (time.monotonic_ns() - self.t0_ns) / 1e9,
            "busy_with": self.busy_with, "queued": self.queued, "stats": self.stats.to_meta(),
            "pid": os.getpid(),
        })

    def _hello(self, frame: Frame, peer: Peer) -> Frame:
        return Frame(P.HELLO, meta={**self.info, "node": self.name, "kinds": self.kinds, "pid": os.getpid()})

    # --- running ----------------------------------------------------------------------------------------------------

    def start(self) -> NodeServer:
        """Serve in a background thread (returns once the socket is bound and the loop runs)."""
        self._loop_thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-loop", daemon=True)
        self._loop_thread.start()
        self.ready.wait(10)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and release the sockets (from another thread, or a signal handler via :meth:`request_stop`)."""
        self._stop.set()
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(timeout_s)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (long jobs poll it to give up early)."""
        return self._stop.is_set()

    def serve_forever(self) -> None:
        """The loop; returns after :meth:`stop` (sockets closed, worker joined)."""
        self._worker = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        log.info("%s serving on %s (kinds: %s)", self.name, self.address, ", ".join(self.kinds))
        self.ready.set()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if wake_fd in events:
                    self._drain_answers()
                if self._router in events:
                    # A burst is served in one go, but bounded, so job answers and the monitor are not starved.
                    for _ in range(64):
                        if not self._serve_one_guarded() or not _waiting(self._router):
                            break
                if self._monitor in events:
                    self._drain_monitor()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(self.shutdown_grace_s)
            if self._worker.is_alive():
                log.warning("%s: a job was still running at shutdown; left to end with the process", self.name)
        self._router.disable_monitor()
        for sock in (self._monitor, self._router):
            sock.close(0)
        self._wake_r.close()
        self._wake_w.close()
        if self._own_ctx:
            stop_authenticator(self.ctx)
            self.ctx.term()
        log.info("%s stopped (%s)", self.name, self.stats.to_meta())

    # --- one message ------------------------------------------------------------------------------------------------

    def _serve_one_guarded(self) -> bool:
        """Serve one message if one is waiting; False when none was. Nothing a message holds escapes this."""
        try:
            raw = recv_parts(self._router, NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.warning("%s: receive failed: %s", self.name, exc)
            return False
        envelope: list[bytes] = []
        try:
            envelope = [bytes(raw[0].buffer)] if raw else []
            self._serve_one(raw, envelope)
        except Exception as exc:  # noqa: BLE001 - last line of defence: log, answer, keep serving
            self.stats.loop_errors += 1
            log.error("%s: serving a message failed: %s: %s", self.name, type(exc).__name__, clip(exc),
                      exc_info=log.isEnabledFor(logging.DEBUG))
            try:
                self._reject(envelope, P.CODE_INTERNAL, "the node could not process this message", None)
            except Exception:  # noqa: BLE001 - even the error answer failed: the message is dropped
                pass
        return True

    def _serve_one(self, raw: list, envelope: list[bytes]) -> None:
        t_recv_ns = self.clock()
        self.stats.received += 1
        try:
            envelope, parts = split_envelope(raw)
            frame = from_parts(parts, self.limits)
        except FrameError as exc:
            code = P.classify_frame_error(str(exc))
            self._reject(envelope, code, f"rejected frame: {clip(str(exc))}", None, raw_len=len(raw))
            return
        peer = Peer(envelope, t_recv_ns)
        msg_id = frame.meta.get("msg_id")
        rid = frame.meta.get("request_id") if isinstance(frame.meta.get("request_id"), str) else None
        rid = rid if rid is None or len(rid) <= P.MAX_REQUEST_ID_CHARS else None
        if msg_id is not None and not _valid_msg_id(msg_id):
            self._reject(envelope, P.CODE_MALFORMED, f"field 'msg_id' must be a string of at most "
                         f"{MAX_MSG_ID_CHARS} characters or a 63-bit integer, got {clip(msg_id, 60)}", rid)
            return
        route = self._routes.get(frame.kind)
        if route is None:
            self._reject(envelope, P.CODE_UNKNOWN_KIND,
                         f"unknown frame kind {clip(frame.kind, 64)!r} (this node serves: {', '.join(self.kinds)})",
                         rid, msg_id=msg_id)
            return
        self.stats.by_kind[frame.kind] += 1
        if route.blocking:
            if self.queued >= self.queue_max:
                self._reject(envelope, P.CODE_BUSY, f"{self.name} is busy: {self.queue_max} jobs queued", rid,
                             msg_id=msg_id)
                return
            self._jobs_put += 1
            self._jobs.put((route.fn, frame, peer))
            return
        self._reply(envelope, frame, self._run(route.fn, frame, peer))

    def _run(self, fn: Handler, frame: Frame, peer: Peer) -> Frame | GrowingFrame | None:
        rid = frame.meta.get("request_id") if isinstance(frame.meta.get("request_id"), str) else None
        try:
            return fn(frame, peer)
        except P.ProtocolError as exc:
            self.stats.rejected[exc.code] += 1
            log.warning("%s: refused %r from %s: %s", self.name, frame.kind, peer.label, clip(str(exc), 500))
            return error_frame(clip(str(exc), 500), request_id=exc.request_id or rid, code=exc.code, node=self.name)
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the node
            self.stats.rejected[P.CODE_INTERNAL] += 1
            log.exception("%s: %r from %s failed", self.name, frame.kind, peer.label)
            return error_frame(f"{type(exc).__name__}: {clip(str(exc), 300)}", request_id=rid, code=P.CODE_INTERNAL,
                               node=self.name)

    def _reject(self, envelope: list[bytes], code: str, message: str, rid: str | None, *,
                msg_id: object = None, raw_len: int | None = None) -> None:
        self.stats.rejected[code] += 1
        who = "/".join(e.hex()[:10] for e in envelope) or "?"
        log.warning("%s: %s (peer %s%s)", self.name, message, who, "" if raw_len is None else f", {raw_len} parts")
        if not envelope:
            return
        extra = {} if msg_id is None else {"msg_id": msg_id}
        self._send(envelope, error_frame(message, request_id=rid, code=code, node=self.name, **extra), f"error {code!r}")

    def _reply(self, envelope: list[bytes], request: Frame, reply: Frame | GrowingFrame | None) -> None:
        if reply is not None:
            self._send(envelope, reply, f"answer to {request.kind!r}", request.meta.get("msg_id"))

    def _send(self, envelope: list[bytes], frame: Frame | GrowingFrame, what: str, msg_id: object = None) -> None:
        try:
            parts = _answer_parts(frame, msg_id)
        except FrameError as exc:
            log.error("%s: %s is not encodable: %s", self.name, what, clip(str(exc)))
            return
        self._send_parts([*envelope, b"", *parts], what)

    def _send_parts(self, parts: list, what: str) -> None:
        """Non-blocking send; a peer whose pipe is full (not reading) or gone loses this answer, counted."""
        try:
            send_parts(self._router, parts, NOBLOCK)
            self.stats.replied += 1
        except zmq.Again:
            self.stats.dropped_replies += 1
            log.warning("%s: dropped an answer (%s) to %s: the peer is not reading (%d dropped so far)", self.name,
                        clip(what, 64), "/".join(bytes(e).hex()[:10] for e in parts[:1]), self.stats.dropped_replies)
        except zmq.ZMQError as exc:
            self.stats.dropped_replies += 1
            log.warning("%s: could not answer (%s): %s", self.name, clip(what, 64), exc)

    # --- worker -----------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, frame, peer = job
                self._jobs_got += 1
                self.busy_with = frame.meta.get("request_id") if isinstance(frame.meta.get("request_id"), str) \
                    else frame.kind
                reply = self._run(fn, frame, peer)
                self.busy_with = None
                self.stats.jobs_done += 1
                if reply is None:
                    continue
                try:
                    parts = _answer_parts(reply, frame.meta.get("msg_id"))
                except FrameError as exc:
                    log.error("%s: reply to %r is not encodable: %s", self.name, frame.kind, exc)
                    parts = to_parts(error_frame(str(exc), code=P.CODE_INTERNAL, node=self.name))
                self._answers.put([*peer.envelope, b"", *parts])
                self._wake()
        finally:
            for fn in self.worker_cleanup:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - cleanup of one resource must not skip the others
                    log.exception("%s: worker cleanup failed", self.name)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            # Full of wake-ups already (BlockingIOError: the loop is bound to look at the queue), or closed at
            # shutdown (the answer has nowhere to go).
            pass

    def _drain_answers(self) -> None:
        # One read takes up to 4096 wake-ups (more left over only wake the next poll); the loop is the queue's only
        # reader, so a non-empty queue has an answer for get_nowait (no queue.Empty raised per drain).
        try:
            self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            pass
        answers = self._answers
        while not answers.empty():
            self._send_parts(answers.get_nowait(), "job answer")

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            kind = event["event"]
            endpoint = event.get("endpoint", b"")
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            if kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.stats.refused_handshakes += 1
                why = "unauthenticated peer (CURVE)" if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "bad handshake"
                log.warning("%s: refused a connection on %s: %s (%d refused so far)", self.name, endpoint, why,
                            self.stats.refused_handshakes)
            elif kind == zmq.EVENT_DISCONNECTED:
                log.debug("%s: a peer disconnected from %s", self.name, endpoint)


_N = TypeVar("_N", bound="ServedNode")


class ServedNode:
    """A node whose requests a :class:`NodeServer` (``self.server``) serves: its address and life cycle."""

    server: NodeServer

    @property
    def address(self) -> str:
        return self.server.address

    def start(self: _N) -> _N:
        """Serve in background threads; returns once the node answers."""
        self.server.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.stop()
