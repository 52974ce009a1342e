"""Raw power traces: read ``RUN_DIR/traces/*.parquet`` into one long table on the orchestrator's timeline.

Each file holds the samples of one probe on one node. Accepted layouts (the writer's choice):

* long: a time column, ``rail`` and ``power_mw`` (one row per sample x rail);
* wide: a time column and one ``power_mw_<rail>`` column per rail (the sampler's ``TraceArrays.to_frame``:
  ``probe, seq, t_ns, valid, reason, power_mw_<rail>..., energy_mj_<rail>...``; invalid samples are dropped).

Time column, first found: ``t_orch_ns`` (already on the orchestrator timeline), ``t_ns``, ``t_mono_ns``,
``timestamp_ns``. Node and probe come from ``node`` / ``probe`` columns, else the file's Parquet metadata
(``megbed.node``, ``megbed.probe``), else the file name ``<node>-<probe>.parquet``. Node-clock times are mapped
onto the orchestrator's timeline by adding the node's clock offset (``t_orch = t_node + clock_offset_ns``, the
convention of the dataset's ``clock_offset_ns`` column) given by the caller or the file's ``megbed.clock_offset_ns``.
The caller may give each node a constant offset or a series ``(t_orch_ns, offset_ns)`` (sync exchanges over the run),
which is interpolated linearly so that clock drift over a long run does not shift the samples off their stages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from megbed.analysis.clock import ClockModel

TIME_COLUMNS = ("t_orch_ns", "t_ns", "t_mono_ns", "timestamp_ns", "t_monotonic_ns")
LONG_COLUMNS = ("node", "probe", "rail", "t_ns", "power_mw")


class TraceFormatError(ValueError):
    """A trace file matches none of the accepted layouts; the message names the file."""


def _meta(path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode(errors="replace")
        if key.startswith("megbed."):
            out[key[len("megbed."):]] = v.decode(errors="replace")
    return out


def _from_name(path: Path) -> tuple[str, str]:
    parts = re.split(r"[-_.]", path.stem, maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "unknown")


Offset = int | tuple[np.ndarray, np.ndarray] | ClockModel


def map_to_orchestrator(t_node_ns: np.ndarray, offset: Offset) -> np.ndarray:
    """Node-clock times (ns) onto the orchestrator's timeline: a clock map (offset + drift), an offset series
    interpolated over the run, or a constant offset."""
    if isinstance(offset, ClockModel):
        return offset.to_orchestrator(t_node_ns)
    if isinstance(offset, tuple):
        t_ref, off = (np.asarray(a, dtype=float) for a in offset)
        order = np.argsort(t_ref)
        t_ref, off = t_ref[order], off[order]
        # the series is indexed by orchestrator time: one fixed-point step is exact to drift^2 (~1e-10)
        first = t_node_ns + np.interp(t_node_ns.astype(float), t_ref - off, off)
        return first.astype(np.int64)
    return t_node_ns + int(offset)


def read_trace_file(path: Path, offset_ns: Mapping[str, Offset] | None = None) -> pd.DataFrame:
    """One trace file as long-format rows ``node, probe, rail, t_ns, power_mw`` (orchestrator timeline)."""
    try:
        df = pd.read_parquet(path)
        meta = _meta(path)
    except Exception as exc:  # noqa: BLE001 - any Arrow failure: unreadable file
        raise TraceFormatError(f"{path}: cannot read: {exc}") from exc
    tcol = next((c for c in TIME_COLUMNS if c in df.columns), None)
    if tcol is None:
        raise TraceFormatError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)})")
    name_node, name_probe = _from_name(path)
    if "valid" in df.columns:  # failed reads are kept by the sampler as NaN rows with a reason
        df = df[df["valid"].astype(bool)]
    if "rail" in df.columns and "power_mw" in df.columns:
        long = df[[tcol, "rail", "power_mw", *[c for c in ("node", "probe") if c in df.columns]]].copy()
    else:
        wide = [c for c in df.columns if c.startswith("power_mw_")]
        if not wide:
            raise TraceFormatError(f"{path}: neither rail/power_mw columns nor power_mw_<rail> columns")
        keep = [tcol, *[c for c in ("node", "probe") if c in df.columns]]
        long = df.melt(id_vars=keep, value_vars=wide, var_name="rail", value_name="power_mw")
        long["rail"] = long["rail"].str[len("power_mw_"):]
    if "node" not in long.columns:
        long["node"] = meta.get("node", name_node)
    if "probe" not in long.columns:
        long["probe"] = meta.get("probe", name_probe)
    t = long[tcol].to_numpy(dtype=np.int64).copy()
    if tcol != "t_orch_ns":
        for node in pd.unique(long["node"]):
            sel = (long["node"] == node).to_numpy()
            # the orchestrator's clock map first, then the offset the trace writer declared, then the row series
            given = offset_ns.get(node) if offset_ns is not None else None
            off = None
            if isinstance(given, ClockModel):
                off = given
            elif "clock_offset_ns" in meta:
                off = int(float(meta["clock_offset_ns"]))
            elif given is not None:
                off = given
            if off is not None:
                t[sel] = map_to_orchestrator(t[sel], off)
    long["t_ns"] = t
    long["power_mw"] = long["power_mw"].astype(float)
    for col in ("node", "probe", "rail"):
        long[col] = long[col].astype(str)
    return long[list(LONG_COLUMNS)]


def read_traces(folder: Path, manifest: dict | None = None,
                offset_ns: Mapping[str, Offset] | None = None) -> pd.DataFrame:
    """All trace files of a run, concatenated and sorted by node, probe, rail and time.

    Parameters
    ----------
    folder : Path
        ``RUN_DIR/traces``.
    manifest : dict, optional
        Unused for now beyond future layout hints; kept so callers pass what they have.
    offset_ns : mapping of node to int or (t_orch_ns, offset_ns) arrays, optional
        Clock offset (ns) mapping each node's monotonic clock onto the orchestrator's, constant or over time.
    """
    files = sorted(folder.glob("*.parquet"))
    frames = [read_trace_file(p, offset_ns) for p in files]
    if not frames:
        return pd.DataFrame(columns=list(LONG_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["node", "probe", "rail", "t_ns"], kind="stable").reset_index(drop=True)
