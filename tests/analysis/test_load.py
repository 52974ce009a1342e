"""Loaders: schema and schema-version checks, Parquet part consistency, traces, training logs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from megbed.analysis.clock import ClockModel, manifest_clock_models
from megbed.analysis.load import RunDataError, SchemaVersionError, check_parts_consistent, load_run
from megbed.analysis.traces import map_to_orchestrator, read_trace_file
from megbed.analysis.training import read_training_logs
from megbed.measurements import schema


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("report", "models"))
    return dst


def test_full_run_loads(full_run):
    data = load_run(full_run)
    assert data.warnings == []
    assert set(data.schemes) == {"meg", "ceg", "ue_local"}
    assert len(data.requests) == data.rows["request_id"].nunique()
    assert (data.requests["stage"] == "end_to_end").all()
    assert set(data.training_logs) == {"cvpo", "ppo_lag"}
    assert data.traces is not None and set(data.traces["node"]) == {"es", "ue"}
    assert "traces" not in data.missing and "training_logs" not in data.missing


def test_bare_run_names_what_is_missing(bare_run):
    data = load_run(bare_run)
    assert data.traces is None and data.training_logs == {}
    assert "raw power traces" in data.missing["traces"]
    assert "training log" in data.missing["training_logs"]
    assert "images" in data.missing


def test_parts_open_as_one_arrow_dataset(full_run):
    # what duckdb's read_parquet('part-*.parquet') and polars.scan_parquet do: one schema over all parts
    parts = sorted((full_run / "dataset").glob("part-*.parquet"))
    assert len(parts) == 2
    table = ds.dataset([str(p) for p in parts], format="parquet").to_table()
    assert table.num_rows == len(load_run(full_run).rows)
    problems, version = check_parts_consistent(parts)
    assert problems == [] and set(version.values()) == {schema.SCHEMA_VERSION}


def test_wrong_schema_version_in_manifest_is_a_clear_error(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["schema_version"] = "2.0"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match=r"schema v2\.0.*reads schema v1\.0"):
        load_run(run)


def test_minor_schema_version_is_accepted(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["schema_version"] = "1.7"
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert len(load_run(run, with_traces=False).requests) > 0


def test_wrong_schema_version_in_parquet_metadata(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    (run / "manifest.json").unlink()
    part = sorted((run / "dataset").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"megbed.schema_version": b"0.9"})
    pq.write_table(table, part)
    with pytest.raises(SchemaVersionError, match="Parquet metadata"):
        load_run(run)


def test_missing_required_column_lists_it(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    for part in (run / "dataset").glob("part-*.parquet"):
        pd.read_parquet(part).drop(columns=["latency_s"]).to_parquet(part, index=False)
    with pytest.raises(RunDataError, match="missing required columns: latency_s"):
        load_run(run)


def test_no_dataset_and_bad_manifest(tmp_path):
    with pytest.raises(RunDataError, match="not a directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDataError, match=r"part-\*\.parquet"):
        load_run(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(RunDataError, match="not valid JSON"):
        load_run(tmp_path / "empty")


def test_inconsistent_part_types_are_reported(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    part = sorted((run / "dataset").glob("part-*.parquet"))[1]
    df = pd.read_parquet(part)
    df["repetition"] = df["repetition"].astype("float64")  # int64 in the other part
    table = pa.Table.from_pandas(df, preserve_index=False)
    idx = table.schema.get_field_index("error")
    table = table.set_column(idx, pa.field("error", pa.null()), pa.nulls(len(df)))  # no Arrow type at all
    pq.write_table(table, part)
    data = load_run(run, with_traces=False)
    text = "\n".join(data.warnings)
    assert "'repetition' has different types across parts: int64 in part-00000.parquet; double in" in text
    assert data.rows["repetition"].dtype == "int64"  # the reader restores ints
    assert "'error' has no type" in text


def test_analysis_checks_flag_broken_rows(full_run, tmp_path):
    run = _copy(full_run, tmp_path)
    part = sorted((run / "dataset").glob("part-*.parquet"))[0]
    df = pd.read_parquet(part)
    i = df.index[df["stage"] == "denoise"][0]
    df.loc[i, "t_end_ns"] = df.loc[i, "t_start_ns"] - 5
    df = pd.concat([df, df[df["stage"] == "end_to_end"].head(1)], ignore_index=True)
    df.to_parquet(part, index=False)
    text = "\n".join(load_run(run, with_traces=False).warnings)
    assert "end before they start" in text
    assert "several end_to_end rows" in text


def test_wide_trace_with_invalid_samples_and_clock_map(tmp_path):
    # the sampler's TraceArrays.to_frame layout
    t = np.arange(5, dtype=np.int64) * 10_000_000
    df = pd.DataFrame({"probe": "jetson", "seq": np.arange(5), "t_ns": t, "valid": [True, True, False, True, True],
                       "reason": ["", "", "i2c timeout", "", ""], "power_mw_vdd_in": [1.0, 2, np.nan, 4, 5],
                       "power_mw_vdd_soc": [0.5, 0.5, np.nan, 0.5, 0.5]})
    path = tmp_path / "ue-jetson.parquet"
    df.to_parquet(path, index=False)
    clock = ClockModel(offset_ns=1_000_000.0, drift=1e-5, ref_remote_ns=0.0)
    out = read_trace_file(path, {"ue": clock})
    assert set(out["rail"]) == {"vdd_in", "vdd_soc"} and (out["node"] == "ue").all()
    assert len(out) == 8  # the failed read is dropped on both rails
    got = out[out["rail"] == "vdd_in"]["t_ns"].to_numpy()
    kept = t[[0, 1, 3, 4]]
    np.testing.assert_array_equal(got, kept + np.round(1e6 + 1e-5 * kept).astype(np.int64))


def test_offset_series_follows_drift():
    t_orch = np.array([0.0, 1e9, 2e9])
    offset = np.array([100.0, 1100.0, 2100.0])  # 1 ppm
    t_node = np.array([5e8 - 600], dtype=np.int64)
    mapped = map_to_orchestrator(t_node, (t_orch, offset))
    assert abs(int(mapped[0]) - (int(t_node[0]) + 600)) <= 1


def test_manifest_clock_maps_from_nodes_section():
    manifest = {"nodes": {"jetson-1": {"role": "ue", "clock": {"node": "jetson-1", "offset_ns": -5e6, "drift": 2e-6,
                                                               "ref_remote_ns": 10, "uncertainty_ns": 40e3,
                                                               "method": "ntp_fit", "samples": 32}},
                          "es": {"role": "es", "clock": {"offset_ns": 0.0, "method": "unsynced"}}}}
    maps = manifest_clock_models(manifest)
    assert set(maps) == {"ue"}
    assert maps["ue"].drift == 2e-6 and maps["ue"].samples == 32


def test_training_logs_prefer_the_fresher_csv(tmp_path):
    folder = tmp_path / "policy" / "ppo"
    folder.mkdir(parents=True)
    pd.DataFrame({"iteration": [1, 2], "reward_mean": [0.1, 0.2]}).to_parquet(folder / "train_log.parquet")
    pd.DataFrame({"iteration": [1, 2, 3], "reward_mean": [0.1, 0.2, 0.3]}).to_csv(folder / "train_log.csv",
                                                                               index=False)
    (folder / "train_summary.json").write_text(json.dumps({"algo": "ppo_lag"}))
    bad = tmp_path / "policy" / "broken"
    bad.mkdir()
    pd.DataFrame({"step": [1]}).to_csv(bad / "train_log.csv", index=False)
    logs, problems = read_training_logs(tmp_path)
    assert list(logs) == ["ppo_lag"] and len(logs["ppo_lag"]) == 3
    assert any("no 'iteration' column" in p for p in problems)


def test_fixture_rows_conform_strictly(full_run):
    data = load_run(full_run, with_traces=False)
    assert schema.problems(data.rows, strict_extra=True) == []


def test_clock_records_from_both_sections_are_not_doubled():
    fit = {"offset_ns": 10.0, "drift": 0.0, "ref_remote_ns": 0, "uncertainty_ns": 5.0, "method": "ntp_fit"}
    point = {"t_ns": 100, "offset_ns": 10.0, "uncertainty_ns": 5.0, "rtt_ns": 10}
    manifest = {"nodes": {"jetson": {"role": "ue", "clock": [fit, point]}, "es": {"role": "es", "clock": [fit]}},
                "clock_sync": {"jetson": [fit, point]}}
    from megbed.analysis.clock import manifest_sync_points

    pts = manifest_sync_points(manifest)
    assert pts["node"].tolist() == ["ue"]  # once, under its role
    assert set(manifest_clock_models(manifest)) == {"ue", "es"}
