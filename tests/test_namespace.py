"""One import namespace: the repository's folders install and import as ``megbed.<folder>``, nothing else.

* a built wheel holds one top-level package, ``megbed`` (no ``testbed``, ``analysis``, ... beside it in a user's
  site-packages), with the default model's data files inside;
* no bare import is left in the repository (``scripts/rename_namespace.py --check``), and the script's rewrite is
  what its docstring says and idempotent;
* the console script names a function that exists.
"""

# rename_namespace: strings-stay (the rewrite test's sample sources must stay bare)

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rename_namespace.py"
FOLDERS = ("testbed", "channel_emu", "measurements", "analysis", "firmware_profiles", "megwire", "testing")


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rename_namespace", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (path,) = out.glob("megbed-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"megbed"}
    for folder in FOLDERS:
        assert f"megbed/{folder}/__init__.py" in names
    assert "megbed/testbed/cli/main.py" in names and "megbed/testbed/assets/default_model/model_index.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "megbed = megbed.testbed.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_no_bare_import_remains():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(ROOT)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_console_script_resolves():
    import importlib

    text = (ROOT / "pyproject.toml").read_text()
    assert 'megbed = "megbed.testbed.cli.main:main"' in text
    assert callable(importlib.import_module("megbed.testbed.cli.main").main)


def test_a_checkout_imports_the_namespace_and_nothing_twice():
    import megbed
    import megbed.testbed.request as request

    assert Path(request.__file__).resolve() == ROOT / "testbed" / "request.py"
    assert set(megbed.SUBPACKAGES) == set(FOLDERS)
    # A rewritten tree never imports a folder under its bare name as well (two copies of every class)
    code = ("import sys, megbed.testbed.cli.main, megbed.analysis.report, megbed.testing.node_fuzz; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FOLDERS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_rewrite_rules_and_idempotence(tmp_path):
    rn = _load_script()
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "testbed" / "cli").mkdir()
    (tmp_path / "testbed" / "cli" / "__init__.py").write_text("")
    (tmp_path / "testbed" / "cli" / "main.py").write_text("")
    (tmp_path / "analysis" / "load.py").write_text("")
    source = (
        "import testbed\n"
        "import testbed.cli.main\n"
        "import analysis.load as L\n"
        "from testbed.cli import main  # see testbed.cli.main\n"
        "def f():\n"
        "    from analysis.load import (\n"
        "        x,\n"
        "    )\n"
        "    return testbed.cli.main, 'testbed.cli.main:main', 'analysis.csv', 'profiles.ue', \"-m testbed.cli.main\"\n"
    )
    expected = (
        "from megbed import testbed\n"
        "import megbed.testbed.cli.main\n"
        "from megbed import testbed\n"
        "import megbed.analysis.load as L\n"
        "from megbed.testbed.cli import main  # see megbed.testbed.cli.main\n"
        "def f():\n"
        "    from megbed.analysis.load import (\n"
        "        x,\n"
        "    )\n"
        "    return testbed.cli.main, 'megbed.testbed.cli.main:main', 'analysis.csv', 'profiles.ue', "
        "\"-m megbed.testbed.cli.main\"\n"
    )
    once, n = rn.rewrite_python(source, tmp_path)
    assert once == expected and n == 8
    assert rn.rewrite_python(once, tmp_path) == (once, 0)
    md = "```python\nfrom analysis import build_report\nimport testbed\n```\nrun `python -m testbed.cli.main`, see testbed/cli/\n"
    text, _ = rn.rewrite_text(md, tmp_path)
    assert text == ("```python\nfrom megbed.analysis import build_report\nfrom megbed import testbed\n```\n"
                    "run `python -m megbed.testbed.cli.main`, see testbed/cli/\n")
    assert rn.rewrite_text(text, tmp_path) == (text, 0)
    (tmp_path / "mod.py").write_text(source)
    check = subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1 and "mod.py:1: import testbed" in check.stdout
    assert subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], timeout=60).returncode == 0
    assert (tmp_path / "mod.py").read_text() == expected
    assert subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(tmp_path)],
                          capture_output=True, timeout=60).returncode == 0


def _megbed_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every ``import megbed...`` / ``from megbed... import name`` in ``path``, deferred ones too."""
    import ast

    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megbed"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.startswith("megbed")]
    return found


def test_every_megbed_import_in_benchmarks_and_scripts_resolves():
    # Benchmarks and scripts run outside the suite: a name that a refactor removed (benchmarks/policy.py imported a
    # deleted helper of policy/quick.py) would otherwise show only when someone runs them.
    import importlib

    missing = []
    for path in sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")]):
        for module_name, name in _megbed_imports(path):
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                missing.append(f"{path.relative_to(ROOT)}: {module_name} ({exc})")
                continue
            if name is not None and name != "*" and not hasattr(module, name):
                try:
                    importlib.import_module(f"{module_name}.{name}")
                except ImportError:
                    missing.append(f"{path.relative_to(ROOT)}: {module_name}.{name}")
    assert not missing, "imports that do not resolve:\n" + "\n".join(missing)
