"""The user-equipment node: told by the orchestrator to generate, it requests from the ES and finishes the image.

Two sockets: a control ROUTER (the orchestrator's ``generate``, heartbeats, clock sync) and a data DEALER to the ES's
address -- the ES itself or the channel broker in front of it; the UE cannot tell. For a ``generate`` the worker
thread

1. stamps ``t_begin_ns``; for MEG / CEG sends a ``request`` frame (``t_send_ns``) and waits for the ES's answer
   (``t_recv_ns``), which carries the ES's stage records and, through the broker, the delivery record;
2. runs its own stages (deserialize, unmerge, [denoise], decode, or image_decode; everything for UE-local) under its
   meter;
3. answers the orchestrator with a ``result`` frame: the image (``uint8 [H, W, 3]``), the ES and UE stage records, the
   delivery record and its timestamps (UE clock), ``t_done_ns`` last.

A dead or silent ES surfaces as a ``timeout`` error after the request's timeout (or sooner, when nothing listens at
the ES address: a dead broker or ES is named as unreachable); an ES error as ``upstream``; the UE keeps serving
either way. A UE that is stopped (its orchestrator died: SIGTERM by the parent-death signal) or whose orchestrator
stopped sending heartbeats for ``lease_s`` gives up the request it waits on at once instead of waiting it out.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict
from typing import Any

import zmq

from megbed.megwire import DEFAULT_LIMITS, CurveConfig, Frame, FrameLimits, LinkTimeout
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.clock import register_clock_sync
from megbed.testbed.nodes.engine import Engine
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.nodes.rpc import NodeError, RpcClient
from megbed.testbed.nodes.server import NodeServer, ServedNode
from megbed.testbed.nodes.traces import register_traces
from megbed.testbed.request import Request

log = logging.getLogger(__name__)

DEFAULT_UE_BIND = "tcp://127.0.0.1:5557"
DEFAULT_UE_ES = "tcp://127.0.0.1:5556"  # the broker's frontend in a local run
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_LEASE_S = 10.0
UNREACHABLE_PROBE_S = 2.0  # how often a waiting request checks that something still listens at the ES address


def tcp_listening(address: str, timeout_s: float = 0.3) -> bool | None:
    """Whether something accepts TCP connections at a ZeroMQ ``tcp://host:port`` address (None: not TCP)."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if host in ("*", "0.0.0.0", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class UeNode(ServedNode):
    """The UE process's logic.

    Parameters
    ----------
    engine : Engine
        The compute.
    es_address : str
        Where requests go (the broker's frontend, or the ES's ROUTER directly).
    meter : megbed.measurements.meter.Meter, optional
        Started meter for this node's stages.
    name, bind, curve, limits :
        Control server settings (see :class:`~megbed.testbed.nodes.server.NodeServer`).
    es_curve : CurveConfig, optional
        Client keys for the data connection when the ES (or broker) requires CURVE.
    request_timeout_s : float
        Default wait for the ES's answer (a ``generate`` may carry its own ``timeout_s``).
    bounds : RequestBounds, optional
        What this node agrees to compute (default: the engine's safe defaults).
    lease_s : float
        A request that began while an orchestrator was heartbeating (one within ``lease_s``) is given up when no
        heartbeat arrives for this long while it waits on the ES (the orchestrator died; 0 disables).
    """

    role = "ue"

    def __init__(self, engine: Engine, *, es_address: str = DEFAULT_UE_ES, meter: Any = None, name: str = "ue",
                 bind: str = DEFAULT_UE_BIND, curve: CurveConfig | None = None, es_curve: CurveConfig | None = None,
                 limits: FrameLimits = DEFAULT_LIMITS, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 info: dict[str, Any] | None = None, ctx: zmq.Context | None = None,
                 bounds: P.RequestBounds | None = None, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.engine, self.meter = engine, meter
        self.es_address, self.es_curve, self.limits = es_address, es_curve, limits
        self.request_timeout_s = float(request_timeout_s)
        self.bounds = bounds or engine.default_bounds()
        self.lease_s = float(lease_s)
        self.server = NodeServer(name, bind, curve=curve, limits=limits, ctx=ctx)
        self.server.info.update({"role": self.role, "engine": engine.info, "es_address": es_address,
                                 "bounds": asdict(self.bounds), **(info or {})})
        if meter is not None:
            self.server.info["meter"] = meter.settings()
        self.server.handle(P.GENERATE, self._on_generate, blocking=True)
        self.server.handle(P.CANCEL, self._on_cancel)
        self._cancelled: set[str] = set()
        register_clock_sync(self.server)
        register_traces(self.server, meter)
        self._data: RpcClient | None = None
        self.server.worker_cleanup.append(self._close_data)

    def _data_link(self) -> RpcClient:
        # Created on the worker thread, its only user (ZeroMQ sockets stay in one thread).
        if self._data is None:
            self._data = RpcClient(self.es_address, self.server.ctx, timeout_s=self.request_timeout_s,
                                   curve=self.es_curve, limits=self.limits, name=f"{self.server.name}->es")
        return self._data

    def _on_cancel(self, frame: Frame, peer: Any) -> Frame:
        rid = frame.meta.get("request_id")
        if not isinstance(rid, str):
            raise P.ProtocolError("cancel: missing field 'request_id'")
        self._cancelled.add(rid)  # set.add is atomic under the GIL; the worker polls it
        return Frame(P.CANCEL, meta={"request_id": rid, "busy_with": self.server.busy_with})

    def _on_generate(self, frame: Frame, peer: Any) -> Frame:
        t_begin = time.monotonic_ns()
        spec = P.parse_request_meta(frame)
        timeout_s = frame.meta.get("timeout_s", self.request_timeout_s)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 86400:
            raise P.ProtocolError(f"generate: field 'timeout_s'={timeout_s!r} must be in (0, 86400]",
                                  request_id=spec.request_id)
        self.bounds.check(spec, self.engine.native_px)
        rec = StageRecorder("ue", self.meter, sync=self.engine.sync)
        meta: dict[str, Any] = {"request_id": spec.request_id, "scheme": spec.scheme, "t_begin_ns": t_begin,
                                "es_records": [], "delivery": None}
        # CEG sends the image: no decoder of the UE's runs.
        meta["decoder"] = None if spec.scheme == "ceg" else self.engine.select_decoder(spec.decoder, spec.request_id)
        self.engine.set_vae_tiling(spec.vae_tiling)
        if spec.scheme == "ue_local":
            image = self.engine.ue_local(spec, rec)
        else:
            reply = self._ask_es(spec, float(timeout_s), meta)
            image = self.engine.ue_receive(reply, rec)
        meta["t_done_ns"] = time.monotonic_ns()
        meta["ue_records"] = rec.finish()
        return Frame(P.RESULT, meta=meta, buffers={"image": P.image_to_buffer(image)})

    def _ask_es(self, spec: Request, timeout_s: float, meta: dict[str, Any]) -> Frame:
        link = self._data_link()
        rid = spec.request_id
        t_send = time.monotonic_ns()
        deadline = time.monotonic() + timeout_s
        next_probe = time.monotonic() + UNREACHABLE_PROBE_S
        unreachable = 0
        # The lease binds only when an orchestrator was heartbeating as the request began (a one-shot client that
        # never sends heartbeats, or sent some long ago, is waited for the whole timeout).
        last = self.server.last_heartbeat_s
        leased = self.lease_s > 0 and last is not None and time.monotonic() - last < self.lease_s
        try:
            msg_id = link.send(P.request_frame(spec, t_send))
            while True:
                # Wait in slices so a cancel from the orchestrator (dead ES), a stop or a lapsed lease frees the
                # worker at once.
                try:
                    reply = link.wait(msg_id, min(0.25, max(0.001, deadline - time.monotonic())))
                    break
                except LinkTimeout:
                    self._give_up_if_abandoned(rid, link, leased)
                    if time.monotonic() >= next_probe:
                        next_probe = time.monotonic() + UNREACHABLE_PROBE_S
                        unreachable = unreachable + 1 if tcp_listening(self.es_address) is False else 0
                        if unreachable >= 2:
                            link.reconnect()
                            raise P.ProtocolError(
                                f"the ES address {self.es_address} (the channel broker's frontend, or the ES) is "
                                "unreachable: nothing accepts connections there", request_id=rid,
                                code=P.CODE_TIMEOUT) from None
                    if time.monotonic() >= deadline:
                        raise
        except LinkTimeout as exc:
            # A fresh socket drops the request still queued for a dead ES.
            link.reconnect()
            raise P.ProtocolError(f"no answer through {self.es_address} within {timeout_s:.1f} s (the address "
                                  "accepts connections; the ES behind it is silent)",
                                  request_id=rid, code=P.CODE_TIMEOUT) from exc
        except NodeError as exc:
            raise P.ProtocolError(f"the ES refused the request: {exc} ({exc.code})", request_id=spec.request_id,
                                  code=P.CODE_UPSTREAM) from exc
        t_recv = time.monotonic_ns()
        if reply.meta.get("request_id") != spec.request_id:
            raise P.ProtocolError(f"the ES answered {reply.meta.get('request_id')!r} to {spec.request_id!r}",
                                  request_id=spec.request_id, code=P.CODE_UPSTREAM)
        es_records = reply.meta.pop("es_records", [])
        meta.update({
            "t_send_ns": t_send, "t_recv_ns": t_recv,
            "es_records": P.check_records(es_records, "es_records", spec.request_id),
            "es_t_recv_ns": reply.meta.get("t_recv_ns"), "es_t_reply_ns": reply.meta.get("t_reply_ns"),
            "payload_bytes": reply.meta.get("payload_bytes"), "delivery": reply.meta.get("delivery"),
            "answer_kind": reply.kind,
        })
        return reply

    def _give_up_if_abandoned(self, rid: str, link: RpcClient, leased: bool) -> None:
        if rid in self._cancelled:
            self._cancelled.discard(rid)
            link.reconnect()
            raise P.ProtocolError(f"{rid} cancelled by the orchestrator while waiting for the ES",
                                  request_id=rid, code=P.CODE_CANCELLED)
        if self.server.stopping:
            link.reconnect()
            raise P.ProtocolError(f"{rid} abandoned: the UE is stopping", request_id=rid, code=P.CODE_CANCELLED)
        last = self.server.last_heartbeat_s
        if leased and last is not None and time.monotonic() - last > self.lease_s:
            link.reconnect()
            raise P.ProtocolError(f"{rid} abandoned: no heartbeat from the orchestrator for {self.lease_s:.0f} s",
                                  request_id=rid, code=P.CODE_CANCELLED)


    def _close_data(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None
