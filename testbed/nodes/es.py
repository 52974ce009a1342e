"""The edge server node: answers UE requests with a handoff (MEG) or an image (CEG), and the orchestrator's
reference requests.

One ROUTER serves everyone: UEs (directly, or through the channel broker, which adds a routing id) and the
orchestrator's direct control connection (heartbeat, hello, clock_sync, reference). Generation runs on the server's
worker thread, one request at a time, under the node's meter; control frames are answered meanwhile.

The answer carries the ES's stage records (``meta["es_records"]``: monotonic ns on the ES clock plus energy
columns), the request's link condition (``meta["link"]``, read by the broker), ``t_recv_ns`` / ``t_reply_ns`` (ES
clock: request arrival and answer ready) and ``payload_bytes`` (``len(megwire.pack(frame))`` of the frame as the
runtime built it, before the measurement metadata was added: what a deployment would send).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from megbed.megwire import DEFAULT_LIMITS, CurveConfig, Frame, FrameLimits
from megbed.megwire.frames import GrowingFrame  # encoded once: sized, then sent with the fields added here
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.clock import register_clock_sync
from megbed.testbed.nodes.engine import Engine
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.nodes.server import NodeServer, ServedNode
from megbed.testbed.nodes.traces import register_traces

log = logging.getLogger(__name__)

DEFAULT_ES_BIND = "tcp://127.0.0.1:5555"


class EsNode(ServedNode):
    """The ES process's logic (the CLI wraps it; tests run it in a thread).

    Parameters
    ----------
    engine : Engine
        The compute (``LdmEngine`` for a model).
    meter : megbed.measurements.meter.Meter, optional
        Started meter measuring this node's stages (None: energy recorded as absent).
    name, bind, curve, limits :
        See :class:`~megbed.testbed.nodes.server.NodeServer`.
    info : dict, optional
        Extra facts for ``hello`` (firmware profile and its verification, host).
    bounds : RequestBounds, optional
        What this node agrees to compute (image size, steps); default: the engine's safe defaults (sides up to 2x
        the model's native resolution, at most 200 steps). Checked, with the link fields, before any compute.
    """

    role = "es"

    def __init__(self, engine: Engine, *, meter: Any = None, name: str = "es", bind: str = DEFAULT_ES_BIND,
                 curve: CurveConfig | None = None, limits: FrameLimits = DEFAULT_LIMITS,
                 info: dict[str, Any] | None = None, ctx: Any = None, bounds: P.RequestBounds | None = None) -> None:
        self.engine, self.meter = engine, meter
        self.bounds = bounds or engine.default_bounds()
        self.server = NodeServer(name, bind, curve=curve, limits=limits, ctx=ctx)
        self.server.info.update({"role": self.role, "engine": engine.info, "bounds": asdict(self.bounds),
                                 **(info or {})})
        if meter is not None:
            self.server.info["meter"] = meter.settings()
        self.server.handle(P.REQUEST, self._on_request, blocking=True)
        self.server.handle(P.REFERENCE, self._on_reference, blocking=True)
        register_clock_sync(self.server)
        register_traces(self.server, meter)

    def _on_request(self, frame: Frame, peer: Any) -> GrowingFrame:
        spec = P.parse_request_meta(frame)
        if spec.scheme == "ue_local":
            raise P.ProtocolError("a ue_local request has nothing to run on the ES", request_id=spec.request_id)
        self.bounds.check(spec, self.engine.native_px)
        rec = StageRecorder("es", self.meter, sync=self.engine.sync)
        # The frame as the runtime built it is encoded once: that sizes it, and the answer is that encoding with
        # the measurement fields spliced in.
        out = GrowingFrame(self.engine.es(spec, rec))
        records = rec.finish()
        out.add({
            "request_id": spec.request_id,
            "es_records": records,
            "link": spec.link_meta(),
            "payload_bytes": out.packed_size,
            "t_recv_ns": peer.t_recv_ns,
            "t_reply_ns": time.monotonic_ns(),
        })
        return out

    def _on_reference(self, frame: Frame, peer: Any) -> Frame:
        spec = P.parse_request_meta(frame)
        n_steps = frame.meta.get("n_steps")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= 1000:
            raise P.ProtocolError(f"reference: field 'n_steps'={n_steps!r} must be an integer in [1, 1000]",
                                  request_id=spec.request_id)
        self.bounds.check(spec, self.engine.native_px, n_steps=n_steps)
        t0 = time.monotonic_ns()
        image = self.engine.reference(spec, n_steps)
        return Frame(P.REFERENCE_IMAGE, meta={"request_id": spec.request_id, "n_steps": n_steps,
                                              "latency_s": (time.monotonic_ns() - t0) / 1e9,
                                              "engine": self.engine.info},
                     buffers={"image": P.image_to_buffer(image)})

