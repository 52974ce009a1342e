"""The layering the README draws, checked on every import of every module, and no import cycles.

Every ``import`` / ``from ... import`` counts wherever it is written (module level, inside a function, under
``try``), relative imports are resolved, and so are ``importlib.import_module("literal")`` calls: a deferred import
is still a dependency. A module may import only the units its row below names (its own unit always):

megwire            nothing of the project
firmware_profiles  nothing of the project
measurements       megwire, firmware_profiles
channel_emu        megwire
analysis           measurements, firmware_profiles: it reads datasets, never node code; and it imports no model
                   library (torch, diffusers, transformers, ...): it never builds a network
testbed.assets     nothing (data)                       testbed.shapes   nothing (scenes and captions)
testbed.request    megwire, channel_emu, testbed.ldm: the request contract (fields, ranges, vocabularies)
testbed.ldm        megwire, testbed.assets, testbed.request: the model runtime holds no sockets and knows no node
testbed.modeltrain, testbed.distill   the layers below testbed, testbed.request / assets / shapes / ldm
testbed.nodes      the layers below testbed, testbed.request / assets / ldm
testbed.policy     the layers below testbed: it learns from datasets and drives a testbed it is handed
testbed.campaign   the layers below testbed, testbed.request / assets / shapes / ldm / nodes
testbed.doctor     the layers below testbed, testbed.request / assets / ldm / nodes
testbed.cli        everything but testing: the top
testing            anything (test fixtures); no product module imports it

"The layers below testbed" are megwire, firmware_profiles, measurements and channel_emu.
"""

# rename_namespace: strings-stay (the rules below name folders; imports are compared without the megbed. prefix)

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository's top-level folders that are packages of the project (installed under the megbed namespace).
FOLDERS = ("megwire", "firmware_profiles", "measurements", "channel_emu", "analysis", "testbed", "testing")
NAMESPACE = "megbed"

BELOW_TESTBED = frozenset({"megwire", "firmware_profiles", "measurements", "channel_emu"})
ALLOWED: dict[str, frozenset[str]] = {
    "megwire": frozenset(),
    "firmware_profiles": frozenset(),
    "measurements": frozenset({"megwire", "firmware_profiles"}),
    "channel_emu": frozenset({"megwire"}),
    "analysis": frozenset({"measurements", "firmware_profiles"}),
    "testbed": frozenset(),  # the package's own __init__
    "testbed.assets": frozenset(),
    "testbed.shapes": frozenset(),
    "testbed.request": frozenset({"megwire", "channel_emu", "testbed.ldm"}),
    "testbed.ldm": frozenset({"megwire", "testbed.assets", "testbed.request"}),
    "testbed.modeltrain": BELOW_TESTBED | {"testbed.request", "testbed.assets", "testbed.shapes", "testbed.ldm"},
    "testbed.distill": BELOW_TESTBED | {"testbed.request", "testbed.assets", "testbed.shapes", "testbed.ldm"},
    "testbed.nodes": BELOW_TESTBED | {"testbed.request", "testbed.assets", "testbed.ldm"},
    "testbed.policy": BELOW_TESTBED,
    "testbed.campaign": BELOW_TESTBED | {"testbed.request", "testbed.assets", "testbed.shapes", "testbed.ldm", "testbed.nodes"},
    "testbed.doctor": BELOW_TESTBED | {"testbed.request", "testbed.assets", "testbed.ldm", "testbed.nodes"},
    "testbed.cli": BELOW_TESTBED | {"analysis", "testbed", "testbed.request", "testbed.assets", "testbed.shapes", "testbed.ldm",
                                    "testbed.modeltrain", "testbed.distill", "testbed.nodes", "testbed.policy",
                                    "testbed.campaign", "testbed.doctor"},
    "testing": frozenset({"megwire", "firmware_profiles", "measurements", "channel_emu", "analysis", "testbed",
                          "testbed.request", "testbed.assets", "testbed.shapes", "testbed.ldm", "testbed.modeltrain", "testbed.distill",
                          "testbed.nodes", "testbed.policy", "testbed.campaign", "testbed.doctor"}),
}

# Third-party imports a unit must not make: analysis reads data and never builds a network (FLOP counting, which
# builds networks on the meta device, is the runtime's: testbed.ldm.flops, handed to the report by `megbed report`).
FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {
    "analysis": frozenset({"torch", "diffusers", "transformers", "tomesd", "safetensors"}),
}


def _local(name: str) -> str:
    """A module name without the ``megbed.`` namespace prefix (the rules are written on folder names)."""
    return name[len(NAMESPACE) + 1:] if name.startswith(NAMESPACE + ".") else name


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project: dotted name (folder-relative, no namespace) -> file."""
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def unit_of(module: str) -> str:
    """The layering unit of a module: its top-level folder, or ``testbed.<part>`` inside testbed."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "testbed" and len(parts) > 1 else parts[0]


