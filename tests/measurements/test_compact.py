"""Dataset compaction: partitioned, verified, atomic; readers and resume take either form; a kill at any step
loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from megbed.measurements import compact as C
from megbed.measurements.dataset import DatasetWriter, data_files, has_rows, read_dataset

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ("meg", "ceg", "ue_local")


def row(i: int, **kw):
    base = {
        "run_id": "r1", "point_id": f"p{i % 3}", "request_id": f"q{i // 3}", "repetition": 0,
        "scheme": SCHEMES[i % 3], "node": ("es", "ue", None)[i % 2 + (i % 5 == 0)], "status": "ok", "t_start_ns": 1000 * i, "t_end_ns": 1000 * i + 500, "latency_s": 5e-7 * i,
        "energy_mj_total": 12.5, "energy_net_mj_total": 2.5, "energy_method": "integrated", "energy_valid": True,
        "energy_invalid_reason": "", "probe": "jetson_ina3221", "seed": i,
        "stage": "end_to_end" if i % 4 == 0 else "decode",
    }
    base.update(kw)
    return base


def _write(run: Path, rows: range, per_part: int = 1) -> None:
    with DatasetWriter(run, rows_per_part=per_part) as w:
        w.extend(row(i) for i in rows)


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["t_start_ns"]).reset_index(drop=True)[sorted(df.columns)]


def test_compaction_partitions_verifies_and_readers_take_both_forms(tmp_path):
    _write(tmp_path, range(30))
    before = read_dataset(tmp_path)
    res = C.compact_dataset(tmp_path)
    folder = tmp_path / "dataset"
    assert res["rows"] == 30 and res["inputs"] == 30 and res["generation"] == "compacted-00001"
    assert not list(folder.glob("part-*.parquet")) and len(res["removed"]) == 30
    rel = sorted(str(p.relative_to(folder)) for p in data_files(folder))
    assert "compacted-00001/scheme=meg/node=es/part-00000.parquet" in rel
    assert any(f"node={C.NULL_PARTITION}" in r for r in rel)
    assert len(rel) == res["files"] <= 9
    after = read_dataset(tmp_path)
    pd.testing.assert_frame_equal(_canon(before), _canon(after))
    assert has_rows(tmp_path)
    # analysis reads the compacted form too
    from megbed.analysis.load import dataset_parts

    assert len(dataset_parts(tmp_path)) == res["files"]
    # the writer resumes past the consumed part numbers, and the new part is read alongside the copy
    _write(tmp_path, range(30, 33), per_part=10)
    assert [p.name for p in folder.glob("part-*.parquet")] == ["part-00030.parquet"]
    assert len(read_dataset(tmp_path)) == 33
    res2 = C.compact_dataset(tmp_path)
    assert res2["generation"] == "compacted-00002" and res2["rows"] == 33
    assert not (folder / "compacted-00001").exists() and not list(folder.glob("part-*.parquet"))
    pd.testing.assert_frame_equal(_canon(read_dataset(tmp_path)), _canon(pd.concat(
        [before, read_dataset(tmp_path).query("t_start_ns >= 30000")], ignore_index=True)))
    # idempotent
    assert C.compact_dataset(tmp_path)["generation"] == "compacted-00002"


def test_a_copy_that_does_not_verify_leaves_the_parts(tmp_path, monkeypatch):
    _write(tmp_path, range(12))
    real = C.content_hash
    calls = []

    def lying(table):
        calls.append(1)
        return real(table) if len(calls) == 1 else "0" * 64

    monkeypatch.setattr(C, "content_hash", lying)
    with pytest.raises(C.CompactionError, match="does not verify"):
        C.compact_dataset(tmp_path)
    folder = tmp_path / "dataset"
    assert len(list(folder.glob("part-*.parquet"))) == 12
    assert not list(folder.glob(".compact-tmp-*")) and C.live_compaction(folder) is None
    assert len(read_dataset(tmp_path)) == 12


def test_compaction_refuses_while_a_writer_holds_the_lock(tmp_path):
    _write(tmp_path, range(3))
    with DatasetWriter(tmp_path) as w:
        w.append(row(3))
        with pytest.raises(C.CompactionError, match="writer"):
            C.compact_dataset(tmp_path)


@pytest.mark.parametrize("step", ["written", "verified", "committed", "cleaned"])
def test_a_kill_during_compaction_loses_nothing_and_resume_still_works(tmp_path, step):
    from megbed.testbed.campaign.runner import completed_requests

    _write(tmp_path, range(24))
    before = _canon(read_dataset(tmp_path))
    done_before = completed_requests(tmp_path)
    assert len(done_before[0]) == 6
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from megbed.measurements.compact import compact_dataset

        def crash(at):
            if at == {step!r}:
                os.kill(os.getpid(), signal.SIGKILL)

        compact_dataset({str(tmp_path)!r}, _checkpoint=crash)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    folder = tmp_path / "dataset"
    # whatever the step: every row read exactly once
    pd.testing.assert_frame_equal(before, _canon(read_dataset(tmp_path)))
    # resume: the runner's view of what is done, and a writer appending after the kill
    assert completed_requests(tmp_path) == done_before
    _write(tmp_path, range(24, 27), per_part=10)
    assert len(read_dataset(tmp_path)) == 27
    # rerunning finishes the job
    res = C.compact_dataset(tmp_path)
    assert res["rows"] == 27
    assert not list(folder.glob(".compact-tmp-*")) and not list(folder.glob("part-*.parquet"))
    assert len(read_dataset(tmp_path)) == 27
    assert len([p for p in folder.iterdir() if p.name.startswith("compacted-")]) == 1


def test_cli_dataset_compact(tmp_path, capsys):
    from megbed.measurements.cli import cmd_dataset_compact

    _write(tmp_path, range(6))
    ns = type("NS", (), {"run_dir": str(tmp_path), "json": False})()
    assert cmd_dataset_compact(ns) == 0
    assert "6 rows from 6 files" in capsys.readouterr().out
    ns.run_dir = str(tmp_path / "nope")
    assert cmd_dataset_compact(ns) == 2
    assert os.path.exists(tmp_path / "dataset" / "compacted-00001" / C.SUCCESS)
