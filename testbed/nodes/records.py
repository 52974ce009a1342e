"""Stage records: what a node measured for each stage of one request, on its own monotonic clock.

A node wraps every stage in ``with recorder.stage("denoise"):``. The recorder opens the measurement layer's energy
window (``meter.window(stage, sync=...)``) around it; the window's edge stamps (``time.monotonic_ns()`` after the
device synchronisation) become the record's ``t_start_ns`` / ``t_end_ns`` on the node's own clock (the orchestrator
maps them onto its timeline with the clock-sync fit), and its energy columns (``megbed.measurements.schema`` names:
``energy_mj_<rail>``, ``energy_method``, ...) are added by :meth:`StageRecorder.finish`. Energy is computed after the
node's last stage, not between stages, because a sampled probe may have to wait for samples covering a window's end:
that wait must not stretch the next stage's start.

Without a meter (a node started with ``--probe none``) energy is recorded as absent, never as zero:
``energy_method = "none"``, ``energy_valid = False`` with the reason.

Every stage also records the process's peak memory during it (``mem_peak_mb`` / ``gpu_mem_peak_mb`` with their
``mem_method`` / ``gpu_mem_method``, :mod:`megbed.measurements.memory`); a node's peak over a request is the maximum over
its stage rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from megbed.measurements.memory import MemoryMeter

log = logging.getLogger(__name__)

NO_ENERGY = {
    "energy_mj_total": math.nan,
    "energy_net_mj_total": math.nan,
    "energy_method": "none",
    "energy_valid": False,
    "energy_invalid_reason": "no power probe on this node",
}


class StageRecorder:
    """Collects the stage records of one request on one node.

    Parameters
    ----------
    node : str
        ``es`` or ``ue`` (the dataset's ``node`` column).
    meter : megbed.measurements.meter.Meter, optional
        ``meter.window(stage, sync=...)`` yields a window with ``t_start_ns``, ``t_end_ns`` and ``result``.
    sync : callable, optional
        Device synchronisation (``torch.cuda.synchronize``) run before each edge stamp.
    clock : callable
        Monotonic nanosecond clock used without a meter (the meter's probes share the same clock).
    memory : megbed.measurements.memory.MemoryMeter, optional
        Peak-memory meter; default: the process's own (:func:`process_memory_meter`).
    """

    def __init__(self, node: str, meter: Any = None, *, sync: Callable[[], Any] | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, memory: MemoryMeter | None = None) -> None:
        self.node, self.meter, self.sync, self.clock = node, meter, sync, clock
        self.memory = memory if memory is not None else process_memory_meter()
        self.records: list[dict[str, Any]] = []
        self._windows: list[tuple[dict[str, Any], Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str, **extra: Any) -> Iterator[dict[str, Any]]:
        """Measure one stage; the yielded dict takes extra columns (e.g. ``payload_bytes``) inside the block."""
        rec: dict[str, Any] = {"node": self.node, "stage": name, **extra}
        # The memory window encloses the timed one, so the device is synchronised before the peak is read.
        with self.memory.window() as peak:
            with self._timed(name, rec):
                yield rec
        rec.update(peak.to_columns())

    @contextlib.contextmanager
    def _timed(self, name: str, rec: dict[str, Any]) -> Iterator[None]:
        if self.meter is None:
            if self.sync is not None:
                self.sync()
            t0 = self.clock()
            try:
                yield
            finally:
                if self.sync is not None:
                    self.sync()
                t1 = self.clock()
                rec.update(NO_ENERGY)
                self._close(rec, t0, t1)
            return
        with self.meter.window(name, sync=self.sync) as window:
            yield
        self._close(rec, int(window.t_start_ns), int(window.t_end_ns))
        self._windows.append((rec, window))

    def _close(self, rec: dict[str, Any], t0: int, t1: int) -> None:
        rec["t_start_ns"], rec["t_end_ns"] = int(t0), int(t1)
        rec["latency_s"] = (t1 - t0) / 1e9
        self.records.append(rec)

    def add(self, name: str, t_start_ns: int, t_end_ns: int, **extra: Any) -> dict[str, Any]:
        """A record for a stage timed elsewhere (no energy window around it)."""
        rec = {"node": self.node, "stage": name, **NO_ENERGY, **extra}
        rec["energy_invalid_reason"] = "stage not metered on this node"
        self._close(rec, t_start_ns, t_end_ns)
        return rec

    def finish(self) -> list[dict[str, Any]]:
        """Compute the energy of every window and return the records (JSON-ready: NaN -> None)."""
        for rec, window in self._windows:
            rec.update(_energy_columns(window))
        self._windows.clear()
        return json_safe(self.records)


_PROCESS_METER: MemoryMeter | None = None


def process_memory_meter() -> MemoryMeter:
    """The process's memory meter (host RSS; CUDA peak allocations when torch has initialised CUDA)."""
    global _PROCESS_METER
    cuda_device = None
    torch = sys.modules.get("torch")
    # is_initialized alone: CUDA cannot be initialised unless available, and is_available costs ~3 us a call (every
    # request's recorder asks).
    if torch is not None and torch.cuda.is_initialized():
        cuda_device = torch.device("cuda", torch.cuda.current_device())
    if _PROCESS_METER is None or _PROCESS_METER.cuda_device != cuda_device:
        _PROCESS_METER = MemoryMeter(cuda_device=cuda_device)
    return _PROCESS_METER


def _energy_columns(window: Any) -> dict[str, Any]:
    try:
        cols = dict(window.result.to_columns())
    except Exception as exc:  # noqa: BLE001 - a probe failure marks the energy invalid, never loses the timing
        log.warning("energy window %r failed: %s", getattr(window, "stage", "?"), exc)
        return {**NO_ENERGY, "energy_invalid_reason": f"meter failed: {exc}"}
    # Timing is the window's edge stamps, already in the record.
    for key in ("t_start_ns", "t_end_ns", "latency_s", "stage", "node"):
        cols.pop(key, None)
    for key, value in NO_ENERGY.items():
        cols.setdefault(key, value)
    return cols


def json_safe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with non-finite floats replaced by None (frame headers stay strict JSON for other readers)."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
            for rec in records]
