from __future__ import annotations

import json

import pytest
from meas_helpers import JetsonTree

from megbed.testbed.cli.main import main


@pytest.fixture
def orin(tmp_path):
    tree = JetsonTree(tmp_path, "orin_nano_jp6")
    tree.set_power("VDD_IN", 5000.0)
    tree.set_power("VDD_CPU_GPU_CV", 1500.0)
    tree.set_power("VDD_SOC", 800.0)
    return tmp_path


def test_probe_energy_on_a_fake_tree(orin, capsys):
    rc = main(["probe", "energy", "--seconds", "0.3", "--idle-seconds", "0.2", "--sysfs-root", str(orin),
               "--board", "jetson_orin_nano_15w", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probe"] == "jetson_ina3221" and out["method"] == "integrated" and out["valid"], out["reason"]
    assert out["total_mj"] == pytest.approx(5000.0 * out["duration_s"], rel=1e-3)  # VDD_IN only: no double count
    assert out["rails"]["vdd_soc"]["mean_power_mw"] == pytest.approx(800.0, rel=1e-3)
    assert out["net_total_mj"] == pytest.approx(0.0, abs=5.0)
    assert out["total_rails"] == ["jetson_ina3221:vdd_in"]
    assert out["sensor_periods_s"]["jetson_ina3221"]["declared"] == pytest.approx(0.010)


def test_probe_list_and_watch(orin, capsys):
    assert main(["probe", "list", "--sysfs-root", str(orin), "--json"]) == 0
    status = {a["backend"]: a for a in json.loads(capsys.readouterr().out)["backends"]}
    assert status["jetson_ina3221"]["ok"] and "VDD_IN" in status["jetson_ina3221"]["reason"]
    assert not status["nvml"]["ok"] and status["nvml"]["reason"]
    assert main(["probe", "list", "--sysfs-root", str(orin), "--board", "jetson_orin_nano_15w"]) == 0
    assert "using: jetson_ina3221" in capsys.readouterr().out
    # 1 s of 0.1 s windows: on a loaded box a window can lack samples (printed as invalid), never all of them
    assert main(["probe", "watch", "--seconds", "1.0", "--interval", "0.1", "--sysfs-root", str(orin)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("probe: jetson_ina3221") and len(lines) >= 3
    valid = [float(line.split()[-1]) for line in lines[1:] if "invalid" not in line]
    assert valid and all(total == pytest.approx(5000.0, rel=1e-3) for total in valid)


def test_user_errors_exit_2(capsys):
    assert main(["probe", "energy", "--seconds", "0.1", "--board", "no_such_board"]) == 2
    assert "no firmware profile named 'no_such_board'" in capsys.readouterr().err
    assert main(["probe", "energy", "--seconds", "0"]) == 2
