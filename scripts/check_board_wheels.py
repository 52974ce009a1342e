"""Does every node-install dependency have a binary wheel for the boards? (Jetson / Pi 5: manylinux aarch64.)

For each dependency of the node install (pyproject.toml ``[project] dependencies``) at its declared range, ask pip
whether a binary wheel resolves for manylinux aarch64 on CPython 3.10 (JetPack 6) and 3.11 (Raspberry Pi OS
Bookworm): ``pip download --only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
--python-version 3.X --no-deps``. torch is left out: a board's torch is its own (NVIDIA's JetPack wheel, the
PyTorch aarch64 CPU wheel). Prints the table; exit 1 when any cell does not resolve.

    python scripts/check_board_wheels.py [--python 3.10 3.11]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")


def node_dependencies() -> list[str]:
    try:
        import tomllib  # novermin (tomli on 3.10)
    except ModuleNotFoundError:
        import tomli as tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not re.match(r"torch\b", d)]


def resolve(requirement: str, python: str, dest: Path) -> tuple[bool, str]:
    """(resolved, the wheel file name or pip's last error line)."""
    req = requirement.split(";")[0].strip()  # markers (tomli: python < 3.11) are judged by the caller
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
            "--python-version", python, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    before = set(dest.iterdir())
    out = subprocess.run([*argv, req], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        lines = [line for line in (out.stderr or out.stdout).splitlines() if line.strip()]
        return False, (lines[-1] if lines else f"exit {out.returncode}")[:90]
    new = sorted(set(dest.iterdir()) - before)
    return True, (new[0].name if new else "(already downloaded)")


def applies(requirement: str, python: str) -> bool:
    if ";" not in requirement:
        return True
    from packaging.markers import Marker

    return Marker(requirement.split(";", 1)[1]).evaluate({"python_version": python,
                                                          "python_full_version": python + ".0"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", nargs="+", default=["3.10", "3.11"], help="CPython versions (default 3.10 3.11)")
    args = ap.parse_args(argv)
    deps = node_dependencies()
    failures = 0
    header = f"{'requirement':32s} " + " ".join(f"{'cp' + p.replace('.', ''):>8s} {'wheel':50s}" for p in args.python)
    print(f"node install: binary wheels for manylinux aarch64 ({', '.join(PLATFORMS)})")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for dep in deps:
            cells = []
            for python in args.python:
                if not applies(dep, python):
                    cells.append(f"{'n/a':>8s} {'(marker excludes this Python)':50s}")
                    continue
                dest = Path(tmp) / python
                dest.mkdir(exist_ok=True)
                ok, what = resolve(dep, python, dest)
                failures += not ok
                cells.append(f"{'ok' if ok else 'NO':>8s} {what[:50]:50s}")
            print(f"{dep.split(';')[0]:32s} " + " ".join(cells))
    print(f"\n{'every dependency resolves' if not failures else f'{failures} cell(s) do not resolve'}; torch is the "
          "board's own build (not checked)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
