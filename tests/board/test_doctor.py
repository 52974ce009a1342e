"""``megbed doctor`` against fake sysfs trees, recorded commands, a fake CUDA-less torch, a partial model folder and
a live clock-sync responder on loopback.

Torch-free on purpose: this file also runs under a real Python 3.10 without torch (test_py310.py).
"""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest
from meas_helpers import JetsonTree

from megbed.measurements.clocksync import ClockSyncResponder, OffsetClock
from megbed.testbed import doctor as D
from megbed.testbed.cli.main import main

NANO_OUTPUTS = {"nvpmodel -q": "NV Power Mode: 15W\n0\n",
                "sh -c cat /sys/class/devfreq/17000000.g*/max_freq": "624750000\n"}


def _orin_nano(root, online="0-5"):
    tree = JetsonTree(root, "orin_nano_jp6")
    tree.set_power("VDD_IN", 5000.0)
    cpu = root / "sys/devices/system/cpu"
    (cpu / "cpu0/cpufreq").mkdir(parents=True, exist_ok=True)
    (cpu / "online").write_text(online + "\n")
    (cpu / "cpu0/cpufreq/scaling_max_freq").write_text("1510400\n")
    outputs = root / "commands.json"
    outputs.write_text(json.dumps(NANO_OUTPUTS))
    return outputs


def _fake_torch(cuda: bool = False):
    torch = types.ModuleType("torch")
    torch.__version__ = "2.5.0a0+nv24.08"
    torch.version = types.SimpleNamespace(cuda="12.6" if cuda else None)
    torch.cuda = types.SimpleNamespace(is_available=lambda: cuda, get_device_name=lambda i: "Orin (nvgpu)",
                                       mem_get_info=lambda: (6 * 2**30, 8 * 2**30))
    torch.get_num_threads = lambda: 6
    return torch


def _partial_model(root, components=("vae",)):
    """A hand-made partial diffusers folder (no weights needed: the doctor reads the index and folders)."""
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": [None, None], "text_encoder": [None, None],
             "tokenizer": [None, None], "unet": [None, None], "vae": [None, None]}
    classes = {"vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"]}
    for name in components:
        index[name] = classes[name]
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "megbed_slice.json").write_text(json.dumps({"role": "ue", "plans": ["meg"]}))
    return root


def _by_name(checks):
    return {c.name: c for c in checks}


def test_fake_jetson_tree_probes_and_profile_verify(tmp_path):
    outputs = _orin_nano(tmp_path)
    from megbed.firmware_profiles import load_profile

    profile = load_profile("jetson_orin_nano_15w")
    probes = _by_name(D.check_probes(profile, tmp_path))
    assert probes["probe jetson_ina3221"].status == "ok"
    assert probes["probe rapl"].status == "skip" and "RAPL" in probes["probe rapl"].detail  # why not, per probe
    assert probes["power probe"].status == "ok"
    checks = D.check_profile(profile, tmp_path, outputs)
    assert [c.status for c in checks] == ["ok"] * 5, [c.line() for c in checks]


def test_profile_mismatch_and_missing_probe_fail_with_their_fix(tmp_path):
    outputs = _orin_nano(tmp_path, online="0-3")
    from megbed.firmware_profiles import load_profile

    profile = load_profile("jetson_orin_nano_15w")
    bad = [c for c in D.check_profile(profile, tmp_path, outputs) if c.status == "fail"]
    assert [c.name for c in bad] == ["profile cpu.online"]
    assert bad[0].fix == "sudo megbed profile apply jetson_orin_nano_15w --apply"
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = _by_name(D.check_probes(profile, empty))["power probe"]
    assert probe.status == "fail" and "megbed probe list --board jetson_orin_nano_15w" in probe.fix


def test_fake_cuda_less_torch():
    fake = _fake_torch(cuda=False)

    def importer(name):
        return fake if name == "torch" else __import__(name)

    checks = _by_name(D.check_torch("ue", None, kind="rpi", importer=importer))
    assert checks["torch"].status == "ok" and checks["device"].status == "ok"
    asked = _by_name(D.check_torch("es", "cuda", kind="jetson", importer=importer))["device"]
    assert asked.status == "fail" and "jetson" in asked.fix.lower()
    es_cpu = _by_name(D.check_torch("es", None, kind="gpu_host", importer=importer))["device"]
    assert es_cpu.status == "warn"
    gpu = _by_name(D.check_torch("es", None, importer=lambda n: _fake_torch(cuda=True)))["device"]
    assert gpu.status == "ok" and "Orin" in gpu.detail


