"""Load a run directory into one validated :class:`RunData`: rows, manifest, raw traces, training logs, images.

A run directory holds (see ``megbed.measurements.schema`` for the row contract)::

    RUN_DIR/manifest.json            provenance: schema version, commit, config, machine, probes, clock sync
    RUN_DIR/dataset/part-*.parquet   tidy rows, one per request x node x stage (+ one end_to_end row per request)
    RUN_DIR/traces/*.parquet         raw power samples per probe/rail (optional)
    RUN_DIR/**/train_log.{csv,parquet}  policy training logs (optional)
    RUN_DIR/images/                  generated images (optional)

Only the rows are mandatory. Every optional part that is absent is recorded in :attr:`RunData.missing` with the
reason, so the report can say what it could not show instead of failing. A dataset written under another schema
major version is refused with :class:`SchemaVersionError`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings as _warnings_mod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from megbed.analysis.clock import manifest_clock_models
from megbed.analysis.traces import TraceFormatError, read_traces
from megbed.analysis.training import read_training_logs
from megbed.measurements import schema

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class RunDataError(ValueError):
    """A run directory cannot be analysed; the message names the file and the problem."""


class SchemaVersionError(RunDataError):
    """The dataset was written under a schema version this analysis cannot read."""


@dataclass
class RunData:
    """Everything the figures and tables read, loaded once.

    Attributes
    ----------
    run_dir : Path
        The run directory.
    rows : pandas.DataFrame
        All dataset rows (schema-validated), failed ones included.
    manifest : dict
        ``manifest.json`` (empty when absent).
    traces : pandas.DataFrame or None
        Raw power samples, long format: ``node, probe, rail, t_ns`` (orchestrator timeline, ns), ``power_mw``.
    training_logs : dict of str to pandas.DataFrame
        Policy training logs by algorithm name (``cvpo``, ``ppo_lag``, ...), one row per iteration.
    images : list of Path
        Generated images found under ``RUN_DIR/images``.
    missing : dict of str to str
        Optional part -> why it is not available.
    warnings : list of str
        Analysis-level findings that do not stop the report (duplicate rows, inconsistent Parquet parts, ...).
    """

    run_dir: Path
    rows: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    traces: pd.DataFrame | None = None
    training_logs: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok_rows(self) -> pd.DataFrame:
        """Rows of successful requests only (a request with any failed row is dropped whole)."""
        failed = set(self.rows.loc[self.rows["status"] != "ok", "request_id"])
        return self.rows[~self.rows["request_id"].isin(failed)]

    @property
    def requests(self) -> pd.DataFrame:
        """One row per successful request: its ``end_to_end`` row (latency, summed energy, quality, config)."""
        ok = self.ok_rows
        return ok[(ok["stage"] == "end_to_end")].reset_index(drop=True)

    @property
    def stages(self) -> pd.DataFrame:
        """Per-stage rows of successful requests (``end_to_end`` excluded)."""
        ok = self.ok_rows
        return ok[ok["stage"] != "end_to_end"].reset_index(drop=True)

    @property
    def schemes(self) -> list[str]:
        """Schemes present, in the schema's order."""
        present = set(self.rows["scheme"].astype(str))
        return [s for s in schema.SCHEMES if s in present]

    @property
    def n_failed(self) -> int:
        return int(self.rows.loc[self.rows["stage"] == "end_to_end", "status"].ne("ok").sum())


# --------------------------------------------------------------------------------------------------- manifest


def read_manifest(run_dir: Path) -> dict:
    """``manifest.json`` as a dict, or ``{}`` when absent; malformed JSON is a :class:`RunDataError`."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RunDataError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _major(version: str) -> str:
    return str(version).strip().lstrip("v").split(".")[0]


def check_schema_version(found: str | None, where: str) -> None:
    """Refuse a dataset whose schema major version differs from the one this code reads.

    Minor versions only add optional columns, so they stay readable.
    """
    if found is None:
        return
    if _major(found) != _major(schema.SCHEMA_VERSION):
        raise SchemaVersionError(
            f"{where} was written with dataset schema v{found}, but this megbed reads schema "
            f"v{schema.SCHEMA_VERSION} (major versions must match). Re-run the campaign with this version, "
            f"or analyse it with the megbed release that wrote it."
        )


def manifest_schema_version(manifest: dict) -> str | None:
    for key in ("schema_version", "dataset_schema_version"):
        if key in manifest:
            return str(manifest[key])
    ds = manifest.get("dataset")
    if isinstance(ds, dict) and "schema_version" in ds:
        return str(ds["schema_version"])
    return None


# --------------------------------------------------------------------------------------------------- rows


def dataset_parts(run_dir: Path) -> list[Path]:
    """The run's data files: append-only parts, a compacted copy, or both (:func:`megbed.measurements.dataset.data_files`)."""
    from megbed.measurements.dataset import data_files

    folder = run_dir / "dataset"
    parts = data_files(folder)
    if not parts:
        raise RunDataError(f"no dataset in {run_dir}: expected {folder}/part-*.parquet or a compacted copy")
    return parts


