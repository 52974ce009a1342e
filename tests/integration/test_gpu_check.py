"""scripts/gpu_check.py (issue 18): the CPU rehearsal of the GPU run writes its report, every step skipping its
CUDA part with the reason; the parent's time bounds; the pieces that adapt at run time (merge methods, SDXL
configs, NVML percentages) against fakes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the no-CUDA skip reasons")


@no_cuda
def test_smoke_rehearsal_writes_the_report_with_each_skip_reason(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--no-install", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["schema_version"] == gpu_check.SCHEMA_VERSION and report["smoke"] is True
    steps = report["steps"]
    assert list(steps) == ["install", *gpu_check.STEPS]
    expected = {
        "install": "--no-install",
        "env": "no CUDA GPU visible",
        "gpu_tests": r"no CUDA GPU visible.*\d+ gpu tests collected",
        "nvml": "NVML probe unavailable|no CUDA workload",
        "ldm_stages": "no SDXL 1024\\^2 timings; handoff bytes computed on CPU",
        "campaign": "both campaign specs validated, not run",
        "distill": "recipe validated, no training run",
    }
    import re

    for name, pattern in expected.items():
        assert steps[name]["status"] == "skipped", (name, steps[name])
        assert re.search(pattern, steps[name]["skip_reason"]), (name, steps[name]["skip_reason"])
        if name != "install":
            assert steps[name]["budget_s"] == gpu_check.BUDGET_S[name]
            assert 0 < steps[name]["timeout_s"] <= gpu_check.BUDGET_S[name]
    assert steps["env"]["missing_dependencies"] == [] and steps["env"]["import_errors"] == {}
    assert steps["gpu_tests"]["figures"]["collected"] >= 1  # the gpu tests import and collect
    rows = steps["ldm_stages"]["figures"]["handoff_bytes"]
    methods = steps["ldm_stages"]["figures"]["merge_methods"]
    assert methods and {r["merge_method"] for r in rows} >= set(methods)
    assert all(r["handoff_bytes"] > 0 for r in rows)
    camp = steps["campaign"]["campaigns"]
    assert set(camp) == {"default", "sdxl"}
    for c in camp.values():
        assert c["spec"]["device"] == {"es": "cuda", "ue": "cpu"} and c["grid_points"] >= 1
        assert c["spec"]["profiles"]["ue"] == "generic_cpu"  # the CPU UE never reads the GPU's counter
    summary = report["summary"]
    assert summary["gpu"] is None and summary["nvml_within_2pct"] is None
    assert summary["step_status"] == {k: "skipped" for k in steps}
    log = (out / "gpu_check.log").read_text()
    assert all(f"step {name}:" in log for name in gpu_check.STEPS)
    assert not list(out.glob(".step_*"))  # children's scratch files are merged and removed


def test_deadline_spent_skips_every_step_without_running_it(tmp_path):
    t = time.monotonic()
    assert gpu_check.main(["--no-install", "--deadline-s", "0", "--out", str(tmp_path)]) == 0
    assert time.monotonic() - t < 5
    steps = json.loads((tmp_path / "gpu_report.json").read_text())["steps"]
    for name in gpu_check.STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["skip_reason"].startswith("no time left")


def test_a_hung_child_is_killed_at_its_timeout(tmp_path):
    run = gpu_check.Run(tmp_path, 60.0, True, None)
    t = time.monotonic()
    rc, wall, _ = run.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                1.0)
    assert rc is None and wall < 10 and time.monotonic() - t < 10
    assert "started" in (tmp_path / gpu_check.LOG_NAME).read_text()


def test_missing_wheels_skip_the_install_with_the_reason(tmp_path):
    run = gpu_check.Run(tmp_path, 60.0, True, tmp_path / "site")
    gpu_check.install(run, tmp_path / "no-wheels", skip=False)
    rec = run.report["steps"]["install"]
    assert rec["status"] == "skipped" and "scripts/gpu_wheels.sh" in rec["skip_reason"]


def test_summary_and_results_name_from_step_records(tmp_path):
    run = gpu_check.Run(tmp_path, 60.0, False, None)
    run.report["steps"] = {
        "env": {"status": "ok", "gpu_name": "NVIDIA H100 80GB HBM3"},
        "nvml": {"status": "ok", "figures": {"counter_period_ms": 20.0, "idle_power_w": 70.0, "windows": [
            {"window": "long", "duration_s": 12.1, "integrated_vs_counter_pct": -1.5}]}},
        "ldm_stages": {"status": "ok", "figures": {"tiny": False, "latency_s": {
            "denoise, 1 step (CFG, batch 2), tomesd 0": [0.07, 0.08], "decode (VAE, 128x128 latent -> 1024x1024)":
            [0.2], "ES denoise, N = 4 (CFG, batch 2)": [0.3]}}},
    }
    gpu_check.collect_results(run)
    s = run.report["summary"]
    assert run.report["commit_as"] == "benchmarks/results/gpu_nvidia-h100-80gb-hbm3.json"
    assert s["nvml_within_2pct"] is True and s["nvml_long_window_s"] == 12.1
    assert s["sdxl_1024_vae_decode_s"] == 0.2 and "ES denoise, N = 4 (CFG, batch 2)" in s["sdxl_1024_es_denoise_s"]


def test_collected_counts_reads_both_pytest_formats():
    from gpu_check_steps import collected_counts

    assert collected_counts("tests/a/test_x.py: 3\ntests/b/test_y.py: 1\n\n") == {"tests/a/test_x.py": 3,
                                                                                 "tests/b/test_y.py": 1}
    assert collected_counts("tests/a/test_x.py::test_one\ntests/a/test_x.py::test_two[fp16]\n4 tests collected") \
        == {"tests/a/test_x.py": 2}


def test_merge_methods_follow_the_merging_module(monkeypatch):
    import ldm_stages

    calls = []

    def merge(latent, beta, seed, method="tome"):
        calls.append(method)
        return ("merged", method)

    fake = types.SimpleNamespace(merge=merge, MERGE_METHODS=("tome", "pool"))
    monkeypatch.setattr(ldm_stages, "merging", fake)
    assert ldm_stages.merge_methods() == ("tome", "pool")
    assert ldm_stages._merge(torch.zeros(1), 0.5, "pool") == ("merged", "pool") and calls == ["pool"]
    monkeypatch.setattr(ldm_stages, "merging", types.SimpleNamespace(merge=merge))  # no list: the default only
    assert ldm_stages.merge_methods() == ("tome",)
    monkeypatch.setattr(ldm_stages, "merging", types.SimpleNamespace(merge=lambda latent, beta, seed: None))
    assert ldm_stages.merge_methods() == (None,)


def test_sdxl_model_builds_at_sdxl_base_size_through_the_runtime():
    """build_sdxl on the meta device (no memory, no init) through LdmModel: SDXL-base's U-Net is 2.567 G parameters
    in float16, its VAE (force_upcast) is moved to float32 by the runtime when its decoder is first built (the UE's
    decode stage; role-aware loading builds nothing earlier), the family is recognised."""
    import ldm_stages

    model = ldm_stages.build_sdxl(torch.device("meta"), torch.float16)
    assert model.family == "sdxl" and model.dtype == torch.float16
    assert sum(p.numel() for p in model.unet.parameters()) == 2_567_463_684
    assert next(model.unet.parameters()).dtype == torch.float16
    decoder = model.base_decoder
    assert decoder.vae.dtype == torch.float32 and decoder.vae.config.scaling_factor == 0.13025


def test_nvml_percent_difference_survives_a_zero_counter_window():
    import nvml_gpu

    assert nvml_gpu.pct_diff(101.0, 100.0) == pytest.approx(1.0)
    assert nvml_gpu.pct_diff(5.0, 0.0) is None  # a window shorter than one counter update
    assert nvml_gpu.pct_diff(float("nan"), 100.0) is None