def imported_names(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of every import in the file, at any depth; ``from a import b`` gives ``a.b``
    (resolved to ``a`` later when ``b`` is not a module). Relative imports are made absolute."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, _local(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = _local(node.module or "")
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}" if alias.name != "*" else source
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, _local(node.args[0].value)


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The deepest project module a dotted import name refers to (None: not the project's)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> project modules it imports (itself excluded), and the first line of each edge."""
    known = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    lines: dict[tuple[str, str], int] = {}
    for module, path in known.items():
        for line, name in imported_names(path, module):
            target = resolve(name, known)
            if target is None or target == module:
                continue
            graph[module].add(target)
            lines.setdefault((module, target), line)
    return graph, lines


def violations(root: Path = ROOT) -> list[str]:
    """Every import that crosses the layering the wrong way, as ``file:line imports module (unit -> unit)``."""
    graph, lines = import_graph(root)
    known = modules(root)
    bad = []
    for module, path in known.items():
        banned = FORBIDDEN_LIBRARIES.get(unit_of(module), frozenset())
        for line, name in imported_names(path, module):
            if name.split(".")[0] in banned:
                bad.append(f"{path.relative_to(root)}:{line} imports {name} ({unit_of(module)} -> a model library)")
    for module, targets in graph.items():
        unit = unit_of(module)
        allowed = ALLOWED.get(unit)
        for target in sorted(targets):
            other = unit_of(target)
            if other == unit:
                continue
            if allowed is None or other not in allowed:
                where = f"{known[module].relative_to(root)}:{lines[(module, target)]}"
                bad.append(f"{where} imports {target} ({unit} -> {other})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_unit_has_a_rule():
    units = {unit_of(m) for m in modules()}
    assert units <= set(ALLOWED), f"modules in units without a layering rule: {sorted(units - set(ALLOWED))}"


def test_layering():
    assert violations() == []


def test_no_import_cycles():
    graph, _ = import_graph()
    assert cycles(graph) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_is_a_package(folder):
    assert (ROOT / folder / "__init__.py").is_file()


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in FOLDERS:
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "__init__.py").touch()


def test_checker_catches_the_breaches_it_exists_for(tmp_path):
    # The breaches found when this test was written: analysis building models through testbed (deferred, inside a
    # try), a campaign reaching up into the CLI, a relative import across units, importlib with a literal, and a
    # product module importing the fixtures.
    _write(tmp_path, {
        "analysis/flops.py": "def f():\n    try:\n        from testbed.assets import default_model_dir\n"
                             "    except ImportError:\n        pass\n    from diffusers import UNet2DConditionModel\n",
        "testbed/assets/__init__.py": "",
        "testbed/cli/__init__.py": "", "testbed/cli/node.py": "NODE_MODULES = []\n",
        "testbed/campaign/__init__.py": "",
        "testbed/campaign/local.py": "def g():\n    from testbed.cli.node import NODE_MODULES\n",
        "testbed/ldm/__init__.py": "", "testbed/ldm/x.py": "from ..nodes import y\n",
        "testbed/nodes/__init__.py": "", "testbed/nodes/y.py": "",
        "measurements/m.py": "import importlib\nimportlib.import_module('megbed.channel_emu')\n",
        "testbed/nodes/z.py": "from megbed.testing import node_fuzz\n", "testing/node_fuzz.py": "",
    })
    found = "\n".join(violations(tmp_path))
    assert "analysis/flops.py:3 imports testbed.assets (analysis -> testbed.assets)" in found
    assert "analysis/flops.py:6 imports diffusers.UNet2DConditionModel (analysis -> a model library)" in found
    assert "testbed/campaign/local.py:2 imports testbed.cli.node (testbed.campaign -> testbed.cli)" in found
    assert "testbed/ldm/x.py:1 imports testbed.nodes.y (testbed.ldm -> testbed.nodes)" in found
    assert "measurements/m.py:2 imports channel_emu (measurements -> channel_emu)" in found
    assert "testbed/nodes/z.py:1 imports testing.node_fuzz (testbed.nodes -> testing)" in found


def test_cycle_finder_finds_deferred_cycles_and_not_package_submodules(tmp_path):
    _write(tmp_path, {
        # request <-> schedulers, one side deferred: a cycle
        "testbed/ldm/__init__.py": "", "testbed/ldm/request.py": "def f():\n    from testbed.ldm.schedulers import S\n",
        "testbed/ldm/schedulers.py": "from testbed.ldm.request import RequestError\n",
        # a package importing its submodules, which import their siblings: no cycle
        "analysis/figures/__init__.py": "from analysis.figures import costs\n",
        "analysis/figures/costs.py": "from analysis.figures import style\n", "analysis/figures/style.py": "",
    })
    graph, _ = import_graph(tmp_path)
    assert cycles(graph) == [["testbed.ldm.request", "testbed.ldm.schedulers"]]