def check_parts_consistent(parts: list[Path]) -> tuple[list[str], dict[str, str]]:
    """Compare the Arrow schemas of all parts, as duckdb / polars do when they scan ``part-*.parquet`` together.

    Returns
    -------
    problems : list of str
        Columns stored with different types in different parts, or as Arrow ``null`` (no type at all).
    versions : dict of str to str
        Part file name -> the ``megbed.schema_version`` of its Parquet metadata (parts without one left out).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict[str, dict[str, list[str]]] = {}
    versions: dict[str, str] = {}
    for part in parts:
        try:
            arrow_schema = pq.read_schema(part)
        except Exception as exc:  # noqa: BLE001 - any Arrow failure means an unreadable part
            raise RunDataError(f"cannot read the Parquet schema of {part}: {exc}") from exc
        meta = arrow_schema.metadata or {}
        for key in (b"megbed.schema_version", b"schema_version"):
            if key in meta:
                versions[part.name] = meta[key].decode()
        for f in arrow_schema:
            t = f.type
            # string and large_string are one logical type to every reader
            name = "string" if t in (pa.string(), pa.large_string()) or str(t) == "string_view" else str(t)
            types.setdefault(f.name, {}).setdefault(name, []).append(part.name)
    problems = []
    for col, seen in types.items():
        if "null" in seen:
            problems.append(f"column {col!r} has no type (all null) in {', '.join(seen['null'])}")
        real = {k: v for k, v in seen.items() if k != "null"}
        if len(real) > 1:
            desc = "; ".join(f"{t} in {', '.join(v[:3])}{'...' if len(v) > 3 else ''}" for t, v in real.items())
            problems.append(f"column {col!r} has different types across parts: {desc}")
    if len(set(versions.values())) > 1:
        problems.append(f"parts carry different schema versions: {sorted(set(versions.values()))}")
    return problems, versions


def _read_rows(run_dir: Path, parts: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """All rows through the measurement layer's validating reader; returns the rows and what it tolerated."""
    from megbed.measurements.dataset import DatasetError, read_dataset

    with _warnings_mod.catch_warnings():
        _warnings_mod.simplefilter("ignore")  # the reader's notes come back in rows.attrs["warnings"]
        try:
            rows = read_dataset(run_dir)
        except schema.SchemaError as exc:
            raise RunDataError(f"{run_dir / 'dataset'}: {exc}") from exc
        except DatasetError as exc:
            raise RunDataError(str(exc)) from exc
    notes = list(rows.attrs.get("warnings", []))
    return _plain_dtypes(rows), [n for n in notes if "no manifest.json" not in n]


