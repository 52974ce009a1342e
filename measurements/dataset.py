"""The run directory on disk: tidy Parquet rows, raw traces, and a reader that validates them.

Layout::

    RUN_DIR/manifest.json                         provenance (see :mod:`megbed.measurements.manifest`)
    RUN_DIR/dataset/part-00000.parquet            rows per megbed.measurements.schema, append-only parts
    RUN_DIR/dataset/compacted-00001/scheme=meg/node=es/part-00000.parquet   the same rows once compacted
                                                  (:mod:`megbed.measurements.compact`; ``_SUCCESS.json`` names the parts
                                                  it replaced, which readers then skip until they are removed)
    RUN_DIR/traces/<node>-<probe>-part-00000.parquet   raw power samples (wide: power_mw_<rail> columns)

Every file is written as ``<name>.tmp`` (flushed and fsynced), then renamed with ``os.replace``: a crash or a
SIGKILL leaves either the complete file or a ``.tmp`` leftover, which the reader ignores with a warning. Nothing
already renamed is ever rewritten, so nothing already measured is lost.

Parquet columns use plain Arrow types (string, int64, double, bool) chosen from the schema, with no pandas
metadata, so pandas, pyarrow, duckdb (``read_parquet('dataset/*.parquet', union_by_name=true)``) and polars read
them alike. Each part carries ``megbed.schema_version`` in its key-value metadata.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megbed.measurements import schema

PART_RE = re.compile(r"part-(\d{5,})\.parquet$")
GEN_RE = re.compile(r"compacted-(\d{5,})$")
SUCCESS = "_SUCCESS.json"
META_VERSION = b"megbed.schema_version"


class DatasetError(ValueError):
    """A run directory cannot be read or written; the message names the file and the problem."""


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}[kind]


def _value_problem(name: str, kind: str, value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value) and kind != "string"):
        return None
    if kind == "string":
        return None if isinstance(value, str) else f"{name}={value!r} should be a string"
    if kind == "bool":
        return None if isinstance(value, (bool, np.bool_)) else f"{name}={value!r} should be a bool"
    if isinstance(value, (bool, np.bool_)):
        return f"{name}={value!r} should be {'an int' if kind == 'int' else 'a float'}, not a bool"
    if kind == "int":
        if isinstance(value, (int, np.integer)):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return None
        return f"{name}={value!r} should be an int"
    if kind == "float":
        return None if isinstance(value, (int, float, np.integer, np.floating)) else f"{name}={value!r} should be a number"
    return None


def row_problems(row: Mapping[str, Any], *, strict_extra: bool = False) -> list[str]:
    """Everything wrong with one row dict against the schema (empty when it conforms)."""
    found = []
    missing = [c for c in schema.REQUIRED if c not in row]
    if missing:
        found.append(f"missing required columns: {', '.join(missing)}")
    for name, value in row.items():
        kind = schema.column_kind(name)
        if kind is None:
            if strict_extra:
                found.append(f"unknown column {name!r}")
            continue
        p = _value_problem(name, kind, value)
        if p:
            found.append(p)
    for name, allowed in (("scheme", schema.SCHEMES), ("node", schema.NODES), ("energy_method", schema.ENERGY_METHODS)):
        if name in row and row[name] is not None and row[name] not in allowed:
            found.append(f"{name}={row[name]!r} is not one of {allowed}")
    return found


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_table_atomic(table, path: Path) -> Path:
    """Write a pyarrow Table to ``path`` via ``path.tmp`` + fsync + ``os.replace`` (+ fsync of the folder)."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def next_part_index(folder: Path, prefix: str = "") -> int:
    """One past the highest ``<prefix>part-NNNNN.parquet`` in ``folder`` (0 when none): resumes after a crash.

    For the dataset folder the parts a compaction consumed count too, so that a part written after it never reuses
    a consumed part's name (readers skip consumed names while the compacted copy is live).
    """
    highest = -1
    if not prefix:
        live = live_compaction(folder)
        if live is not None:
            highest = max([highest, *(int(m.group(1)) for m in map(PART_RE.search, live.sources) if m)])
    for p in folder.glob(f"{prefix}part-*.parquet"):
        m = PART_RE.search(p.name)
        if m and p.name == f"{prefix}part-{m.group(1)}.parquet":
            highest = max(highest, int(m.group(1)))
    return highest + 1


def _column_type(name: str, values: list[Any]):
    import pyarrow as pa

    kind = schema.column_kind(name)
    if kind is not None:
        return _arrow_type(kind)
    present = [v for v in values if v is not None]
    if not present:
        return pa.string()  # never the Arrow null type: readers scanning parts together choke on it
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return pa.bool_()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return pa.int64()
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
           for v in present):
        return pa.float64()
    return pa.string()


