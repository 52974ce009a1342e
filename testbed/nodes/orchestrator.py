"""The orchestrator: drives the UEs, watches every node's heartbeat, syncs clocks, collects results.

It keeps direct control connections to each node (never through the broker): one for calls (``generate`` to a UE,
``reference`` to the ES, ``hello``, ``clock_sync``) and, in a background thread, one per node for heartbeats. A node
whose heartbeats stop for ``dead_after_s`` is declared dead; a call waiting on it fails with :class:`NodeDead` within
about one heartbeat period instead of waiting out the request timeout. It subscribes to the broker's PUB socket for
delivery records (used when a result frame does not carry its own).

:meth:`Orchestrator.generate` returns an :class:`Outcome`; :mod:`megbed.testbed.nodes.rows` turns it into dataset rows.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from megbed.megwire import CurveConfig, Frame, FrameError, LinkTimeout, from_parts, make_socket, recv_raw
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.clock import ClockMap, NodeClock
from megbed.testbed.nodes.rpc import NodeError, RpcClient
from megbed.testbed.request import Request

log = logging.getLogger(__name__)


class NodeDead(RuntimeError):
    """A node stopped answering heartbeats (or never answered ``hello``)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class RequestFailed(RuntimeError):
    """A node answered a request with an error (the request is failed; the nodes are alive)."""

    def __init__(self, message: str, code: str, node: str) -> None:
        super().__init__(message)
        self.code, self.node = code, node


@dataclass
class NodeHandle:
    """One node as the orchestrator sees it."""

    name: str
    role: str
    address: str
    curve: CurveConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)
    clock: NodeClock | None = None
    last_seen: float = 0.0  # time.monotonic() of the last heartbeat answer
    last_beat: dict[str, Any] = field(default_factory=dict)
    control: RpcClient | None = None


@dataclass
class Outcome:
    """Everything the orchestrator learned about one request.

    Attributes
    ----------
    spec : Request
    result : dict
        The UE's ``result`` meta (validated records, ``image`` array, UE timestamps, ES timestamps).
    image : numpy.ndarray
        ``uint8 [H, W, 3]``.
    delivery : dict or None
        The channel's delivery record (None for UE-local or without a broker).
    t_sent_ns, t_result_ns : int
        Orchestrator clock: ``generate`` sent, ``result`` received.
    clocks : dict[str, ClockMap]
        The maps in force for this request (by role: ``es``, ``ue``).
    """

    spec: Request
    result: dict[str, Any]
    image: np.ndarray
    delivery: dict[str, Any] | None
    t_sent_ns: int
    t_result_ns: int
    clocks: dict[str, ClockMap]
    ue_name: str = "ue"
    es_name: str = "es"


