"""The layering rule: lower layers never import higher ones.

megwire            <- imports nothing of the project
measurements       <- may import megwire, firmware_profiles
channel_emu        <- may import megwire
firmware_profiles  <- imports nothing of the project
analysis           <- reads datasets: may import measurements (schema) and firmware_profiles, never testbed nodes
testbed            <- may import everything below
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"testbed", "channel_emu", "measurements", "analysis", "firmware_profiles", "megwire"}

# package -> project packages it must never import (module prefixes)
FORBIDDEN = {
    "megwire": {"testbed", "channel_emu", "measurements", "analysis", "firmware_profiles"},
    "firmware_profiles": {"testbed", "channel_emu", "measurements", "analysis", "megwire"},
    "measurements": {"testbed", "channel_emu", "analysis"},
    "channel_emu": {"testbed", "measurements", "analysis"},
    "analysis": {"testbed.nodes", "testbed.wire", "testbed.campaign", "testbed.cli"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    assert (ROOT / package / "__init__.py").exists(), f"{package} is missing"
    assert _violations(package) == []


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "measurements"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("from testbed.ldm import stages\nimport channel_emu.modes\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = _violations("measurements")
    assert any("testbed.ldm" in v for v in found)
    assert any("channel_emu.modes" in v for v in found)
