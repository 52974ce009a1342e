"""Raw power traces from the nodes to the run directory (``RUN_DIR/traces/``), for power-over-time plots.

A node keeps its meter's samples; the orchestrator asks for the ones it has not fetched yet with a ``traces`` frame
(``meta["since"] = {probe: next_seq}``) between requests, and the node answers with raw arrays per probe (sequence
numbers, monotonic ns on the node's clock, validity, power per rail, counter energy, side readings). The runner
writes each chunk with :func:`megbed.measurements.dataset.write_trace` and the node's clock offset, so the analysis puts
the samples on the orchestrator's timeline under the stage windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megbed.megwire import Frame
from megbed.testbed.nodes import protocol as P

TRACES = "traces"
MAX_SAMPLES_PER_ANSWER = 200_000


def register_traces(server: Any, meter: Any) -> None:
    """Serve ``traces`` frames from ``meter`` (nothing to serve without one: the answer lists no probe)."""

    def answer(frame: Frame, peer: Any) -> Frame:
        since = frame.meta.get("since", {})
        if not isinstance(since, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in since.values()):
            raise P.ProtocolError("traces: field 'since' must map probe names to integer sequence numbers")
        probes, buffers = [], {}
        if meter is not None:
            for i, (probe, sampler) in enumerate(zip(meter.probes, meter.samplers, strict=True)):
                arr = sampler.snapshot(int(since.get(probe.name, 0)))
                n = min(len(arr), MAX_SAMPLES_PER_ANSWER)
                probes.append({"name": probe.name, "rails": list(arr.rails), "extra_keys": list(arr.extra_keys),
                               "n": n, "more": len(arr) > n,
                               "reasons": {str(s): r for s, r in arr.reasons.items() if s in set(arr.seq[:n])}})
                buffers.update({f"{i}.seq": arr.seq[:n], f"{i}.t_ns": arr.t_ns[:n],
                                f"{i}.valid": arr.valid[:n], f"{i}.power_mw": arr.power_mw[:n],
                                f"{i}.energy_mj": arr.energy_mj[:n]})
                if arr.extra is not None and arr.extra.size:
                    buffers[f"{i}.extra"] = arr.extra[:n]
        return Frame(TRACES, meta={"probes": probes}, buffers=buffers)

    server.handle(TRACES, answer)


def parse_traces(frame: Frame) -> list[tuple[str, Any]]:
    """``[(probe name, megbed.measurements.sampler.TraceArrays), ...]`` from a ``traces`` answer."""
    from megbed.measurements.sampler import TraceArrays

    if frame.kind != TRACES:
        raise P.ProtocolError(f"expected a 'traces' answer, got {frame.kind!r}")
    out = []
    for i, probe in enumerate(frame.meta.get("probes", [])):
        b = frame.buffers
        rails = tuple(probe["rails"])
        n = int(probe["n"])
        extra_keys = tuple(probe.get("extra_keys", ()))
        extra = b.get(f"{i}.extra")
        arr = TraceArrays(
            rails, np.array(b[f"{i}.seq"]), np.array(b[f"{i}.t_ns"]), np.array(b[f"{i}.valid"]),
            np.array(b[f"{i}.power_mw"]).reshape(n, len(rails)), np.array(b[f"{i}.energy_mj"]).reshape(n, len(rails)),
            {int(k): v for k, v in probe.get("reasons", {}).items()}, extra_keys,
            None if extra is None else np.array(extra).reshape(n, len(extra_keys)))
        out.append((str(probe["name"]), arr))
    return out
