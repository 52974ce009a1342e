"""Must-show (b): the node install on Python 3.10 (JetPack 6's interpreter), without ever fetching a torch build.

* The node install's dependency set resolves for CPython 3.10 (``pip install --dry-run --python-version 3.10
  --only-binary=:all:``): torch is left to the board, and tomesd (whose only dependency is torch) is resolved with
  ``--no-deps`` so that pip never fetches a torch wheel for 3.10.
* The torch-free parts a node uses (wire, probes, firmware profiles, clock sync, doctor's checks) pass their tests
  under a real 3.10 interpreter, in a venv holding only their pure dependencies (no torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from board_helpers import LEFT_OUT, REPO, find_python310, node_requirements

PY310 = find_python310()
pytestmark = pytest.mark.skipif(
    PY310 is None, reason="no Python 3.10 interpreter (python3.10 on PATH or ~/.pyenv/versions/3.10*/bin)")

# Tests of the torch-free node parts; none may import torch.
TORCH_FREE_TESTS = ("tests/wire", "tests/firmware_profiles", "tests/measurements/test_jetson.py",
                    "tests/measurements/test_rapl.py", "tests/measurements/test_external_and_pi.py",
                    "tests/measurements/test_nvml.py", "tests/measurements/test_clocksync.py",
                    "tests/board/test_doctor.py")
# pandas is a test-only dependency here: three probe tests read Meter.traces() as DataFrames (an orchestrator-side
# helper); the node itself serves traces as arrays and (a) shows it running without pandas.
PURE_DEPS = ("pyzmq>=26", "numpy>=1.26,<3", "tomli>=2.0", "smbus2>=0.4", "nvidia-ml-py>=12", "pydantic>=2.10,<3",
             "pytest>=8", "pandas>=2.2")


def _dry_run(tmp_path, name, *reqs, no_deps=False):
    report = tmp_path / f"{name}.json"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--python-version", "3.10", "--only-binary=:all:", "--target", str(tmp_path / f"{name}-target"),
            "--report", str(report), *(["--no-deps"] if no_deps else []), *reqs]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"node install does not resolve for 3.10:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_node_dependency_set_resolves_for_python_310(tmp_path):
    reqs = node_requirements(with_torch=False, python_version="3.10")
    torch_only = [r for r in reqs if r.startswith("tomesd")]  # tomesd's one dependency is torch
    resolved = _dry_run(tmp_path, "node", *[r for r in reqs if r not in torch_only])
    resolved.update(_dry_run(tmp_path, "tomesd", *torch_only, no_deps=True))
    assert "torch" not in resolved
    assert {"diffusers", "transformers", "safetensors", "pyzmq", "numpy", "tomesd", "tomli",
            "pydantic"} <= set(resolved)
    assert not set(LEFT_OUT) & set(resolved), sorted(set(LEFT_OUT) & set(resolved))


def test_torch_free_node_parts_pass_under_python_310(tmp_path):
    venv = tmp_path / "py310"
    subprocess.run([PY310, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--only-binary=:all:", *PURE_DEPS],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    listed = subprocess.run([py, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    assert "torch" not in {d["name"].lower() for d in json.loads(listed.stdout)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run([py, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", *TORCH_FREE_TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and "error" not in run.stdout.splitlines()[-1].lower(), tail
