from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megbed.measurements import schema
from megbed.measurements.dataset import DatasetError, DatasetWriter, read_dataset, write_trace
from megbed.measurements.manifest import (
    build_manifest,
    config_hash,
    read_manifest,
    update_manifest,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]


def row(i: int, **kw):
    base = {
        "run_id": "r1", "point_id": f"p{i % 3}", "request_id": f"q{i}", "repetition": i // 3, "scheme": "meg",
        "node": "ue", "stage": "decode", "status": "ok", "t_start_ns": 1000 * i, "t_end_ns": 1000 * i + 500,
        "latency_s": 5e-7, "energy_mj_total": 12.5, "energy_net_mj_total": 2.5, "energy_method": "integrated",
        "energy_valid": True, "energy_invalid_reason": "", "energy_mj_vdd_in": 12.5, "energy_net_mj_vdd_in": 2.5,
        "probe": "jetson_ina3221", "seed": i,
    }
    base.update(kw)
    return base


def test_round_trip_plain_types_and_resume(tmp_path):
    write_manifest(tmp_path, build_manifest(run_id="r1", config={"a": 1}, packages=["numpy"]))
    with DatasetWriter(tmp_path, rows_per_part=4) as w:
        w.extend(row(i) for i in range(10))
        w.append(row(10, seed=None, stage="denoise", node="es", energy_mj_gpu=100.0, energy_method="counter"))
    parts = sorted((tmp_path / "dataset").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    t = pq.read_table(parts[-1])
    assert t.schema.metadata[b"megbed.schema_version"] == schema.SCHEMA_VERSION.encode()
    assert b"pandas" not in t.schema.metadata  # no pandas extension types or metadata in the files
    types = {f.name: f.type for f in t.schema}
    assert types["seed"] == pa.int64() and types["energy_valid"] == pa.bool_()
    assert types["request_id"] == pa.string() and types["energy_mj_gpu"] == pa.float64()
    assert types["ch_snr_db"] == pa.float64()  # absent optional columns keep their schema type, never Arrow null
    # a second writer resumes numbering after the existing parts
    with DatasetWriter(tmp_path, rows_per_part=100) as w:
        w.append(row(11))
    df = read_dataset(tmp_path)
    assert len(df) == 12 and list(df["request_id"])[:2] == ["q0", "q1"]
    assert df["seed"].isna().sum() == 1 and df["seed"].dtype == "Int64"
    assert df.loc[df["node"] == "es", "energy_mj_gpu"].item() == 100.0
    assert math.isnan(df.loc[0, "energy_mj_gpu"])
    assert df.attrs["manifest"]["run_id"] == "r1"
    assert schema.problems(df) == []


def test_bad_row_is_refused_with_the_problem_named_and_nothing_lost(tmp_path):
    w = DatasetWriter(tmp_path, rows_per_part=100)
    w.append(row(0))
    with pytest.raises(schema.SchemaError) as info:
        w.append(row(1, node="laptop", seed="seven", energy_valid="yes"))
    msg = str(info.value)
    assert "node='laptop'" in msg and "seed='seven'" in msg and "energy_valid='yes'" in msg
    bad = row(2)
    del bad["t_end_ns"]
    with pytest.raises(schema.SchemaError, match="missing required columns: t_end_ns"):
        w.append(bad)
    assert w.buffered == 1
    w.close()
    assert len(read_dataset(tmp_path)) == 1


def test_second_writer_is_refused(tmp_path):
    with DatasetWriter(tmp_path):
        with pytest.raises(DatasetError, match="another process"):
            DatasetWriter(tmp_path)


def test_reader_names_what_is_wrong(tmp_path):
    (tmp_path / "dataset").mkdir()
    with pytest.raises(DatasetError, match="no parts"):
        read_dataset(tmp_path)
    df = pd.DataFrame([row(0)]).drop(columns=["status"])
    df["energy_method"] = "guessed"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "dataset" / "part-00000.parquet")
    with pytest.raises(schema.SchemaError) as info:
        read_dataset(tmp_path)
    assert "part-00000.parquet: missing required columns: status" in str(info.value)
    assert "energy_method" in str(info.value)
    update_manifest(tmp_path, schema_version="2.0")
    with pytest.raises(DatasetError, match="schema v2.0"):
        read_dataset(tmp_path)