class Orchestrator:
    """Control side of the testbed.

    Parameters
    ----------
    es : str
        The ES's ROUTER address (direct, not the broker's).
    ues : list of str
        UE control addresses.
    channel_pub : str, optional
        The broker's PUB address for delivery records.
    heartbeat_s, dead_after_s : float
        Heartbeat period and the silence after which a node is dead.
    curves : dict[str, CurveConfig], optional
        Client keys per node name (``es``, ``ue0``, ...) when nodes require CURVE.
    """

    def __init__(self, es: str, ues: list[str], channel_pub: str | None = None, *, heartbeat_s: float = 1.0,
                 dead_after_s: float = 10.0, curves: dict[str, CurveConfig] | None = None,
                 ctx: zmq.Context | None = None) -> None:
        if not ues:
            raise ValueError("the orchestrator needs at least one UE address")
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        curves = curves or {}
        self.es = NodeHandle("es", "es", es, curves.get("es"))
        names = ["ue"] if len(ues) == 1 else [f"ue{i}" for i in range(len(ues))]
        self.ues = [NodeHandle(n, "ue", a, curves.get(n, curves.get("ue"))) for n, a in zip(names, ues, strict=True)]
        self.channel_pub = channel_pub
        self.heartbeat_s, self.dead_after_s = float(heartbeat_s), float(dead_after_s)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._deliveries: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._pub_curve = curves.get("channel")
        self._trace_seq: dict[str, dict[str, int]] = {}

    @property
    def nodes(self) -> list[NodeHandle]:
        return [self.es, *self.ues]

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def connect(self, wait_s: float = 120.0) -> None:
        """Say hello to every node (waiting up to ``wait_s`` for nodes still loading), then start heartbeats and
        the delivery subscriber. Call :meth:`sync_clocks` next.

        Raises
        ------
        NodeDead
            A node did not answer within ``wait_s``.
        """
        for node in self.nodes:
            node.control = RpcClient(node.address, self.ctx, timeout_s=max(self.heartbeat_s, 1.0), curve=node.curve,
                                     name=f"orchestrator->{node.name}")
        deadline = time.monotonic() + wait_s
        for node in self.nodes:
            while True:
                try:
                    node.info = dict(node.control.call(Frame(P.HELLO), timeout_s=1.0).meta)
                    node.last_seen = time.monotonic()
                    break
                except LinkTimeout:
                    if time.monotonic() > deadline:
                        raise NodeDead(node.name, f"{node.name} at {node.address} did not answer hello within "
                                                  f"{wait_s:.0f} s") from None
                    node.control.reconnect()
            role = node.info.get("role")
            if role is not None and role != node.role:
                raise NodeDead(node.name, f"{node.address} is a {role!r} node, expected {node.role!r}")
            log.info("connected to %s at %s (%s)", node.name, node.address, node.info.get("engine", {}))
        for node in self.nodes:
            t = threading.Thread(target=self._heartbeats, args=(node,), name=f"hb-{node.name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.channel_pub:
            t = threading.Thread(target=self._subscribe, name="delivery-sub", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for node in self.nodes:
            if node.control is not None:
                node.control.close()
                node.control = None
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- liveness ---------------------------------------------------------------------------------------------------

    def _heartbeats(self, node: NodeHandle) -> None:
        client = RpcClient(node.address, self.ctx, timeout_s=self.heartbeat_s, curve=node.curve,
                           name=f"heartbeat->{node.name}")
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    beat = client.call(Frame(P.HEARTBEAT), timeout_s=self.heartbeat_s)
                    with self._lock:
                        node.last_seen = time.monotonic()
                        node.last_beat = dict(beat.meta)
                except (LinkTimeout, NodeError, FrameError) as exc:
                    log.debug("heartbeat to %s: %s", node.name, exc)
                    client.reconnect()
                self._stop.wait(max(0.0, self.heartbeat_s - (time.monotonic() - t0)))
        finally:
            client.close()

    def alive(self, node: NodeHandle) -> bool:
        with self._lock:
            return time.monotonic() - node.last_seen < self.dead_after_s

    def check_alive(self, *nodes: NodeHandle) -> None:
        for node in nodes:
            if not self.alive(node):
                with self._lock:
                    silent = time.monotonic() - node.last_seen
                raise NodeDead(node.name, f"{node.name} at {node.address} missed its heartbeats for {silent:.1f} s "
                                          f"(dead after {self.dead_after_s:.1f} s)")

    def wait_alive(self, nodes: list[NodeHandle], timeout_s: float) -> bool:
        """Wait until every node answers heartbeats again (after a restart); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.alive(n) for n in nodes):
                return True
            time.sleep(min(0.1, self.heartbeat_s))
        return False

    # --- deliveries from the broker ---------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        sock = make_socket(self.ctx, zmq.SUB, timeout_s=0.2, curve=self._pub_curve)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.channel_pub)
        try:
            while not self._stop.is_set():
                try:
                    raw = recv_raw(sock)
                    # PUB messages carry no routing envelope; tolerate a leading empty delimiter all the same.
                    parts = raw[1:] if raw and len(raw[0]) == 0 else raw
                    frame = from_parts(parts)
                except LinkTimeout:
                    continue
                except FrameError as exc:
                    log.warning("undecodable message on the delivery feed: %s", exc)
                    continue
                rid = frame.meta.get("request_id")
                if frame.kind == "delivery" and isinstance(rid, str):
                    with self._lock:
                        self._deliveries[rid] = dict(frame.meta)
                        while len(self._deliveries) > 10000:
                            self._deliveries.popitem(last=False)
        finally:
            sock.close(0)

    def delivery_for(self, request_id: str, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The broker's published delivery record of ``request_id`` (waiting up to ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                rec = self._deliveries.pop(request_id, None)
            if rec is not None or time.monotonic() >= deadline or not self.channel_pub:
                return rec
            time.sleep(0.005)

    # --- clocks -----------------------------------------------------------------------------------------------------

    def sync_clocks(self, bursts: int = 1, exchanges: int = 16) -> dict[str, ClockMap]:
        """Clock-sync every node (``bursts`` bursts of ``exchanges``); each new burst refits offset and drift over
        the whole run. Call between requests (it uses the control connections)."""
        for node in self.nodes:
            if node.clock is None:
                node.clock = NodeClock(node.control, node.name, timeout_s=max(self.heartbeat_s, 0.5))
            for _ in range(bursts):
                node.clock.burst(exchanges)
        return {n.name: n.clock.map for n in self.nodes}

    def maybe_resync(self, period_s: float, exchanges: int = 16) -> bool:
        """Run a burst on every node whose last one is older than ``period_s`` (drift tracking over long runs)."""
        due = [n for n in self.nodes if n.clock is not None and time.monotonic() - n.clock.t_last_burst > period_s]
        for node in due:
            node.clock.burst(exchanges)
        return bool(due)

    def clock_map(self, node: NodeHandle) -> ClockMap:
        return node.clock.map if node.clock is not None else ClockMap.unsynced()

    # --- requests ---------------------------------------------------------------------------------------------------

    def ue(self, index: int = 0) -> NodeHandle:
        return self.ues[index]

    def generate(self, spec: Request, *, ue: int = 0, timeout_s: float = 600.0) -> Outcome:
        """Have UE ``ue`` run ``spec``; returns its outcome.

        Raises
        ------
        NodeDead
            The UE (or, for MEG/CEG, the ES) stopped answering heartbeats while the request ran.
        RequestFailed
            A node refused or failed the request (nodes alive).
        LinkTimeout
            No result within ``timeout_s`` although the nodes answered heartbeats.
        """
        handle = self.ues[ue]
        involved = [handle] if spec.scheme == "ue_local" else [handle, self.es]
        self.check_alive(*involved)
        frame = P.generate_frame(spec)
        frame.meta["timeout_s"] = float(timeout_s)
        t_sent = time.monotonic_ns()
        msg_id = handle.control.send(frame)
        deadline = time.monotonic() + timeout_s + self.dead_after_s
        while True:
            try:
                reply = handle.control.wait(msg_id, timeout_s=min(self.heartbeat_s, 1.0))
                break
            except LinkTimeout:
                try:
                    self.check_alive(*involved)
                except NodeDead as exc:
                    if exc.node != handle.name:
                        self._cancel(handle, spec.request_id)
                    handle.control.reconnect()
                    raise
                if time.monotonic() > deadline:
                    handle.control.reconnect()
                    raise LinkTimeout(f"no result for {spec.request_id} within {timeout_s:.0f} s") from None
            except NodeError as exc:
                node = "es" if exc.code in (P.CODE_UPSTREAM, P.CODE_TIMEOUT) else handle.name
                raise RequestFailed(f"{spec.request_id}: {exc}", exc.code, node) from exc
        t_result = time.monotonic_ns()
        try:
            result = P.parse_result(reply)
        except P.ProtocolError as exc:
            raise RequestFailed(f"{spec.request_id}: bad result from {handle.name}: {exc}", exc.code,
                                handle.name) from exc
        delivery = result.get("delivery")
        if delivery is None and spec.scheme != "ue_local" and self.channel_pub:
            delivery = self.delivery_for(spec.request_id, wait_s=0.5)
        clocks = {"es": self.clock_map(self.es), "ue": self.clock_map(handle)}
        return Outcome(spec, result, result["image"], delivery, t_sent, t_result, clocks, handle.name, self.es.name)

    def _cancel(self, handle: NodeHandle, request_id: str) -> None:
        """Tell a UE to stop waiting for a dead ES (so its worker is free for the retry)."""
        try:
            handle.control.call(Frame(P.CANCEL, meta={"request_id": request_id}), timeout_s=self.heartbeat_s)
        except (LinkTimeout, NodeError) as exc:
            log.warning("could not cancel %s on %s: %s", request_id, handle.name, exc)

    def reference(self, spec: Request, n_steps: int, timeout_s: float = 600.0) -> np.ndarray:
        """The ES's reference image for ``spec``'s prompt and seed at ``n_steps`` (``uint8 [H, W, 3]``)."""
        frame = P.reference_frame(spec)
        frame.meta["n_steps"] = int(n_steps)
        msg_id = self.es.control.send(frame)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = self.es.control.wait(msg_id, timeout_s=min(self.heartbeat_s, 1.0))
                break
            except LinkTimeout:
                self.check_alive(self.es)
                if time.monotonic() > deadline:
                    raise
            except NodeError as exc:
                raise RequestFailed(f"reference for {spec.request_id}: {exc}", exc.code, "es") from exc
        image = reply.buffers.get("image")
        if image is None or image.dtype != np.uint8 or image.ndim != 3:
            raise RequestFailed("reference answer holds no uint8 [H, W, C] image", P.CODE_BAD_REQUEST, "es")
        return np.array(image)

    def fetch_traces(self, node: NodeHandle) -> list[tuple[str, Any]]:
        """New raw power samples of ``node`` since the last fetch: ``[(probe, TraceArrays)]`` (node clock)."""
        from megbed.testbed.nodes.traces import TRACES, parse_traces

        since = self._trace_seq.setdefault(node.name, {})
        out = []
        while True:
            reply = node.control.call(Frame(TRACES, meta={"since": dict(since)}), timeout_s=30.0)
            chunks = parse_traces(reply)
            more = any(p.get("more") for p in reply.meta.get("probes", []))
            for probe, arr in chunks:
                if len(arr):
                    since[probe] = int(arr.seq[-1]) + 1
                    out.append((probe, arr))
            if not more:
                return out

    def manifest_section(self) -> dict[str, Any]:
        """What the run manifest records about the nodes: hello info, last heartbeat, clock maps."""
        return {n.name: {"role": n.role, "address": n.address, "info": n.info, "last_heartbeat": n.last_beat,
                         "clock": None if n.clock is None else n.clock.records()} for n in self.nodes}


def client_curves(keys_dir: str | Path | None) -> dict[str, CurveConfig]:
    """Client CURVE settings of the orchestrator for a ``megbed keys generate`` folder (empty without one)."""
    if keys_dir is None:
        return {}
    from megbed.testbed.nodes.keys import client_curve

    keys_dir = Path(keys_dir)
    curves = {"es": client_curve(keys_dir, "orchestrator", "es"), "ue": client_curve(keys_dir, "orchestrator", "ue")}
    # The broker's PUB (delivery records) is CURVE-protected like its frontend: subscribe with the channel's key.
    if (keys_dir / "channel.key").is_file():
        curves["channel"] = client_curve(keys_dir, "orchestrator", "channel")
    return curves
