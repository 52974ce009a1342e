"""`megbed run` (what `make run` calls) end to end on a small spec: campaign, report, summary table."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_megbed_run_writes_run_dir_report_and_summary(tmp_path):
    from megbed.testing.random_weight_models import build_tiny_model

    model = build_tiny_model(tmp_path / "sd15", "sd15", sample_size=8)
    spec = tmp_path / "small.yaml"
    spec.write_text(textwrap.dedent("""
        name: small
        model: default
        prompts: ["a cat", "a dog"]
        seeds: [0]
        schemes: [meg, ceg, ue_local]
        grid: {n_steps: [2, 3], merge_ratio: [0.0, 0.5], distance_m: [200, 300]}
        reference: {n_steps: 4}
        repetitions: 1
        timeouts: {request_s: 120, heartbeat_s: 0.5, dead_after_s: 20}
    """))
    proc = subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", "run", "--spec", str(spec), "--model", str(model),
                           "--runs", str(tmp_path / "runs"), "--no-progress", "--policy-seconds", "20"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["schemes"]["schemes"]) == {"meg", "ceg", "ue_local"}
    assert "MEG vs CEG" in proc.stdout and "MEG vs UE-local" in proc.stdout
    assert (run / "manifest.json").is_file() and any((run / "images").iterdir())
    assert summary["report"].endswith(".html") or summary["report"].startswith("skipped")
