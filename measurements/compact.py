"""Dataset compaction: a run's append-only parts merged into a few files partitioned by the columns users filter on.

While a campaign runs, every request's rows are an atomic ``part-NNNNN.parquet`` (crash safety needs them); a
finished run of 10^5 requests would be 10^5 files, which DuckDB, Spark and Dask list and open slowly. Compaction
rewrites them as one generation folder of hive-style partitions::

    RUN_DIR/dataset/compacted-00001/scheme=meg/node=es/part-00000.parquet
    RUN_DIR/dataset/compacted-00001/_SUCCESS.json     files, consumed parts, row count, content hash

(``node=__HIVE_DEFAULT_PARTITION__`` holds rows without a node, as Hive, Spark and DuckDB spell a null partition.)
The partition columns stay inside the files too, so a reader never depends on the paths, and engines can still
prune on them: ``duckdb.sql("select ... from read_parquet('RUN/dataset/compacted-*/**/*.parquet',
hive_partitioning=true) where scheme = 'meg'")``.

Steps, each safe to interrupt (a kill at any point loses nothing; rerunning finishes the job):

1. Under the dataset's writer lock, read every current data file (the live copy, if any, and the parts it did not
   consume) and write the merged rows into ``.compact-tmp-<pid>/`` (ignored by every reader).
2. Verify: read the temporary copy back; its row count and its content hash (an order-free digest of every row's
   values, :func:`content_hash`) must equal the inputs'. A mismatch removes the temporary copy and raises.
3. ``_SUCCESS.json`` (written atomically, last), then one ``os.rename`` of the folder to ``compacted-NNNNN``: the
   commit point. From here readers take the copy and skip the parts it names in ``sources``.
4. Remove the consumed parts and older generations. A crash here leaves them on disk but unread; the next
   compaction (or ``megbed dataset compact RUN``) removes them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

# The compacted layout is read by the dataset reader (a lower layer); this module only builds it.
from megbed.measurements.dataset import (  # noqa: F401 - Compaction, live_compaction, GEN_RE, SUCCESS re-exported
    GEN_RE,
    SUCCESS,
    Compaction,
    data_files,
    fsync_dir,
    live_compaction,
    write_table_atomic,
)

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
PARTITION_COLUMNS = ("scheme", "node", "board")  # the columns users filter on, where the dataset has them


class CompactionError(RuntimeError):
    """A compaction could not be made or verified; the parts are untouched and the message says why."""


def content_hash(table) -> str:
    """Order-free SHA-256 of a pyarrow Table's rows: each row's values (columns sorted by name) get a 64-bit digest
    (pandas' ``hash_pandas_object``), and the sorted digests are hashed with the column names and types. Equal for
    the same multiset of rows whatever the file layout or row order; NaN equals NaN."""
    import numpy as np
    import pandas as pd

    cols = sorted(table.column_names)
    df = table.select(cols).to_pandas()
    digests = np.sort(pd.util.hash_pandas_object(df, index=False).to_numpy().astype("<u8"))
    h = hashlib.sha256(json.dumps([[c, str(table.schema.field(c).type)] for c in cols]).encode())
    h.update(len(df).to_bytes(8, "little"))
    h.update(digests.tobytes())
    return h.hexdigest()


def _partition_value(v) -> str:
    if v is None:
        return NULL_PARTITION
    text = str(v)
    # keep paths plain: the schema's values (meg, ceg, es, ...) pass through unchanged
    return text if re.fullmatch(r"[A-Za-z0-9_.+-]+", text) else "x" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _read_all(folder: Path, files: Sequence[Path]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except Exception as exc:  # noqa: BLE001 - any Arrow failure: a damaged file stops the compaction
            raise CompactionError(f"cannot read {f}: {exc}; nothing was changed") from exc
    meta = next((t.schema.metadata for t in tables if t.schema.metadata), None)
    # parts written before a column first appeared lack it: promote to the union, as the readers do
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    return table.replace_schema_metadata(meta)


def _lock(folder: Path):
    fh = open(folder / ".writer.lock", "a+")  # noqa: SIM115 - released by the caller (or the kernel on death)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        raise CompactionError(f"a writer holds {folder}/.writer.lock: compact after the campaign ends") from exc
    return fh


def cleanup(folder: Path, live: Compaction | None) -> list[str]:
    """Step 4: remove the parts ``live`` consumed, older generations and temporary trees; returns what went."""
    removed = []
    if live is None:
        return removed
    for name in live.sources:
        p = folder / name
        if p.exists():
            p.unlink()
            removed.append(name)
    for p in folder.iterdir():
        stale_gen = GEN_RE.search(p.name) and p.name != live.name
        if p.is_dir() and (stale_gen or p.name.startswith(".compact-tmp-")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    fsync_dir(folder)
    return removed


def compact_dataset(run_dir: str | os.PathLike, *, partition_by: Sequence[str] = PARTITION_COLUMNS,
                    rows_per_file: int = 1_000_000,
                    _checkpoint: Callable[[str], None] | None = None) -> dict:
    """Merge ``RUN_DIR/dataset`` into one verified, partitioned generation and remove what it replaces.

    Parameters
    ----------
    run_dir : path
        The run directory.
    partition_by : sequence of str
        Partition columns, outermost first; those the dataset lacks are skipped.
    rows_per_file : int
        Most rows per file within a partition.
    _checkpoint : callable, optional
        Called with the name of each step boundary (``written``, ``verified``, ``committed``, ``cleaned``): the
        tests inject a crash there.

    Returns
    -------
    dict
        ``generation``, ``files``, ``rows``, ``inputs`` (files read), ``removed``, ``content_sha256``; ``{"rows": 0}``
        style with ``generation`` None when there was nothing to compact.

    Raises
    ------
    CompactionError
        A writer holds the lock, an input cannot be read, or the copy does not verify (parts untouched).
    """
    import pyarrow.compute as pc

    check = _checkpoint or (lambda step: None)
    folder = Path(run_dir) / "dataset"
    if not folder.is_dir():
        raise CompactionError(f"no dataset folder {folder}")
    lock = _lock(folder)
    try:
        live = live_compaction(folder)
        inputs = data_files(folder)
        pending_parts = [p.name for p in inputs if p.parent == folder]
        if live is not None and not pending_parts:  # already compacted: only finish a cleanup a crash cut short
            removed = cleanup(folder, live)
            return {"generation": live.name, "files": len(live.files), "rows": live.rows, "inputs": 0,
                    "removed": removed, "content_sha256": live.content_sha256}
        if not inputs:
            return {"generation": None, "files": 0, "rows": 0, "inputs": 0, "removed": [], "content_sha256": None}
        table = _read_all(folder, inputs)
        want_hash = content_hash(table)
        cols = [c for c in partition_by if c in table.column_names]
        gen_index = 1 + max([0, *(int(GEN_RE.search(p.name).group(1)) for p in folder.glob("compacted-*")
                                  if GEN_RE.search(p.name))])
        name = f"compacted-{gen_index:05d}"
        tmp = folder / f".compact-tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # Partition keys in first-seen order of the sorted distinct values (deterministic output).
        keys = (sorted({tuple(r[c] for c in cols) for r in table.select(cols).to_pylist()},
                       key=lambda k: tuple((v is None, str(v)) for v in k)) if cols else [()])
        files: list[str] = []
        for key in keys:
            mask = None
            for c, v in zip(cols, key, strict=True):
                m = pc.is_null(table[c]) if v is None else pc.equal(table[c], v)
                m = pc.fill_null(m, False)
                mask = m if mask is None else pc.and_(mask, m)
            sub = table.filter(mask) if mask is not None else table
            sub_dir = tmp.joinpath(*(f"{c}={_partition_value(v)}" for c, v in zip(cols, key, strict=True)))
            sub_dir.mkdir(parents=True, exist_ok=True)
            for i, start in enumerate(range(0, max(sub.num_rows, 1), rows_per_file)):
                path = write_table_atomic(sub.slice(start, rows_per_file), sub_dir / f"part-{i:05d}.parquet")
                files.append(str(path.relative_to(tmp)))
        check("written")
        back = _read_all(tmp, [tmp / f for f in files])
        got_hash = content_hash(back.select(table.column_names))
        if back.num_rows != table.num_rows or got_hash != want_hash:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CompactionError(f"compacted copy of {folder} does not verify ({back.num_rows} rows, hash "
                                  f"{got_hash[:12]}; inputs {table.num_rows} rows, {want_hash[:12]}); parts kept")
        del back
        check("verified")
        sources = sorted(set(pending_parts) | set(live.sources if live is not None else ()))
        success = {"files": files, "sources": sources, "rows": table.num_rows, "content_sha256": want_hash,
                   "partition_by": cols, "inputs": [str(p.relative_to(folder)) for p in inputs]}
        tmp_success = tmp / (SUCCESS + ".tmp")
        with open(tmp_success, "w", encoding="utf-8") as fh:
            json.dump(success, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_success, tmp / SUCCESS)
        fsync_dir(tmp)
        os.rename(tmp, folder / name)  # the commit point
        fsync_dir(folder)
        check("committed")
        removed = cleanup(folder, live_compaction(folder))
        check("cleaned")
        return {"generation": name, "files": len(files), "rows": table.num_rows, "inputs": len(inputs),
                "removed": removed, "content_sha256": want_hash}
    finally:
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()
