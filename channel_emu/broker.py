"""The channel broker: a transparent ZeroMQ proxy between the UEs and the ES that makes the downlink a radio link.

Topology (UE requests, ES answers)::

    UE DEALER --connect--> [frontend ROUTER  (--listen)]  broker  [backend DEALER] --connect--> ES ROUTER (--es)
                                                          [PUB (--pub)] --> measurement layer (delivery records)

* **Uplink** (UE -> ES): validated and forwarded at once (or after ``uplink_delay_s``). A ``request`` frame's
  ``meta["link"]`` (or ``meta["request"]["link"]``: ``link_model``, ``tx_mode``, ``distance_m`` | ``snr_db``; the
  testbed's ``Request.link_meta()``) is remembered per ``request_id`` and applied to the answer.
* **Downlink** (ES -> UE): each frame goes through :meth:`ChannelEmulator.deliver` on a worker thread and is released
  to the UE after its emulated airtime in wall-clock (monotonic) time. The link is FIFO: a frame goes on air when it
  is processed *and* the previous one has left (``start = max(done, link_free)``, ``release = start + airtime``);
  processing of the next frame overlaps the airtime of the current one. A frame on a fast link (analog or Shannon
  mode over AWGN, at most ``INLINE_MAX_BYTES``: well under a millisecond of processing) that finds the emulator
  thread idle is processed on the socket thread instead, in the same order and with the same random draws: two
  thread hand-offs fewer on the way down.
* Control frames (``heartbeat``, ``error``, ``clock_sync``, or meta ``"channel": "bypass"``) pass untouched.
* Every delivery record is published on the PUB socket as a megwire frame of kind ``delivery`` (meta: the record,
  ``request_id``, ``t_done_ns`` / ``t_release_ns`` on the broker's monotonic clock, ``queue_s``).
* Malformed, truncated or oversized frames never crash it and are never unpickled: they produce an error record
  (published, ``error`` set) and an ``error`` frame to the UE concerned (the sender on the uplink, the addressee on
  the downlink); the broker keeps serving. Each frame is handled under its own guard (whatever it holds, the socket
  thread goes on); should the socket or emulator thread die all the same, :meth:`Broker.serve_forever` raises
  :class:`BrokerDied` (the CLI exits non-zero, so supervision restarts the broker) instead of leaving a process up
  with a dead link.
* Sends never block: a peer that does not read loses its surplus frames (counted in ``stats["dropped"]``).
* With CURVE keys every socket is authenticated: the frontend and the PUB (delivery records) admit only the
  authorised client keys; warnings a peer can trigger are rate-limited and clip peer-chosen text.

Routing is the standard ROUTER/DEALER proxy: the ES sees ``[broker id, ue id, b"", *parts]`` and answers with the
same envelope, so the broker knows which UE to release each answer to. Neither end can tell the broker is there.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.emulator import ChannelEmulator
from megbed.channel_emu.record import DeliveryRecord
from megbed.megwire import (
    DEFAULT_LIMITS,
    CurveConfig,
    Frame,
    FrameError,
    FrameLimits,
    bind_address,
    error_frame,
    from_parts,
    make_socket,
    split_envelope,
    to_parts,
)

# the relay's raw-part plumbing (plain-int flags, header splice): internal to megwire's modules, not its public face
from megbed.megwire.frames import GrowingFrame, parts_with_meta
from megbed.megwire.logutil import clip, rate_limit
from megbed.megwire.sockets import NOBLOCK, recv_parts, send_parts

log = rate_limit(logging.getLogger(__name__))

BYPASS_KINDS = frozenset({"heartbeat", "error", "clock_sync"})
DELIVERY_KIND = "delivery"
MAX_REMEMBERED_LINKS = 4096
MAX_REQUEST_ID_CHARS = 256
MAX_PEER_TEXT = 300
INLINE_MAX_BYTES = 256 * 1024  # largest downlink payload emulated on the socket thread (analog AWGN: < 1 ms)
INLINE_MODES = frozenset({"analog", "shannon"})  # characters of an error text (which may quote a peer) kept in records and answers


class BrokerDied(RuntimeError):
    """A broker thread ended while the broker was meant to serve (the message says which and why)."""


@dataclass
class BrokerAddresses:
    """Where the broker listens (UEs), connects (ES) and publishes (records). A port of 0 binds a random port."""

    listen: str = "tcp://127.0.0.1:5560"
    es: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5561"


def _bypass(frame: Frame) -> bool:
    return frame.kind in BYPASS_KINDS or frame.meta.get("channel") == "bypass"


def _request_id(frame: Frame | None) -> str | None:
    rid = frame.meta.get("request_id") if frame is not None else None
    return rid if isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID_CHARS else None


def _link_of(frame: Frame) -> dict[str, Any] | None:
    link = frame.meta.get("link")
    if not isinstance(link, Mapping):
        req = frame.meta.get("request")
        link = req.get("link") if isinstance(req, Mapping) else None
    if not isinstance(link, Mapping):
        return None
    # Only short strings and plain numbers are kept: remembered links must not hold a peer's megabytes.
    return {k: v for k in ("link_model", "tx_mode", "distance_m", "snr_db") if k in link
            for v in (link[k],) if v is None or (isinstance(v, str) and len(v) <= 64)
            or (isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300)}


class Broker:
    """The channel broker (see the module docstring); :meth:`start` runs it in threads, :meth:`stop` ends it.

    Parameters
    ----------
    config : LinkConfig or mapping
        The link.
    seed : int, optional
        Seed of the emulator (noise and channel process).
    addresses : BrokerAddresses
        ``listen`` / ``es`` / ``pub``.
    limits : FrameLimits
        Frames over these are refused (error record + error frame).
    curve_server : CurveConfig, optional
        CURVE for the frontend (UEs are clients of the broker).
    curve_client : CurveConfig, optional
        CURVE for the backend (the broker is a client of the ES).
    curve_pub : CurveConfig, optional
        CURVE for the PUB socket (subscribers are clients); default: ``curve_server``'s keys and client list.
    warm_up : bool
        Pay the emulator's one-off costs (Sionna import, BLER table, numba kernels of every mode) in :meth:`start`,
        before the sockets open, so that the first request is not delayed by seconds (see ``warm_up_s``).
    warm_up_payload_bits : tuple of int
        Payload sizes (bits, e.g. 16 x the latent's values) whose LDPC codes are built at start for every MCS the
        link may use (see :meth:`ChannelEmulator.warm_up`).
    inline_fast : bool
        Emulate fast-link frames on the socket thread when the emulator thread is idle (see the module docstring).
    """

    def __init__(self, config: LinkConfig | Mapping[str, Any] | None = None, seed: int | None = None,
                 addresses: BrokerAddresses | None = None, limits: FrameLimits = DEFAULT_LIMITS,
                 curve_server: CurveConfig | None = None, curve_client: CurveConfig | None = None,
                 ctx: zmq.Context | None = None, warm_up: bool = True,
                 warm_up_payload_bits: tuple[int, ...] = (), curve_pub: CurveConfig | None = None,
                 inline_fast: bool = True) -> None:
        self.emulator = ChannelEmulator(config, seed)
        self.warm_up = warm_up
        self.warm_up_payload_bits = tuple(warm_up_payload_bits)
        self.warm_up_s: dict[str, float] = {}
        self.config = self.emulator.config
        self.addresses = addresses or BrokerAddresses()
        self.limits = limits
        self.curve_server, self.curve_client = curve_server, curve_client
        self.curve_pub = curve_pub if curve_pub is not None else curve_server
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._stop = threading.Event()
        self._ready = threading.Event()
        # SimpleQueue (implemented in C): queue.Queue's Python-level locks cost microseconds per hand-off.
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        # The emulator thread wakes the socket thread's poll through this pair the moment a frame is done (polling
        # the queue on a timer would add up to the poll interval to every downlink frame).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._links: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self.listen_address = self.pub_address = ""
        self.stats = {"uplink": 0, "downlink": 0, "bypass": 0, "errors": 0, "dropped": 0, "loop_errors": 0}
        self.died: str | None = None  # why a thread ended unasked (serve_forever raises BrokerDied)
        self._seq = itertools.count()
        self.inline_fast = inline_fast
        self._in_emulator = 0  # frames handed to the emulator thread and not yet scheduled (socket thread only)

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Warm the emulator up (unless disabled), then bind/connect the sockets and serve in background threads
        (``timeout_s`` bounds the socket set-up, not the warm-up)."""
        if self.warm_up and not self.warm_up_s:
            t0 = time.monotonic()
            self.warm_up_s = self.emulator.warm_up(payload_bits=self.warm_up_payload_bits)
            log.info("channel broker warmed up in %.1f s (%s)", time.monotonic() - t0,
                     ", ".join(f"{k} {v:.2f} s" for k, v in self.warm_up_s.items()))
        main = threading.Thread(target=self._run, name="channel-broker", daemon=True)
        worker = threading.Thread(target=self._work, name="channel-broker-emulator", daemon=True)
        self._threads = [main, worker]
        worker.start()
        main.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("channel broker did not start")
        if self._error is not None:
            raise RuntimeError(f"channel broker failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        for t in self._threads:
            t.join(timeout_s)
        if not any(t.is_alive() for t in self._threads):
            self._wake_r.close()
            self._wake_w.close()
        if self._own_ctx:
            self.ctx.term()

    def serve_forever(self) -> None:
        """Run until interrupted (the CLI's node loop).

        Raises
        ------
        BrokerDied
            A socket or emulator thread ended while serving: the process must not stay up with a dead link.
        """
        self.start()
        try:
            while not self._stop.is_set():
                time.sleep(0.2)
                dead = self.dead_threads()
                if dead:
                    raise BrokerDied(f"channel broker thread(s) {', '.join(dead)} died: {self.died or 'unknown'}")
        finally:
            self.stop()

    def dead_threads(self) -> list[str]:
        """Names of the broker's threads that ended while it was meant to serve."""
        if self._stop.is_set():
            return []
        return [t.name for t in self._threads if not t.is_alive()]

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the emulator thread ---------------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._work_loop()
        except BaseException as exc:
            self.died = f"emulator thread: {type(exc).__name__}: {clip(str(exc))}"
            log.critical("channel broker %s", self.died)
            raise

    def _work_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._done.put(self._emulate(*job))
            self._wake()

    def _emulate(self, envelope: list[bytes], frame: Frame, link: dict[str, Any] | None,
                 head: Any = None) -> tuple:
        """One frame through the emulator: the job tuple :meth:`_schedule` takes (never raises). ``head``: the
        received first part ``frame`` was decoded from (the answer's header is that one plus the delivery record)."""
        t_start = time.monotonic_ns()
        try:
            out, rec = self.emulator.deliver(frame, link=link)
            return envelope, out, rec, None, t_start, time.monotonic_ns(), frame, head
        except Exception as exc:  # noqa: BLE001 - a bad frame or link must not stop the broker
            log.exception("channel emulation failed")
            return (envelope, frame, None, f"channel emulation failed: {clip(str(exc))}", t_start, time.monotonic_ns(),
                    frame, None)

    def _fast_link(self, frame: Frame, link: Mapping[str, Any] | None) -> bool:
        """Whether this frame's processing is short enough for the socket thread (see ``INLINE_MAX_BYTES``)."""
        link = link or {}
        mode = link.get("tx_mode") or self.config.mode
        model = link.get("link_model") or self.config.model
        return (mode in INLINE_MODES and model == "awgn"
                and sum(b.nbytes for b in frame.buffers.values()) <= INLINE_MAX_BYTES)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pair is full of wake-ups already: the socket thread is bound to look at the queue
        except OSError:
            pass  # closed at stop: the socket thread is gone

    # --- the socket thread -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            front = make_socket(self.ctx, zmq.ROUTER, timeout_s=1.0, curve=self.curve_server)
            # A UE sending without reading is slowed by TCP back-pressure, not buffered without bound.
            front.setsockopt(zmq.RCVHWM, 64)
            back = make_socket(self.ctx, zmq.DEALER, timeout_s=1.0, curve=self.curve_client)
            pub = make_socket(self.ctx, zmq.PUB, timeout_s=1.0, curve=self.curve_pub)
            self.listen_address = bind_address(front, self.addresses.listen)
            self.pub_address = bind_address(pub, self.addresses.pub)
            back.connect(self.addresses.es)
        except Exception as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        # (release_ns, seq, socket, parts, delivery record frame or None)
        self._pending: list[tuple[int, int, str, list, GrowingFrame | None]] = []
        self._link_free_ns = 0
        pending = self._pending
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                wait_ms = 5.0
                if pending:
                    wait_ms = max(0.0, min(wait_ms, (pending[0][0] - now) / 1e6))
                events = dict(poller.poll(wait_ms))
                if front in events:
                    self._guarded("uplink", self._uplink, front, back, pub, pending)
                if back in events:
                    self._guarded("downlink", self._downlink, front, pub, back)
                if self._wake_r.fileno() in events:
                    self._drain_wake()
                # Only frames handed to the emulator thread come back on the queue: none out, nothing to look for
                # (a frame emulated inline never touches it).
                while self._in_emulator and not self._done.empty():
                    self._in_emulator -= 1
                    self._guarded("emulated frame", self._schedule, self._done.get_nowait(), front, pub)
                self._release_due(front, back, pub)
        except BaseException as exc:
            self.died = f"socket thread: {type(exc).__name__}: {clip(str(exc))}"
            log.critical("channel broker %s", self.died)
            raise
        finally:
            for s in (front, back, pub):
                s.close(0)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _guarded(self, what: str, fn, *args: Any) -> None:
        """Run one frame's handling; nothing a frame holds escapes into the socket loop."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one frame must not end the broker
            self.stats["loop_errors"] += 1
            log.error("channel broker: handling a %s frame failed: %s: %s", what, type(exc).__name__, clip(str(exc)),
                      exc_info=log.isEnabledFor(logging.DEBUG))

    def _schedule(self, job: tuple, front: zmq.Socket, pub: zmq.Socket) -> None:
        envelope, out, rec, err, t_start, t_done, received, head = job
        if err is not None:
            self._error_record(pub, front, envelope, err, _request_id(out), "downlink", "internal")
            return
        start = max(t_done, self._link_free_ns)
        release = start + int(round(rec.airtime_s * 1e9))
        delivered = out.meta.get("delivery")  # the emulator's rec.to_dict(), made once already
        # The published record is that dict plus the release fields: its JSON is made once, for the record and for
        # the answer's header both.
        record = GrowingFrame(Frame(DELIVERY_KIND, meta=dict(delivered) if isinstance(delivered, dict)
                                    else rec.to_dict()))
        frame_parts = None
        if head is not None and len(out.meta) == len(received.meta) + 1 and isinstance(delivered, dict):
            # The emulator adds its record to the meta it was given: splice that into the received header rather
            # than encode the whole meta (the ES's records, the link, ...) again.
            frame_parts = parts_with_meta(head, received, {"delivery": delivered}, out.buffers,
                                          added_json=b'{"delivery":' + record.meta_json + b"}")
        parts = [*envelope, b"", *(frame_parts or to_parts(out))]
        self._link_free_ns = release
        record.add({"request_id": _request_id(out), "direction": "downlink", "t_done_ns": t_done,
                    "t_release_ns": release, "queue_s": (start - t_done) / 1e9})
        heapq.heappush(self._pending, (release, next(self._seq), "front", parts, record))

    def _release_due(self, front: zmq.Socket, back: zmq.Socket, pub: zmq.Socket) -> None:
        now = time.monotonic_ns()
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, where, parts, record = heapq.heappop(pending)
            sock = front if where == "front" else back
            self._send(sock, parts)
            if record is not None:
                self._publish(pub, record)

    def _send(self, sock: zmq.Socket, parts: list) -> None:
        try:
            send_parts(sock, parts, NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone or its queue full (not reading): drop, count, keep serving
            self.stats["dropped"] += 1
            log.warning("channel broker could not forward a frame (%d dropped so far): %s", self.stats["dropped"],
                        exc)

    def _publish(self, pub: zmq.Socket, frame: Frame | GrowingFrame) -> None:
        try:
            send_parts(pub, frame.to_parts() if isinstance(frame, GrowingFrame) else to_parts(frame), NOBLOCK)
        except (zmq.ZMQError, FrameError) as exc:
            log.warning("channel broker could not publish a record: %s", clip(str(exc)))

    def _error_record(self, pub, front, envelope: list[bytes], message: str, rid: str | None, direction: str,
                      code: str) -> None:
        self.stats["errors"] += 1
        message = clip(message, MAX_PEER_TEXT)
        log.warning("channel broker: %s (%s)", message, direction)
        rec = DeliveryRecord(mode=self.config.mode, model=self.config.model, error=message)
        self._publish(pub, Frame(DELIVERY_KIND, meta={**rec.to_dict(), "request_id": rid, "direction": direction,
                                                      "code": code}))
        if envelope:
            self._send(front, [*envelope, b"", *to_parts(error_frame(message, request_id=rid, code=code,
                                                                       source="channel"))])

    @staticmethod
    def _code(message: str) -> str:
        text = message.lower()
        if "exceed" in text or "oversized" in text:
            return "oversized"
        if "version mismatch" in text:
            return "version"
        return "malformed"

    def _parse(self, raw: list[zmq.Frame]) -> tuple[list[bytes], Frame | None, list, str | None]:
        envelope: list[bytes] = []
        try:
            envelope, parts = split_envelope(raw)
            return envelope, from_parts(parts, self.limits), parts, None
        except FrameError as exc:
            return envelope, None, [], str(exc)
        except Exception as exc:  # noqa: BLE001 - total: anything else is a malformed frame as well
            return envelope, None, [], f"malformed frame: {type(exc).__name__}: {clip(str(exc))}"

    def _receive(self, sock: zmq.Socket) -> tuple[list[zmq.Frame], list[bytes], Frame | None, list, str | None] | None:
        """The message waiting on ``sock`` as ``(raw, *_parse(raw))``; None when none waits."""
        try:
            raw = recv_parts(sock, NOBLOCK)
        except zmq.Again:
            return None
        return (raw, *self._parse(raw))

    def _uplink(self, front, back, pub, pending) -> None:
        got = self._receive(front)
        if got is None:
            return
        raw, envelope, frame, parts, err = got
        if frame is None:
            # An envelope without the delimiter still starts with the peer's routing id: answer that peer.
            if not envelope and raw:
                envelope = [bytes(raw[0].buffer)]
            self._error_record(pub, front, envelope, f"uplink frame refused: {err}", None, "uplink",
                               self._code(err or ""))
            return
        self.stats["uplink"] += 1
        rid = _request_id(frame)
        link = _link_of(frame)
        if rid is not None and link is not None:
            self._links[rid] = link
            self._links.move_to_end(rid)
            while len(self._links) > MAX_REMEMBERED_LINKS:
                self._links.popitem(last=False)
        out = [*envelope, b"", *parts]
        delay = self.config.uplink_delay_s
        if delay > 0 and not _bypass(frame):
            heapq.heappush(pending, (time.monotonic_ns() + int(delay * 1e9), next(self._seq), "back", out, None))
        else:
            self._send(back, out)

    def _downlink(self, front, pub, back) -> None:
        got = self._receive(back)
        if got is None:
            return
        raw, envelope, frame, parts, err = got
        if frame is None:
            self._error_record(pub, front, envelope, f"downlink frame refused: {err}", None, "downlink",
                               self._code(err or ""))
            return
        if _bypass(frame):
            self.stats["bypass"] += 1
            self._send(front, [*envelope, b"", *parts])
            return
        self.stats["downlink"] += 1
        rid = _request_id(frame)
        link = _link_of(frame) or (self._links.pop(rid, None) if rid is not None else None)
        if self.inline_fast and self._in_emulator == 0 and self._fast_link(frame, link):
            # The emulator thread is idle, so order and random draws are as if it ran there.
            self._schedule(self._emulate(envelope, frame, link, parts[0]), front, pub)
            return
        # No copy: the frame's arrays are read-only views of the received zmq messages, which they keep alive, and
        # the emulator only reads them (it builds the delivered arrays anew).
        self._in_emulator += 1
        self._jobs.put((envelope, frame, link, parts[0]))