def _plain_dtypes(rows: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns (the reader's ``Int64`` for ints with gaps) as float64 with NaN, so numpy code reads
    them; complete ones as int64."""
    rows = rows.copy()
    rows.attrs = {}
    for col in rows.columns:
        if isinstance(rows[col].dtype, pd.Int64Dtype):
            rows[col] = rows[col].astype("float64") if rows[col].isna().any() else rows[col].astype("int64")
    return rows


def analysis_checks(rows: pd.DataFrame) -> list[str]:
    """Findings beyond the column contract that change how results should be read."""
    out: list[str] = []
    e2e = rows[rows["stage"] == "end_to_end"]
    per_req = e2e.groupby("request_id").size()
    dup = per_req[per_req > 1]
    if len(dup):
        out.append(f"{len(dup)} requests have several end_to_end rows (e.g. {dup.index[0]!r}); their first is used")
    no_e2e = sorted(set(rows["request_id"]) - set(e2e["request_id"]))
    if no_e2e:
        out.append(f"{len(no_e2e)} requests have no end_to_end row (e.g. {no_e2e[0]!r}); they are left out of "
                   "request-level figures and tables")
    ok = rows[rows["status"] == "ok"]
    lat = ok["latency_s"].to_numpy(dtype=float)
    bad_lat = ~np.isfinite(lat) | (lat < 0)
    if bad_lat.any():
        out.append(f"{int(bad_lat.sum())} successful rows have a negative or non-finite latency_s")
    backwards = (ok["t_end_ns"].to_numpy() < ok["t_start_ns"].to_numpy()).sum()
    if backwards:
        out.append(f"{int(backwards)} rows end before they start (t_end_ns < t_start_ns): check clock sync")
    stage_dup = ok[ok["stage"] != "end_to_end"].duplicated(["request_id", "node", "stage"]).sum()
    if stage_dup:
        out.append(f"{int(stage_dup)} (request, node, stage) rows are repeated; stage sums add them up")
    valid = ok["energy_valid"].astype(bool)
    measured = ok[valid & ok["energy_method"].isin(["counter", "integrated"])]
    neg = (measured["energy_mj_total"].to_numpy(dtype=float) < 0).sum()
    if neg:
        out.append(f"{int(neg)} rows marked valid have negative gross energy")
    return out


def node_clock_offsets(rows: pd.DataFrame, manifest: dict | None = None) -> dict:
    """Per node, how to map its raw trace times onto the orchestrator's timeline.

    The clock map the orchestrator recorded in the manifest (offset + drift) when there is one; else the offsets
    applied to the node's rows over the run, ``(t_start_ns, clock_offset_ns)``, interpolated (drift is followed).
    """
    out: dict = {}
    if "clock_offset_ns" in rows.columns:
        for node, g in rows[rows["clock_offset_ns"].notna()].groupby("node"):
            out[str(node)] = (g["t_start_ns"].to_numpy(dtype=float), g["clock_offset_ns"].to_numpy(dtype=float))
    out.update(manifest_clock_models(manifest or {}))
    return out


def _images(run_dir: Path) -> list[Path]:
    folder = run_dir / "images"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_run(run_dir: str | Path, *, with_traces: bool = True) -> RunData:
    """Read and validate a run directory.

    Parameters
    ----------
    run_dir : path
        The run directory (see the module docstring).
    with_traces : bool
        Also read ``RUN_DIR/traces`` (can be large).

    Raises
    ------
    RunDataError
        No dataset, unreadable parts, malformed manifest, or rows that break the column contract.
    SchemaVersionError
        The dataset was written under another schema major version.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDataError(f"{run} is not a directory")
    manifest = read_manifest(run)
    missing: dict[str, str] = {}
    warnings: list[str] = []
    if not manifest:
        missing["manifest"] = f"no {run / 'manifest.json'}: provenance and schema version unknown"
    check_schema_version(manifest_schema_version(manifest), str(run / "manifest.json"))
    parts = dataset_parts(run)
    part_problems, part_versions = check_parts_consistent(parts)
    for name, version in part_versions.items():
        check_schema_version(version, f"{run / 'dataset' / name} (Parquet metadata)")
    warnings.extend(f"dataset parts: {p} (duckdb/polars need union_by_name / a cast)" for p in part_problems)
    if manifest_schema_version(manifest) is None and not part_versions:
        warnings.append(f"no schema version recorded; assumed v{schema.SCHEMA_VERSION}")

    rows, reader_notes = _read_rows(run, parts)
    warnings.extend(reader_notes)
    if rows.empty:
        raise RunDataError(f"the dataset in {run / 'dataset'} has no rows")
    for col in ("scheme", "node", "stage", "status", "request_id", "point_id"):
        rows[col] = rows[col].astype(str)
    warnings.extend(analysis_checks(rows))
    n_e2e = int((rows["stage"] == "end_to_end").sum())
    if n_e2e == 0:
        raise RunDataError(f"{run / 'dataset'} has no end_to_end rows: nothing to compare between requests")

    traces = None
    if not with_traces:
        missing["traces"] = "raw traces not loaded (with_traces=False)"
    elif not (run / "traces").is_dir() or not any((run / "traces").glob("*.parquet")):
        missing["traces"] = f"no raw power traces kept ({run / 'traces'}/*.parquet absent)"
    else:
        try:
            traces = read_traces(run / "traces", manifest, offset_ns=node_clock_offsets(rows, manifest))
        except TraceFormatError as exc:
            missing["traces"] = f"raw traces unreadable: {exc}"
        if traces is not None and traces.empty:
            traces = None
            missing["traces"] = f"raw traces in {run / 'traces'} hold no samples"

    logs, log_problems = read_training_logs(run)
    warnings.extend(log_problems)
    if not logs:
        missing["training_logs"] = "no policy training log (train_log.csv / train_log.parquet) under the run"
    images = _images(run)
    if not images:
        missing["images"] = f"no generated images in {run / 'images'}"
    return RunData(run_dir=run, rows=rows, manifest=manifest, traces=traces, training_logs=logs, images=images,
                   missing=missing, warnings=warnings)


def finite(values) -> np.ndarray:
    """Float array of the finite entries of ``values``."""
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)
