"""Helpers of the board-readiness tests: the node install's requirements, interpreters, node processes."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What a node install must leave out (issue 14): none of these is imported by `megbed node es|ue` / `megbed doctor`.
LEFT_OUT = ("sionna-no-rt", "numba", "matplotlib", "gymnasium", "scipy", "pandas", "pyarrow", "pytorch-msssim")


def node_requirements(*, with_torch: bool = True, python_version: str | None = None) -> list[str]:
    """The base (node install) dependencies declared in pyproject.toml.

    With ``python_version`` ("3.10"), environment markers are evaluated for that Python and dropped (pip's
    ``--python-version`` changes wheel tags, not markers: it would evaluate them for the running interpreter).
    """
    try:
        import tomllib  # novermin (tomli on 3.10)
    except ModuleNotFoundError:
        import tomli as tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = [d for d in deps if with_torch or not d.startswith("torch")]
    if python_version is None:
        return deps
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": python_version + ".0"}
    out = []
    for dep in deps:
        req = Requirement(dep)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def find_python310() -> str | None:
    """A real Python 3.10 interpreter: ``python3.10`` on PATH, else pyenv's; None when there is none."""
    candidates = [shutil.which("python3.10")]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(root / "versions" / "3.10*" / "bin" / "python3.10")), reverse=True)
    for exe in candidates:
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            return exe
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_source(dst: Path) -> Path:
    """The project's installable files copied to ``dst`` (an install builds there, never in the worktree)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info", "build", ".pytest_cache",
                                    ".ruff_cache", "tests", "benchmarks")
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def start_node(argv: list[str], log: Path, env: dict[str, str] | None = None,
               timeout_s: float = 120.0) -> subprocess.Popen:
    """Start a node process; return once it printed 'serving on' (raise with its log otherwise)."""
    fh = log.open("w")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "serving on" in log.read_text():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{' '.join(argv)} did not start:\n{log.read_text()[-3000:]}")


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def python_exe(venv: Path) -> Path:
    return venv / "bin" / "python"


PY = sys.executable