def rows_to_table(rows: list[Mapping[str, Any]], columns: Iterable[str]):
    """A pyarrow Table with plain types from the schema; absent values are nulls (NaN for floats)."""
    import pyarrow as pa

    arrays, fields = [], []
    for name in columns:
        values = [r.get(name) for r in rows]
        typ = _column_type(name, values)
        if typ == pa.int64():
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in values]
        elif typ == pa.float64():
            values = [math.nan if v is None else float(v) for v in values]
        elif typ == pa.bool_():
            values = [None if v is None else bool(v) for v in values]
        elif typ == pa.string():
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
        arrays.append(pa.array(values, type=typ))
        fields.append(pa.field(name, typ))
    meta = {META_VERSION: schema.SCHEMA_VERSION.encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


class DatasetWriter:
    """Append-only writer of ``RUN_DIR/dataset/part-*.parquet``.

    Rows are checked against the schema when appended (a bad row raises :class:`megbed.measurements.schema.SchemaError`
    naming the problem and is not buffered; rows already buffered are kept). Buffered rows become a part every
    ``rows_per_part`` rows, on :meth:`flush` and on :meth:`close`. Each part holds every schema column plus every
    column seen so far in the run, so that parts line up for readers that scan them together.

    One writer per run directory: a lock file (``dataset/.writer.lock``, released by the kernel if the process dies)
    refuses a second writer instead of interleaving part numbers.

    Parameters
    ----------
    run_dir : path
        The run directory (created if needed).
    rows_per_part : int
        Rows per part file; smaller loses less on a crash (parts are atomic), larger makes fewer files.
    strict_extra : bool
        Refuse columns the schema does not know (rail energy columns are always known).
    """

    def __init__(self, run_dir: str | os.PathLike, *, rows_per_part: int = 500, strict_extra: bool = False) -> None:
        if rows_per_part < 1:
            raise ValueError("rows_per_part must be at least 1")
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "dataset"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_part = rows_per_part
        self.strict_extra = strict_extra
        self._lock_fh = open(self.folder / ".writer.lock", "a+")  # noqa: SIM115 - held for the writer's life
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_fh.close()
            raise DatasetError(f"another process is writing {self.folder} (lock held on .writer.lock)") from exc
        self._index = next_part_index(self.folder)
        self._buffer: list[dict[str, Any]] = []
        self._columns: list[str] = [c.name for c in schema.COLUMNS]
        self._known = set(self._columns)
        self._adopt_existing_columns()
        self.rows_written = 0
        self.parts_written: list[Path] = []
        self._closed = False

    def _adopt_existing_columns(self) -> None:
        import pyarrow.parquet as pq

        for part in data_files(self.folder):
            try:
                names = pq.read_schema(part).names
            except Exception:  # noqa: BLE001 - a damaged part is the reader's to report, not the writer's
                continue
            self._add_columns(names)

    def _add_columns(self, names: Iterable[str]) -> None:
        for n in names:
            if n not in self._known:
                self._known.add(n)
                self._columns.append(n)

    def append(self, row: Mapping[str, Any]) -> None:
        """Check one row and buffer it; writes a part when the buffer is full."""
        if self._closed:
            raise DatasetError("writer is closed")
        found = row_problems(row, strict_extra=self.strict_extra)
        if found:
            rid = row.get("request_id", "?")
            raise schema.SchemaError(f"row (request_id={rid!r}, node={row.get('node')!r}, stage={row.get('stage')!r}) "
                                     "does not match schema v" + schema.SCHEMA_VERSION + ":\n  - " + "\n  - ".join(found))
        self._buffer.append(dict(row))
        self._add_columns(row.keys())
        if len(self._buffer) >= self.rows_per_part:
            self.flush()

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def flush(self) -> Path | None:
        """Write the buffered rows as the next part (atomically); returns its path, or None when nothing was buffered."""
        if not self._buffer:
            return None
        table = rows_to_table(self._buffer, self._columns)
        path = write_table_atomic(table, self.folder / f"part-{self._index:05d}.parquet")
        self._index += 1
        self.rows_written += len(self._buffer)
        self._buffer = []
        self.parts_written.append(path)
        return path

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- traces


def write_trace(run_dir: str | os.PathLike, node: str, probe: str, frame, *, clock_offset_ns: int | None = None) -> Path:
    """Write one chunk of raw samples as ``traces/<node>-<probe>-part-NNNNN.parquet`` (atomic, append-only).

    ``frame`` is a pandas DataFrame as from ``Meter.traces()`` (``seq, t_ns, valid, reason, power_mw_<rail>...``) on
    the node's own monotonic clock; ``clock_offset_ns`` (local - remote) lets a reader map it to the orchestrator's
    timeline. The file's metadata names the node and probe.
    """
    import pyarrow as pa

    if not re.fullmatch(r"[A-Za-z0-9_]+", node) or not re.fullmatch(r"[A-Za-z0-9_+]+", probe):
        raise DatasetError(f"node {node!r} / probe {probe!r} must be plain identifiers (they name files)")
    folder = Path(run_dir) / "traces"
    folder.mkdir(parents=True, exist_ok=True)
    df = frame.copy()
    if "node" not in df.columns:
        df.insert(0, "node", node)
    if "probe" not in df.columns:
        df.insert(1, "probe", probe)
    table = pa.Table.from_pandas(df, preserve_index=False)
    # plain Arrow types only: drop pandas metadata, turn large/view strings into string
    fields = [pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) or str(f.type) == "string_view"
                       else f.type) for f in table.schema]
    meta = {META_VERSION: schema.SCHEMA_VERSION.encode(), b"megbed.node": node.encode(),
            b"megbed.probe": probe.encode()}
    if clock_offset_ns is not None:
        meta[b"megbed.clock_offset_ns"] = str(int(clock_offset_ns)).encode()
    table = table.cast(pa.schema(fields)).replace_schema_metadata(meta)
    prefix = f"{node}-{probe}-"
    return write_table_atomic(table, folder / f"{prefix}part-{next_part_index(folder, prefix):05d}.parquet")