def test_leftover_tmp_part_is_ignored_with_a_warning(tmp_path):
    with DatasetWriter(tmp_path, rows_per_part=2) as w:
        w.extend(row(i) for i in range(4))
    (tmp_path / "dataset" / "part-00002.parquet.tmp").write_bytes(b"PAR1 truncated")
    with pytest.warns(UserWarning, match="part-00002.parquet.tmp"):
        df = read_dataset(tmp_path)
    assert len(df) == 4


CHILD = textwrap.dedent("""
    import sys, time
    from megbed.measurements.dataset import DatasetWriter
    sys.path.insert(0, {tests!r})
    from test_dataset import row
    w = DatasetWriter({run!r}, rows_per_part=5)
    i = 0
    while True:
        w.append(row(i, prompt="x" * 2000))
        i += 1
        if w.buffered == 0:
            print("flushed", i, flush=True)
""")


def test_writer_killed_mid_run_leaves_a_readable_dataset(tmp_path):
    run = tmp_path / "run"
    code = CHILD.format(tests=str(Path(__file__).parent), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    flushed = 0
    try:
        deadline = time.monotonic() + 60
        while flushed < 30 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            flushed = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the child is busy appending and writing parts
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert flushed >= 30
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a .tmp leftover is legitimate here
        df = read_dataset(run)
    assert len(df) >= flushed and len(df) % 5 == 0  # every reported part is there, whole
    assert list(df["request_id"]) == [f"q{i}" for i in range(len(df))]
    assert not (run / "dataset" / ".writer.lock").read_text()  # lock file empty; the kernel released the lock
    with DatasetWriter(run) as w:  # and a new writer can continue the run
        w.append(row(10**6))


def test_manifest_sections_merge_atomically(tmp_path):
    m = build_manifest(run_id="r9", config={"b": [1, 2], "a": 1}, firmware_profiles={"ue": "jetson_orin_nano_15w"},
                       packages=["numpy", "surely-not-installed"])
    assert m["schema_version"] == schema.SCHEMA_VERSION
    assert m["config_hash"] == config_hash({"a": 1, "b": [1, 2]}) and len(m["config_hash"]) == 64
    assert len(m["commit"]) == 40 and isinstance(m["dirty"], bool)
    assert m["packages"]["surely-not-installed"] is None and m["packages"]["numpy"]
    assert m["machine"]["local"]["cpu_count"] >= 1
    write_manifest(tmp_path, m)
    update_manifest(tmp_path, probes={"es": {"name": "nvml"}})
    update_manifest(tmp_path, probes={"ue": {"name": "jetson_ina3221"}}, campaign={"points": 3})
    got = read_manifest(tmp_path)
    assert set(got["probes"]) == {"es", "ue"} and got["campaign"] == {"points": 3}
    assert not list(tmp_path.glob("*.tmp"))
    json.loads((tmp_path / "manifest.json").read_text())


def test_trace_files_carry_node_probe_and_offset(tmp_path):
    df = pd.DataFrame({"seq": [0, 1], "t_ns": [10, 20], "valid": [True, False], "reason": ["", "boom"],
                       "power_mw_vdd_in": [1.0, float("nan")]})
    p1 = write_trace(tmp_path, "ue", "jetson_ina3221", df, clock_offset_ns=-5)
    p2 = write_trace(tmp_path, "ue", "jetson_ina3221", df)
    assert p1.name == "ue-jetson_ina3221-part-00000.parquet" and p2.name.endswith("part-00001.parquet")
    meta = pq.read_schema(p1).metadata
    assert meta[b"megbed.node"] == b"ue" and meta[b"megbed.clock_offset_ns"] == b"-5"
    back = pd.read_parquet(p1)
    assert list(back.columns[:2]) == ["node", "probe"] and back["reason"].tolist() == ["", "boom"]
    with pytest.raises(DatasetError, match="plain identifiers"):
        write_trace(tmp_path, "../x", "p", df)
