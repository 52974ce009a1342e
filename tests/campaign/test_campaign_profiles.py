from __future__ import annotations

import json
import subprocess
import sys

import pytest
from campaign_helpers import write_spec

from megbed.firmware_profiles import load_profile
from megbed.firmware_profiles.live import (
    PrivilegeError,
    RecordedRunner,
    apply_profile,
    planned_commands,
    verify_live,
)
from megbed.measurements.manifest import read_manifest
from megbed.testbed.campaign.spec import SpecError, load_spec

NANO_OUTPUTS = {
    "nvpmodel -q": "NV Power Mode: 15W\n0\n",
    "sh -c cat /sys/class/devfreq/17000000.g*/max_freq": "624750000\n",
}


def _nano_tree(root, max_khz="1510400"):
    cpu = root / "sys/devices/system/cpu"
    (cpu / "cpu0/cpufreq").mkdir(parents=True)
    (cpu / "online").write_text("0-5\n")
    (cpu / "cpu0/cpufreq/scaling_max_freq").write_text(max_khz + "\n")
    return root


def test_verify_matches_a_recorded_board(tmp_path):
    result = verify_live("jetson_orin_nano_15w", run=RecordedRunner(NANO_OUTPUTS), sysfs_root=_nano_tree(tmp_path))
    assert result["ok"], result
    live = {c["setting"]: c["live"] for c in result["checks"]}
    assert live["nvpmodel.name"] == "15W" and live["cpu.max_mhz"] == pytest.approx(1510.4)


def test_mismatch_and_unreadable_are_reported(tmp_path):
    outputs = dict(NANO_OUTPUTS, **{"nvpmodel -q": "NV Power Mode: 7W\n1\n"})
    outputs.pop("sh -c cat /sys/class/devfreq/17000000.g*/max_freq")
    result = verify_live("jetson_orin_nano_15w", run=RecordedRunner(outputs),
                         sysfs_root=_nano_tree(tmp_path, max_khz="1000000"))
    assert not result["ok"]
    assert set(result["mismatches"]) == {"nvpmodel.name", "nvpmodel.id", "cpu.max_mhz"}
    assert result["unreadable"] == ["gpu.max_mhz"]


def test_apply_needs_root_and_runs_in_order(tmp_path):
    with pytest.raises(PrivilegeError, match="needs root"):
        apply_profile("jetson_orin_nano_15w", run=RecordedRunner({}), is_root=False)
    runner = RecordedRunner({**NANO_OUTPUTS, "nvpmodel -m 0": ""})
    result = apply_profile("jetson_orin_nano_15w", run=runner, sysfs_root=_nano_tree(tmp_path), is_root=True)
    assert result["ok"] and result["verify"]["ok"]
    assert runner.calls[0] == ["nvpmodel", "-m", "0"]
    assert [c["cmd"] for c in planned_commands("rtx4090")][1] == ["nvidia-smi", "-i", "0", "-pl", "450"]


def test_cli_verify_records_in_the_manifest(tmp_path):
    rec = tmp_path / "outputs.json"
    rec.write_text(json.dumps(NANO_OUTPUTS))
    tree = _nano_tree(tmp_path / "tree", max_khz="900000")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", "profile", "verify", "jetson_orin_nano_15w",
                           "--sysfs-root", str(tree), "--command-outputs", str(rec), "--run-dir", str(run),
                           "--node", "ue"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "DOES NOT MATCH" in proc.stdout and "cpu.max_mhz" in proc.stdout
    section = read_manifest(run)["firmware_profiles"]["ue"]
    assert section["name"] == "jetson_orin_nano_15w" and section["verify"]["mismatches"] == ["cpu.max_mhz"]
    dry = subprocess.run([sys.executable, "-m", "megbed.testbed.cli.main", "profile", "apply", "jetson_orin_nano_15w"],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "dry run" in dry.stdout and "nvpmodel -m 0" in dry.stdout


def test_broken_profile_fails_the_spec_before_any_run(tmp_path, fake_model):
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "broken"\nkind = "toaster"\n')
    with pytest.raises(Exception):  # noqa: B017 - the loader's own error type
        load_profile(broken)
    spec = write_spec(tmp_path, f"""
        model: model
        prompts: ["a cat"]
        schemes: [ue_local]
        grid: {{n_steps: [2]}}
        profiles: {{es: {broken}, ue: no_such_board}}
    """)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "profiles.es" in str(info.value) and "profiles.ue" in str(info.value)