class TraceWriter:
    """Writes a meter's raw samples incrementally: each :meth:`write` call stores only samples not yet written."""

    def __init__(self, run_dir: str | os.PathLike, node: str) -> None:
        self.run_dir, self.node = Path(run_dir), node
        self._next_seq: dict[str, int] = {}

    def write(self, meter, *, clock_offset_ns: int | None = None) -> list[Path]:
        """Write new samples of every probe of ``meter`` (a :class:`megbed.measurements.meter.Meter`)."""
        out = []
        for probe_name, sampler in zip((p.name for p in meter.probes), meter.samplers, strict=True):
            since = self._next_seq.get(probe_name, 0)
            df = sampler.snapshot(since).to_frame(probe_name)
            if len(df) == 0:
                continue
            out.append(write_trace(self.run_dir, self.node, probe_name, df, clock_offset_ns=clock_offset_ns))
            self._next_seq[probe_name] = int(df["seq"].iloc[-1]) + 1
        return out


# --------------------------------------------------------------------------------------------- reader


def _major(version: str) -> str:
    return str(version).strip().lstrip("v").split(".")[0]


# --------------------------------------------------------------------------------------------- compacted copies
# (built by megbed.measurements.compact; read here, so a reader never imports the compactor)


@dataclass(frozen=True)
class Compaction:
    """A committed compacted copy (the content of its ``_SUCCESS.json``).

    Attributes
    ----------
    name : str
        Its folder under ``RUN_DIR/dataset`` (``compacted-NNNNN``).
    files : tuple[str, ...]
        Its Parquet files, relative to that folder, in partition order.
    sources : tuple[str, ...]
        Names of the top-level parts whose rows it holds.
    rows : int
        Row count.
    content_sha256 : str
        :func:`content_hash` of its rows.
    partition_by : tuple[str, ...]
        The partition columns, outermost first.
    """

    name: str
    files: tuple[str, ...]
    sources: tuple[str, ...]
    rows: int
    content_sha256: str
    partition_by: tuple[str, ...]


