"""An unresponsive node is a dead node: a campaign over real node processes whose channel broker is frozen (SIGSTOP:
process up, nothing served -- what a broker whose socket thread died looks like) detects it within
``dead_after_s``, restarts a local broker and loses or duplicates no row; with remote nodes it stops with a clear
error instead of failing every remaining request at ``request_s`` each."""

from __future__ import annotations

import os
import signal
import time

import pytest
from campaign_helpers import complete_dataset, run_in_background, wait_for_parts, write_spec

from megbed.measurements.dataset import read_dataset
from megbed.testbed.campaign.local import LocalCluster, wait_ready
from megbed.testbed.campaign.runner import CampaignRunner
from megbed.testbed.campaign.spec import load_spec

SPEC = """
    name: t
    model: model
    prompts: ["a cat"]
    seeds: [0, 1]
    image: {height_px: 64, width_px: 64}
    schemes: [meg, ceg]
    grid: {n_steps: [2], merge_ratio: [0.0], distance_m: [200]}
    repetitions: 1
    warmup: 1
    timeouts: {request_s: 8, heartbeat_s: 0.2, dead_after_s: 2.0}
    retries: 1
"""


def _freeze_broker_after_parts(runner: CampaignRunner, run_dir, parts: int) -> int:
    wait_for_parts(run_dir, parts, poll_s=0.02)
    pid = runner.cluster.nodes["channel"].pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_frozen_local_broker_is_restarted_and_no_row_is_lost_or_duplicated(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    run = tmp_path / "run"
    runner = CampaignRunner(spec, run, engine="synthetic", progress=False)
    t, result = run_in_background(runner)
    frozen = _freeze_broker_after_parts(runner, run, 2)
    t.join(180)
    assert not t.is_alive()
    summary = result["summary"]
    assert not summary.stopped_early and summary.ok == summary.total == len(spec.requests())
    assert summary.restarts >= 1
    assert runner.cluster.nodes["channel"].restarts == 1
    assert runner.cluster.nodes["channel"].pid != frozen
    complete_dataset(run, spec, each_once=True)
    # Detected at the probe, not by requests timing out one after another.
    assert summary.failed == 0 and len(summary.failures) <= 1


@pytest.mark.slow
def test_broker_frozen_during_a_request_fails_that_attempt_once_then_retries(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    run = tmp_path / "run"
    runner = CampaignRunner(spec, run, engine="synthetic", progress=False)
    calls = {"n": 0}
    original_run_one = runner._run_one

    def run_one(req, *args, **kw):
        # Freeze the broker right after the pre-request probe passed, so the request itself hits it.
        calls["n"] += 1
        if calls["n"] == 3:
            generate = runner.orch.generate

            def freeze_then_generate(*a, **k):
                runner.orch.generate = generate
                os.kill(runner.cluster.nodes["channel"].pid, signal.SIGSTOP)
                return generate(*a, **k)

            runner.orch.generate = freeze_then_generate
        return original_run_one(req, *args, **kw)

    runner._run_one = run_one
    summary = runner.run()
    assert not summary.stopped_early and summary.ok == summary.total
    assert summary.retried == 1 and summary.failed == 0 and summary.restarts == 1
    df = complete_dataset(run, spec, each_once=True)
    e2e = df[df.stage == "end_to_end"]
    failed = e2e[e2e.status == "failed"]
    assert len(failed) == 1  # the attempt that met the frozen broker, kept in the data
    assert runner.cluster.nodes["channel"].restarts == 1


@pytest.mark.slow
def test_frozen_remote_broker_stops_the_campaign_with_a_clear_error(tmp_path, fake_model):
    spec = load_spec(write_spec(tmp_path, SPEC))
    cluster = LocalCluster(tmp_path / "nodes", fake_model, engine="synthetic")
    cluster.start()
    try:
        wait_ready(cluster, 30)
        addresses = {"es": cluster.addresses["es"], "ue": [cluster.addresses["ue"]],
                     "channel_pub": cluster.addresses["channel_pub"]}
        run = tmp_path / "run"
        runner = CampaignRunner(spec, run, addresses=addresses, engine="synthetic", progress=False)
        t, result = run_in_background(runner)
        wait_for_parts(run, 2, poll_s=0.02)
        os.kill(cluster.nodes["channel"].pid, signal.SIGSTOP)
        t0 = time.monotonic()
        t.join(120)
        assert not t.is_alive()
        summary = result["summary"]
        assert summary.stopped_early and "channel broker" in summary.stopped_early
        assert "campaign resume" in summary.stopped_early
        # At most the request in flight failed; the rest were not burnt at request_s each.
        assert summary.failed <= 1 and summary.ok + summary.failed < summary.total
        assert time.monotonic() - t0 < 3 * spec.timeouts.request_s + 10
        df = read_dataset(run)
        e2e = df[df.stage == "end_to_end"]
        assert not e2e.request_id.duplicated().any()
    finally:
        pid = cluster.nodes["channel"].pid
        if pid is not None and cluster.nodes["channel"].alive():
            os.kill(pid, signal.SIGCONT)
        cluster.stop()
