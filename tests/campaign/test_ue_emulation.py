"""The emulated UE: profile parsing, CPU limits (cgroup v2/v1 on fake trees, the real one where writable), the
duty-cycle fallback, calibration on the model's U-Net and what gets recorded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megbed.firmware_profiles import list_profiles, load_profile
from megbed.testbed.campaign import emulate as E
from megbed.testbed.campaign.spec import SpecError, validate_spec

BOARDS = [n for n in list_profiles() if n.startswith(("jetson", "rpi"))]


@pytest.mark.parametrize("name", BOARDS)
def test_every_board_profile_has_a_cited_throughput_figure(name):
    prof = load_profile(name)
    assert 0 < prof.relative_throughput < 1
    assert "http" in prof.emulation["source"] and prof.emulation["reference"]


def test_parse_forms():
    t = E.parse_emulation("emulate:2x")
    assert t.slowdown == 2.0 and t.board is None and t.power_profile == E.DEFAULT_POWER_PROFILE
    t = E.parse_emulation("emulate:jetson_agx_orin_maxn")
    assert t.slowdown == pytest.approx(1 / load_profile("jetson_agx_orin_maxn").relative_throughput)
    assert t.power_profile == "jetson_agx_orin_maxn" and "relative_throughput" in t.source
    t = E.parse_emulation("emulate:3.5x:jetson_orin_nano_15w")
    assert t.slowdown == 3.5 and t.power_profile == "jetson_orin_nano_15w"


@pytest.mark.parametrize(("value", "match"), [
    ("emulate:no_such_board", "unknown emulation profile 'no_such_board'"),
    ("emulate:h100", "no \\[emulation\\].relative_throughput"),
    ("emulate:0.5x", "outside"),
    ("emulate:rpi4", "outside"),  # ~3,400x: not a CPU quota's job
])
def test_bad_values_name_the_key(value, match):
    with pytest.raises(E.EmulationError, match=match) as exc:
        E.parse_emulation(value, "profiles.ue")
    assert str(exc.value).startswith("profiles.ue:")


def test_campaign_with_unknown_emulation_profile_fails_validation_naming_the_key(tmp_path):
    data = {"name": "x", "model": str(tmp_path), "prompts": ["p"], "schemes": ["meg"],
            "grid": {"n_steps": [4], "distance_m": [200]}, "profiles": {"ue": "emulate:no_such_board"}}
    with pytest.raises(SpecError, match=r"profiles\.ue: .*no_such_board"):
        validate_spec(data, base_dir=tmp_path, check_paths=False)
    data["profiles"] = {"es": "emulate:2x"}
    with pytest.raises(SpecError, match=r"profiles\.es: only the UE can be emulated"):
        validate_spec(data, base_dir=tmp_path, check_paths=False)


def test_modeled_profile_lists_only_the_modeled_probe(tmp_path):
    path = E.write_modeled_profile(E.parse_emulation("emulate:jetson_orin_nano_15w"), tmp_path)
    prof = load_profile(path)
    assert prof.probes.order == ("modeled",) and prof.probes.extra == ()
    src = load_profile("jetson_orin_nano_15w")
    assert {k: (v.idle_w, v.active_w) for k, v in prof.power_model.items()} == \
        {k: (v.idle_w, v.active_w) for k, v in src.power_model.items()}


def _fake_v1(root: Path) -> Path:
    cpu = root / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    return cpu


def test_detect_prefers_v2_then_v1_then_says_why_it_falls_back(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (v2 / "cgroup.subtree_control").write_text("")
    lim = E.detect_limit("g", v2)
    lim.set_fraction(0.5)
    assert lim.method == "cgroup_v2" and (v2 / "g" / "cpu.max").read_text() == "10000 20000"
    assert (v2 / "cgroup.subtree_control").read_text() == "+cpu"

    v1 = tmp_path / "v1"
    _fake_v1(v1)
    lim = E.detect_limit("g", v1)
    lim.set_fraction(0.25)
    assert lim.method == "cgroup_v1"
    assert (v1 / "cpu" / "g" / "cpu.cfs_quota_us").read_text() == "5000"
    assert (v1 / "cpu" / "g" / "cpu.cfs_period_us").read_text() == "20000"
    lim.set_fraction(0.01)  # below the kernel's 1 ms minimum quota at 20 ms: the period grows
    assert (v1 / "cpu" / "g" / "cpu.cfs_quota_us").read_text() == "1000"
    assert (v1 / "cpu" / "g" / "cpu.cfs_period_us").read_text() == "100000"

    nothing = tmp_path / "none"
    nothing.mkdir()
    lim = E.detect_limit("g", nothing)
    assert lim.method == "sigstop_duty" and "no cgroup v2 root or v1 cpu hierarchy" in lim.detail


def test_unwritable_cgroup_falls_back_and_is_recorded(tmp_path):
    v1 = tmp_path / "v1"
    cpu = _fake_v1(v1)
    (cpu / "g").write_text("")  # the group cannot be created (as root, permissions would not stop it)
    lim = E.detect_limit("g", v1)
    assert lim.method == "sigstop_duty" and "cgroup v1 at" in lim.detail


def _spin_cpu_s(pid_wall_s: float, proc: subprocess.Popen) -> float:
    time.sleep(pid_wall_s)
    with open(f"/proc/{proc.pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_duty_cycle_fallback_limits_a_real_process_and_is_recorded(tmp_path):
    lim = E.DutyCycleLimit(period_s=0.02, reason="test")
    lim.set_fraction(0.25)
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        lim.add(proc.pid)
        cpu_s = _spin_cpu_s(1.5, proc)
    finally:
        lim.close()
        proc.kill()
        proc.wait()
    # At most a quarter of the wall time (less where the host is busy); a spinning process unlimited gets ~1.0.
    assert 0.05 < cpu_s / 1.5 < 0.4
    emu = E.UeEmulation(E.parse_emulation("emulate:4x"), lim, None, None)
    assert emu.columns()["ue_emulation"] == "sigstop_duty" and "SIGSTOP" in emu.manifest()["detail"]


def _writable_cgroup() -> str | None:
    lim = E.detect_limit(f"megbed-test-{os.getpid()}")
    method = lim.method
    lim.close()
    return None if method == "sigstop_duty" else method


@pytest.mark.slow
def test_emulated_ue_achieves_its_slowdown_on_the_unet(tmp_path):
    """Real cgroup, real U-Net: the achieved slowdown within 15 % of the 2x target."""
    method = _writable_cgroup()
    if method is None:
        pytest.skip("no writable cgroup (v2 cpu.max or v1 cpu.cfs_quota_us) on this host: the emulated UE would "
                    "use the SIGSTOP/SIGCONT fallback")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        pytest.skip(f"host busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs): a wall-clock "
                    "ratio against other load is not the emulation's accuracy")
    from megbed.testbed.assets import default_model_dir

    emu = E.UeEmulation.start(E.parse_emulation("emulate:2x"), tmp_path)
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        achieved = emu.calibrate(default_model_dir(), env, k=8)
    finally:
        emu.close()
    assert emu.limit.method == method
    assert achieved == pytest.approx(2.0, rel=0.15)
    m = emu.manifest()
    assert m["target_slowdown"] == 2.0 and m["achieved_slowdown"] == achieved and m["calibrations"]
    assert not math.isnan(emu.columns()["ue_slowdown_achieved"])


def test_real_cgroup_quota_binds_a_spinning_process():
    """Where a cgroup is writable: a spinning child joined before exec gets at most its quota of CPU."""
    method = _writable_cgroup()
    if method is None:
        pytest.skip("no writable cgroup (v2 cpu.max or v1 cpu.cfs_quota_us) on this host")
    lim = E.detect_limit(f"megbed-test-spin-{os.getpid()}")
    lim.set_fraction(0.3)
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lim.preexec())
    try:
        cpu_s = _spin_cpu_s(1.5, proc)
        stat = (lim.group / "cpu.stat").read_text()
    finally:
        proc.kill()
        proc.wait()
        time.sleep(0.1)
        lim.close()
    assert cpu_s / 1.5 < 0.3 * 1.25  # at most its quota (plus start-up before the first period ends)
    throttled = dict(line.split() for line in stat.splitlines())
    assert int(throttled.get("nr_throttled", 0)) > 0
