"""Rewrite the repository's imports to the one ``megbed.`` namespace: ``testbed.x`` -> ``megbed.testbed.x``, ...

The top-level folders stay where they are (pyproject/setup.py install them as ``megbed.<folder>``); this script
rewrites every reference to them:

* Python import statements (module level and deferred), found with ``ast``: ``from testbed.x import y`` ->
  ``from megbed.testbed.x import y``; ``import testbed.x as t`` -> ``import megbed.testbed.x as t``; ``import testbed``
  -> ``from megbed import testbed``; ``import testbed.x`` (binds ``testbed``) -> ``import megbed.testbed.x`` when the
  file never uses the bare name, else that plus ``from megbed import testbed``;
* dotted module names in string literals and comments (``"testbed.cli.main"``, ``"testbed.campaign.live:Cls"``,
  ``python -m testbed.cli.main``, ``:mod:`analysis.load```, logger names) -- only where the name resolves to a real
  module or subpackage of the folder, so ``"analysis.csv"`` or ``profiles.ue`` are left alone;
* the same dotted names and import lines in README/Markdown, Makefile, shell scripts, ``.ci/run``, TOML and YAML.

A Python file with the comment ``rename_namespace: strings-stay`` gets its imports rewritten and its strings left
as they are (tests/test_import_direction.py: its rules name folders).

Idempotent: a name already under ``megbed.`` is never touched again, so the lead re-runs it after merging branches.

Usage::

    python scripts/rename_namespace.py [--root DIR] [--check] [--verbose]

``--check`` rewrites nothing and exits 1 when a bare import (or a dotted module name that would be rewritten)
remains, listing each as ``path:line``.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

NAMESPACE = "megbed"
PACKAGES = ("testbed", "analysis", "measurements", "channel_emu", "firmware_profiles", "megwire", "testing")
# Folders and files never rewritten: environments, build output, data, other repositories' copies.
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "runs", "__pycache__", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", "node_modules", "wip", NAMESPACE + ".egg-info"}
TEXT_SUFFIXES = {".md", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".txt", ".rst"}
TEXT_NAMES = {"Makefile", "run", "Dockerfile"}
# This script names the packages in its own strings; rewriting it would break it.
SELF = Path(__file__).resolve()

STRINGS_STAY = "rename_namespace: " + "strings-stay"
_PKG = "|".join(PACKAGES)
# A dotted name starting with a package, not already qualified (no word character or dot before it).
DOTTED = re.compile(rf"(?<![\w.\-/])({_PKG})((?:\.[A-Za-z_]\w*)+)")
TEXT_FROM = re.compile(rf"^(\s*(?:>>> |\.\.\. )?from )({_PKG})(\s+import\b|\.)", re.M)
TEXT_IMPORT = re.compile(rf"^(\s*(?:>>> |\.\.\. )?import )({_PKG})(\s*(?:#.*)?$|\s+as\s)", re.M)


@dataclass
class Report:
    """What a run found or changed."""

    changed: dict[Path, int] = field(default_factory=dict)
    remaining: list[str] = field(default_factory=list)


def real_module(root: Path, dotted: str) -> bool:
    """Whether ``pkg.a[.b...]`` names a module, subpackage or an attribute of one (``pkg.a`` must exist)."""
    parts = dotted.split(".")
    if len(parts) < 2:
        return (root / parts[0] / "__init__.py").is_file()
    base = root / parts[0]
    return (base / parts[1]).is_dir() or (base / f"{parts[1]}.py").is_file()


def _rewrite_dotted(text: str, root: Path) -> tuple[str, int]:
    count = 0

    def sub(m: re.Match) -> str:
        nonlocal count
        name = m.group(1) + m.group(2)
        if not real_module(root, name):
            return m.group(0)
        count += 1
        return f"{NAMESPACE}.{name}"

    return DOTTED.sub(sub, text), count


def _rewrite_text_imports(text: str) -> tuple[str, int]:
    text, a = TEXT_FROM.subn(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3)}", text)

    def imp(m: re.Match) -> str:
        # `import testbed` -> `from megbed import testbed`; `import testbed as t` -> `import megbed.testbed as t`
        if m.group(3).lstrip().startswith("as"):
            return f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3)}"
        return f"{m.group(1).replace('import ', f'from {NAMESPACE} import ', 1)}{m.group(2)}{m.group(3)}"

    text, b = TEXT_IMPORT.subn(imp, text)
    return text, a + b


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _bare_names_used(tree: ast.AST) -> set[str]:
    """Package names used as plain names outside import statements (``testbed.x.y`` in code)."""
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in PACKAGES}


def _import_edits(text: str, tree: ast.AST) -> list[tuple[int, int, str]]:
    """``(start, end, replacement)`` character spans for every bare import statement."""
    offsets = _line_offsets(text)
    used = _bare_names_used(tree)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top not in PACKAGES:
                continue
            start = offsets[node.lineno - 1] + node.col_offset
            segment = text[start:offsets[node.end_lineno - 1] + node.end_col_offset]
            new = re.sub(rf"^from\s+{re.escape(node.module)}\b", f"from {NAMESPACE}.{node.module}", segment, count=1)
            edits.append((start, start + len(segment), new))
        elif isinstance(node, ast.Import):
            if not any(a.name.split(".")[0] in PACKAGES for a in node.names):
                continue
            start = offsets[node.lineno - 1] + node.col_offset
            end = offsets[node.end_lineno - 1] + node.end_col_offset
            indent = " " * node.col_offset
            lines = []
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top not in PACKAGES:
                    lines.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
                elif alias.asname:
                    lines.append(f"import {NAMESPACE}.{alias.name} as {alias.asname}")
                elif "." not in alias.name:
                    lines.append(f"from {NAMESPACE} import {alias.name}")
                else:
                    lines.append(f"import {NAMESPACE}.{alias.name}")
                    if top in used:  # the code says `testbed.x.y`: bind the name as before
                        lines.append(f"from {NAMESPACE} import {top}")
            edits.append((start, end, ("\n" + indent).join(lines)))
    return edits


def _string_and_comment_edits(text: str, root: Path) -> list[tuple[int, int, str]]:
    offsets = _line_offsets(text)
    edits = []
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    for tok in tokens:
        if tok.type not in (tokenize.STRING, tokenize.COMMENT) and tok.type != getattr(tokenize, "FSTRING_MIDDLE", -1):
            continue
        start = offsets[tok.start[0] - 1] + tok.start[1]
        end = offsets[tok.end[0] - 1] + tok.end[1]
        new, n = _rewrite_dotted(text[start:end], root)
        if n:
            edits.append((start, end, new))
    return edits


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, new in sorted(edits):
        if start < last:  # nested spans (an f-string's parts): the outer edit already covers them
            continue
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out)


def rewrite_python(text: str, root: Path) -> tuple[str, int]:
    """The file with its imports and dotted module strings under the namespace, and the number of edits.

    A file saying ``rename_namespace: strings-stay`` (in a comment) keeps its strings and comments: it names
    folders on purpose (the layering test's rules)."""
    tree = ast.parse(text)
    imports = _import_edits(text, tree)
    text = _apply(text, imports)
    if STRINGS_STAY in text:
        return text, len(imports)
    strings = _string_and_comment_edits(text, root)
    return _apply(text, strings), len(imports) + len(strings)


def rewrite_text(text: str, root: Path) -> tuple[str, int]:
    text, a = _rewrite_text_imports(text)
    text, b = _rewrite_dotted(text, root)
    return text, a + b


def bare_imports(path: Path, text: str) -> list[str]:
    """``path:line: statement`` of each import that still names a package without the namespace."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: cannot parse ({exc.msg})"]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        if any(n.split(".")[0] in PACKAGES for n in names):
            found.append(f"{path}:{node.lineno}: {ast.get_source_segment(text, node)}")
    return found


def files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]) or not path.is_file() or path.resolve() == SELF:
            continue
        if path.suffix == ".py" or path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            yield path


def run(root: Path, check: bool) -> Report:
    report = Report()
    for path in files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root)
        if path.suffix == ".py":
            try:
                new, n = rewrite_python(text, root)
            except SyntaxError as exc:
                report.remaining.append(f"{rel}:{exc.lineno}: cannot parse ({exc.msg})")
                continue
            if check:
                report.remaining += bare_imports(rel, text)
        else:
            new, n = rewrite_text(text, root)
        if n and new != text:
            report.changed[rel] = n
            if check:
                if path.suffix != ".py":
                    report.remaining.append(f"{rel}: {n} bare module name(s) or import line(s)")
                elif not bare_imports(rel, text):
                    report.remaining.append(f"{rel}: {n} dotted module name(s) in strings or comments")
            else:
                path.write_text(new, encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a bare import remains")
    ap.add_argument("--verbose", "-v", action="store_true", help="list every file changed")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    if not all((root / p).is_dir() for p in ("testbed", "measurements")):
        print(f"rename_namespace: {root} is not the megbed repository (no testbed/, measurements/)", file=sys.stderr)
        return 2
    report = run(root, args.check)
    if args.check:
        for line in report.remaining:
            print(line)
        print(f"{len(report.remaining)} bare reference(s) in {len(report.changed)} file(s)")
        return 1 if report.remaining else 0
    if args.verbose:
        for rel, n in sorted(report.changed.items()):
            print(f"{rel}: {n}")
    print(f"rewrote {sum(report.changed.values())} reference(s) in {len(report.changed)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
