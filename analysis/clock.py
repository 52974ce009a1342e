"""Clock-sync records of a run manifest: per-node clock maps (offset + drift fits) and sync exchanges over time.

The orchestrator records, per node, the map it applied (``local = remote + offset_ns + drift · (remote −
ref_remote_ns)``, with ``uncertainty_ns``, ``method``, ``samples``), under ``manifest['nodes'][name]['clock']``
(with ``role``), or under ``manifest['clock_sync'][node]``. Runs that re-synchronise record a list of exchanges or
fits (``{t_ns, offset_ns, uncertainty_ns}``, ``rtt_ns`` accepted: uncertainty = rtt / 2). Both shapes are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClockModel:
    """``t_orch = t_node + offset_ns + drift · (t_node − ref_remote_ns)`` (ns)."""

    offset_ns: float
    drift: float = 0.0
    ref_remote_ns: float = 0.0
    uncertainty_ns: float = math.nan
    method: str = ""
    samples: int = 0

    def to_orchestrator(self, t_node_ns: np.ndarray) -> np.ndarray:
        t = np.asarray(t_node_ns, dtype=np.int64)
        return t + np.round(self.offset_ns + self.drift * (t - self.ref_remote_ns)).astype(np.int64)


def _entries(value) -> list[dict]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        for key in ("exchanges", "history", "fits"):
            if isinstance(value.get(key), list):
                return [v for v in value[key] if isinstance(v, dict)]
        return [value]
    return []


def _node_records(manifest: dict) -> dict[str, list[dict]]:
    """Every clock record per node, keyed by role (``es``, ``ue``) when one node has that role, else by name.

    ``manifest['clock_sync']`` is read first; a node's ``manifest['nodes'][name]['clock']`` only when
    ``clock_sync`` has nothing for it (the campaign runner writes the same records in both places).
    """
    nodes = manifest.get("nodes") if isinstance(manifest.get("nodes"), dict) else {}
    roles = {str(name): str(info.get("role") or name) for name, info in nodes.items() if isinstance(info, dict)}
    by_name: dict[str, list[dict]] = {}
    sync = manifest.get("clock_sync")
    if isinstance(sync, dict):
        for name, value in sync.items():
            by_name.setdefault(str(name), []).extend(_entries(value))
    for name, info in nodes.items():
        if str(name) not in by_name and isinstance(info, dict) and isinstance(info.get("clock"), (dict, list)):
            by_name[str(name)] = _entries(info["clock"])
    role_count: dict[str, int] = {}
    for name in by_name:
        role = roles.get(name, name)
        role_count[role] = role_count.get(role, 0) + 1
    out: dict[str, list[dict]] = {}
    for name, entries in by_name.items():
        role = roles.get(name, name)
        key = role if role_count[role] == 1 else name
        kept = [e for e in entries if "offset_ns" in e]
        if kept:
            out[key] = kept
    return out


def manifest_clock_models(manifest: dict) -> dict[str, ClockModel]:
    """The last synchronised clock map per node (method ``unsynced`` ignored)."""
    out = {}
    for node, entries in _node_records(manifest).items():
        fits = [e for e in entries if e.get("method", "ntp_fit") != "unsynced" and "t_ns" not in e]
        if not fits:
            continue
        e = fits[-1]
        out[node] = ClockModel(float(e["offset_ns"]), float(e.get("drift", 0.0) or 0.0),
                               float(e.get("ref_remote_ns", 0) or 0), float(e.get("uncertainty_ns", math.nan)),
                               str(e.get("method", "")), int(e.get("samples", 0) or 0))
    return out


def manifest_sync_points(manifest: dict) -> pd.DataFrame:
    """Timed sync points ``node, t_ns, offset_ns, uncertainty_ns`` from the manifest (empty when none has a time)."""
    recs = []
    for node, entries in _node_records(manifest).items():
        for e in entries:
            t = e.get("t_ns", e.get("t_orch_ns"))
            if t is None:
                continue
            unc = e.get("uncertainty_ns")
            if unc is None and "rtt_ns" in e:
                unc = float(e["rtt_ns"]) / 2
            recs.append({"node": node, "t_ns": float(t), "offset_ns": float(e["offset_ns"]),
                         "uncertainty_ns": math.nan if unc is None else float(unc)})
    return pd.DataFrame(recs, columns=["node", "t_ns", "offset_ns", "uncertainty_ns"])