def live_compaction(folder: str | os.PathLike) -> Compaction | None:
    """The newest committed compacted copy in the dataset ``folder`` (one with a readable ``_SUCCESS.json``)."""
    folder = Path(folder)
    gens = sorted((p for p in folder.glob("compacted-*") if p.is_dir() and GEN_RE.search(p.name)),
                  key=lambda p: int(GEN_RE.search(p.name).group(1)), reverse=True)
    for gen in gens:
        try:
            meta = json.loads((gen / SUCCESS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # Earlier generations are kept (unread) until step 4 removes them: the newest committed one is live.
        return Compaction(gen.name, tuple(meta["files"]), tuple(meta["sources"]), int(meta["rows"]),
                          str(meta["content_sha256"]), tuple(meta["partition_by"]))
    return None


def data_files(folder: str | os.PathLike) -> list[Path]:
    """Every Parquet file holding the rows of ``RUN_DIR/dataset``, in row order, whichever form it is in.

    The live compacted copy's files (partition order, :mod:`megbed.measurements.compact`) first, then the append-only parts
    it did not consume, by index. Parts a live compaction consumed but a crash left in place are skipped (their rows
    are in the copy); temporary trees (``.compact-*``), earlier generations and ``*.tmp`` files are never read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    live = live_compaction(folder)
    files = [folder / live.name / f for f in live.files] if live is not None else []
    consumed = set(live.sources) if live is not None else set()
    parts = [p for p in folder.glob("part-*.parquet") if PART_RE.search(p.name) and p.name not in consumed]
    return files + sorted(parts, key=lambda p: int(PART_RE.search(p.name).group(1)))


def has_rows(run_dir: str | os.PathLike) -> bool:
    """True when ``RUN_DIR/dataset`` holds parts or a compacted copy."""
    return bool(data_files(Path(run_dir) / "dataset"))


def _read_part(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any Arrow failure: a damaged part
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    meta = table.schema.metadata or {}
    version = meta.get(META_VERSION, b"").decode() or None
    return table.to_pandas(), version


def _restore_ints(df) -> None:
    """Int columns that pandas turned into float because of missing values become nullable Int64 (bool columns with
    missing values: nullable boolean)."""
    import pandas as pd

    for name in df.columns:
        if schema.column_kind(name) == "int" and pd.api.types.is_float_dtype(df[name].dtype):
            vals = df[name].to_numpy()
            finite = vals[~np.isnan(vals)]
            if np.all(finite == np.round(finite)):
                df[name] = df[name].astype("Int64")
        elif schema.column_kind(name) == "bool" and pd.api.types.is_object_dtype(df[name].dtype):
            # An optional bool column absent from some parts reads as object (True/False/None): nullable boolean.
            df[name] = df[name].astype("boolean")


def read_dataset(run_dir: str | os.PathLike, *, strict_extra: bool = False, validate: bool = True):
    """Read ``RUN_DIR/dataset`` (parts, a compacted copy, or both: :func:`data_files`) into one pandas DataFrame
    and check it against the schema.

    Leftover ``*.tmp`` files (a writer interrupted mid-part) are ignored with a warning. The manifest's and the parts'
    schema version must have the same major version as this code's.

    Returns
    -------
    pandas.DataFrame
        All rows, parts in order. ``df.attrs["manifest"]`` holds the manifest (``{}`` when absent) and
        ``df.attrs["warnings"]`` what was tolerated.

    Raises
    ------
    DatasetError
        No dataset folder or parts, an unreadable part, a schema version mismatch.
    megbed.measurements.schema.SchemaError
        Rows that do not match the schema; the message lists every problem with the part it is in.
    """
    import pandas as pd

    from megbed.measurements.manifest import read_manifest

    run = Path(run_dir)
    folder = run / "dataset"
    if not folder.is_dir():
        raise DatasetError(f"no dataset folder {folder}")
    notes: list[str] = []
    manifest = read_manifest(run)
    if not manifest:
        notes.append(f"no manifest.json in {run}: provenance unknown")
    elif "schema_version" in manifest and _major(manifest["schema_version"]) != _major(schema.SCHEMA_VERSION):
        raise DatasetError(f"{run / 'manifest.json'} says schema v{manifest['schema_version']}; this code reads "
                           f"v{schema.SCHEMA_VERSION} (major versions must match)")
    for tmp in sorted(folder.glob("*.tmp")):
        notes.append(f"ignored {tmp.name}: an unfinished part left by an interrupted writer")
    parts = data_files(folder)
    if not parts:
        raise DatasetError(f"no parts (part-NNNNN.parquet) or compacted copy in {folder}")
    frames, problems = [], []
    for part in parts:
        df, version = _read_part(part)
        if version is not None and _major(version) != _major(schema.SCHEMA_VERSION):
            raise DatasetError(f"{part} was written with schema v{version}; this code reads v{schema.SCHEMA_VERSION}")
        if validate:
            _restore_ints(df)
            problems += [f"{part.relative_to(folder)}: {p}"
                         for p in schema.problems(df, strict_extra=strict_extra)]
        frames.append(df)
    if problems:
        raise schema.SchemaError(f"{folder} does not match schema v{schema.SCHEMA_VERSION}:\n  - " + "\n  - ".join(problems))
    non_empty = [f for f in frames if len(f)]
    rows = pd.concat(non_empty, ignore_index=True) if non_empty else frames[0].iloc[0:0]
    if validate:
        _restore_ints(rows)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    rows.attrs["manifest"] = manifest
    rows.attrs["warnings"] = notes
    return rows