def test_torch_missing_names_the_boards_wheel():
    def importer(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    check = D.check_torch("ue", None, kind="rpi", importer=importer)[0]
    assert check.status == "fail" and "download.pytorch.org/whl/cpu" in check.fix
    pkgs = D.check_packages("channel", importer=importer)
    assert all(c.status == "fail" for c in pkgs)
    assert any("megbed[channel]" in c.fix for c in pkgs)


def test_partial_model_folder(tmp_path):
    model = _partial_model(tmp_path / "ue_meg")
    ok = D.check_model("ue", model, ["meg"], None)[0]
    assert ok.status == "ok" and "vae (meg)" in ok.detail
    bad = D.check_model("ue", model, ["meg", "hybrid"], None)[0]
    assert bad.status == "fail" and "'unet'" in bad.detail and "'hybrid'" in bad.detail
    assert bad.fix.startswith("megbed model slice")
    es = D.check_model("es", model, None, None)[0]
    assert es.status == "fail" and "'text_encoder'" in es.detail
    nothing = D.check_model("ue", tmp_path / "nowhere", None, None)[0]
    assert nothing.status == "fail" and "not a diffusers model folder" in nothing.detail


def test_bind_keys_and_python():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = D.check_bind(f"tcp://127.0.0.1:{port}")
    assert busy.status == "fail" and f"sport = :{port}" in busy.fix
    assert D.check_bind(f"tcp://127.0.0.1:{port}").status == "ok"
    assert D.check_bind("ipc:///tmp/x").status == "fail"
    assert D.check_python((3, 9, 18)).status == "fail"
    assert D.check_python((3, 10, 12)).status == "ok"


def test_curve_keys(tmp_path):
    from megbed.testbed.nodes.keys import generate

    missing = D.check_keys("ue", tmp_path / "keys")
    assert missing.status == "fail" and missing.fix.startswith(f"megbed keys generate {tmp_path / 'keys'}")
    generate(tmp_path / "keys")
    assert D.check_keys("ue", tmp_path / "keys").status == "ok"
    assert D.check_keys("es", None).status == "skip"


def test_clock_offset_to_a_live_responder_on_loopback():
    with ClockSyncResponder(clock=OffsetClock(7_000_000)) as responder:
        check = D.check_clock(responder.address, exchanges=8)
    assert check.status == "ok", check.detail
    offset_ms = float(check.detail.split()[1])
    assert abs(abs(offset_ms) - 7.0) < 2.0, check.detail
    dead = D.check_clock("tcp://127.0.0.1:1", exchanges=2, timeout_s=0.2)
    assert dead.status == "fail" and "--serve-clock" in dead.fix


def test_cli_json_and_exit_status(tmp_path, monkeypatch, capsys):
    outputs = _orin_nano(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=False))
    monkeypatch.setitem(D.ROLE_PACKAGES, "ue", [("zmq", "pyzmq", ""), ("numpy", "numpy", "")])
    model = _partial_model(tmp_path / "model")
    with ClockSyncResponder() as responder:
        rc = main(["doctor", "--role", "ue", "--profile", "jetson_orin_nano_15w", "--model", str(model),
                   "--sysfs-root", str(tmp_path), "--command-outputs", str(outputs), "--orchestrator",
                   responder.address, "--bind", "tcp://127.0.0.1:0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["ok"], [c for c in result["checks"] if c["status"] == "fail"]
    names = {c["name"] for c in result["checks"]}
    assert {"python", "torch", "device", "model", "probe jetson_ina3221", "profile cpu.online", "bind",
            "CURVE keys", "clock"} <= names
    rc = main(["doctor", "--role", "ue", "--model", str(model), "--plans", "hybrid", "--sysfs-root", str(tmp_path),
               "--bind", "tcp://127.0.0.1:0"])
    out = capsys.readouterr().out
    assert rc == 1 and "[FAIL] model" in out and "fix: megbed model slice" in out and "UE NOT ready" in out


@pytest.mark.parametrize("role", ["es", "ue", "channel"])
def test_every_role_runs_its_checklist(role, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=False))
    # (the real package imports are checked above; diffusers cannot import next to a fake torch)
    monkeypatch.setitem(D.ROLE_PACKAGES, role, [("zmq", "pyzmq", "")])
    checks = D.run_checks(D.DoctorOptions(role=role, sysfs_root=tmp_path, bind="tcp://127.0.0.1:0"))
    names = [c.name for c in checks]
    assert names[0] == "python" and names[-3:] == ["bind", "CURVE keys", "clock"]
    assert all(c.fix for c in checks if c.status == "fail")
