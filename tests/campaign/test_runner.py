"""Campaigns over real node processes on 127.0.0.1 with the model-free engine (seconds, not minutes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from campaign_helpers import complete_dataset, run_in_background, wait_for_parts, write_spec

from megbed.measurements.dataset import data_files, read_dataset
from megbed.measurements.manifest import read_manifest
from megbed.testbed.campaign.runner import CampaignRunner, resume_campaign
from megbed.testbed.campaign.spec import load_spec

SPEC = """
    name: t
    model: model
    prompts: ["a cat"]
    seeds: [0]
    image: {height_px: 64, width_px: 64}
    schemes: [meg, ceg, ue_local]
    grid: {n_steps: [2, 4], merge_ratio: [0.0, 0.5], distance_m: [200]}
    repetitions: 1
    warmup: 1
    timeouts: {request_s: 30, heartbeat_s: 0.2, dead_after_s: 1.5}
    retries: 1
"""


@pytest.mark.slow
def test_local_campaign_writes_a_valid_dataset_and_manifest(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    run = tmp_path / "run"
    summary = CampaignRunner(spec, run, engine="synthetic", progress=False).run()
    # MEG: N(2) x beta(2); CEG: N; UE-local: N -> 8 requests.
    assert summary.ok == summary.total == len(spec.requests()) == 8 and summary.failed == 0
    df = complete_dataset(run, spec)
    assert set(df.scheme) == {"meg", "ceg", "ue_local"}
    assert {"es", "ue", "channel", "orchestrator"} <= set(df.node)
    assert df[df.stage == "end_to_end"].q_psnr_db.notna().all()
    manifest = read_manifest(run)
    assert manifest["config_hash"] == spec.config_hash()
    assert set(manifest["nodes"]) == {"es", "ue"} and manifest["nodes"]["es"]["clock"][0]["method"] != "unsynced"
    assert manifest["campaign"]["runs"][-1]["ok"] == 8
    assert len(list((run / "images").glob("*.png"))) == 8
    assert len(list((run / "references").glob("*.png"))) == 1  # one per (prompt, seed)
    # A completed campaign is compacted (partitioned by scheme/node, parts gone) ...
    files = data_files(run / "dataset")
    assert files and all("compacted-00001" in str(f) for f in files)
    assert not list((run / "dataset").glob("part-*.parquet"))
    # ... and, nothing being left to do, a resume is a no-op that touches nothing.
    again = resume_campaign(run, engine="synthetic", progress=False)
    assert again.skipped == 8 and again.ok == 0
    assert data_files(run / "dataset") == files


def test_killing_the_ue_mid_campaign_then_resuming_loses_nothing(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    run = tmp_path / "run"
    slow = {"ue": ["--synthetic-step-s", "0.1"], "es": ["--synthetic-step-s", "0.1"]}
    runner = CampaignRunner(spec, run, engine="synthetic", progress=False, restart_dead_nodes=False,
                            local_extra_args=slow)
    t, result = run_in_background(runner)
    wait_for_parts(run, 2)
    runner.cluster.nodes["ue"].kill()  # SIGKILL: no goodbye
    t.join(120)
    first = result["summary"]
    assert first.stopped_early and "ue is dead" in first.stopped_early
    assert 2 <= first.ok < first.total and first.failed >= 1
    before = read_dataset(run)
    again = resume_campaign(run, engine="synthetic", progress=False)
    assert again.skipped == first.ok and again.failed == 0 and not again.stopped_early
    after = complete_dataset(run, spec)
    # Every row written before the resume is still there, unchanged.
    key = ["request_id", "node", "stage", "status"]
    merged = before.merge(after, on=key, how="left", suffixes=("", "_after"), indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["t_start_ns"] == merged["t_start_ns_after"]).all()
    failed = after[(after.stage == "end_to_end") & (after.status == "failed")]
    assert len(failed) >= 1 and failed.error.str.contains("NodeDead").any()
    assert len(read_manifest(run)["campaign"]["runs"]) == 2


@pytest.mark.slow
def test_dead_local_node_is_restarted_and_the_request_retried(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    run = tmp_path / "run"
    runner = CampaignRunner(spec, run, engine="synthetic", progress=False,
                            local_extra_args={"es": ["--synthetic-step-s", "0.1"]})
    t, result = run_in_background(runner)
    wait_for_parts(run, 2)
    runner.cluster.nodes["es"].kill()
    t.join(300)
    summary = result["summary"]
    assert summary.retried >= 1 and not summary.stopped_early
    complete_dataset(run, spec)
    assert runner.cluster.nodes["es"].restarts == 1


def test_broken_spec_fails_before_anything_runs(tmp_path, fake_model):
    bad = write_spec(tmp_path, SPEC.replace("merge_ratio: [0.0, 0.5]", "merge_ratio: [0.0, 0.9]")
                     .replace("repetitions: 1", "repetitions: 0"))
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", "campaign", "run", str(bad), "--out", str(out),
                           "--engine", "synthetic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "grid.merge_ratio[1]" in proc.stderr and "repetitions" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_campaign_process_killed_then_resumed(tmp_path, fake_model):
    """SIGKILL the whole `megbed campaign run` (its nodes die with it), then resume."""
    spec_path = write_spec(tmp_path, SPEC)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "megbed.testbed.cli.main", "campaign", "run", str(spec_path), "--out", str(run),
           "--engine", "synthetic", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_parts(run, 3, timeout_s=180)
    proc.kill()
    proc.wait(10)
    before = read_dataset(run)
    resumed = subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", "campaign", "resume", str(run),
                              "--engine", "synthetic", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = complete_dataset(run, load_spec(spec_path))
    assert set(before.request_id) <= set(after.request_id) and len(after) >= len(before)
