"""The ``megbed`` command line: one entry point, subcommands contributed by each part of the project.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommand(s) and sets
``func`` (a callable taking the parsed namespace and returning an exit code) on each parser. Modules are imported
lazily so that ``megbed --help`` stays fast and a broken optional part names itself instead of killing the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

# Order is the order in --help. Each part of the project adds its own line.
COMMAND_MODULES: list[str] = [
    "megbed.testbed.cli.node",
    "megbed.testbed.cli.doctor",
    "megbed.testbed.cli.policy",
    "megbed.testbed.cli.generate",
    "megbed.testbed.cli.model",
    "megbed.testbed.cli.report",
    "megbed.channel_emu.cli",
    "megbed.measurements.cli",
    "megbed.testbed.cli.campaign",
    "megbed.testbed.cli.profile",
    "megbed.testbed.cli.keys",
    "megbed.testbed.cli.run",
    "megbed.testbed.cli.distill",
]

# Which module adds which top-level command, so that `megbed CMD ...` imports only CMD's module: a node process
# (`megbed node es`) then never imports the channel emulator, analysis or the policy, and a board with only the
# node install can run it. Commands not listed here are found by importing every module (``--help``).
COMMAND_OWNERS: dict[str, str] = {
    "node": "megbed.testbed.cli.node", "doctor": "megbed.testbed.cli.doctor", "train": "megbed.testbed.cli.policy",
    "evaluate": "megbed.testbed.cli.policy", "generate": "megbed.testbed.cli.generate", "model": "megbed.testbed.cli.model",
    "report": "megbed.testbed.cli.report", "channel": "megbed.channel_emu.cli", "probe": "megbed.measurements.cli",
    "campaign": "megbed.testbed.cli.campaign", "profile": "megbed.testbed.cli.profile", "keys": "megbed.testbed.cli.keys",
    "run": "megbed.testbed.cli.run", "distill": "megbed.testbed.cli.distill",
}

# The install extra (pyproject.toml [project.optional-dependencies]) that brings each optional import.
EXTRA_OF_IMPORT: dict[str, str] = {
    "sionna": "channel", "numba": "channel", "scipy": "analysis", "matplotlib": "analysis",
    "pandas": "analysis", "pyarrow": "analysis", "pytorch_msssim": "analysis", "gymnasium": "policy",
    "rich": "orchestrator", "yaml": "orchestrator",
}
# The extra a whole command needs (named even when the failing import is not in EXTRA_OF_IMPORT).
EXTRA_OF_COMMAND: dict[str, str] = {
    "channel": "channel", "train": "policy", "evaluate": "policy", "report": "analysis", "run": "all",
    "campaign": "orchestrator", "distill": "all",
}


# The argv being parsed (set by main before the parser is built): lets a command import only the sub-part asked for.
REQUESTED_ARGV: list[str] = []


# Modules each extra brings, checked before a command that needs the extra runs (so the user gets one line up
# front, not an ImportError halfway through, whichever module the command happens to import first).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "channel": ("sionna", "numba", "scipy"), "policy": ("gymnasium", "pandas", "pyarrow"),
    "analysis": ("matplotlib", "pandas", "pyarrow", "scipy"), "orchestrator": ("pandas", "pyarrow", "yaml", "rich"),
}


def _missing_module(extra: str) -> str | None:
    """The first module of ``extra`` that is not importable here (None when all are)."""
    import importlib.util

    modules = (sorted({m for ms in EXTRA_MODULES.values() for m in ms}) if extra == "all"
               else EXTRA_MODULES.get(extra, ()))
    for module in modules:
        if module in sys.modules:
            if sys.modules[module] is None:
                return module
            continue
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def missing_extra_message(command: str | None, exc: ModuleNotFoundError) -> str:
    """One line naming the install extra that brings the missing module ``exc.name``."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_COMMAND.get(command or "") or EXTRA_OF_IMPORT.get(top) or "all"
    what = f"`megbed {command}`" if command else "this command"
    return (f"{what} needs the '{extra}' install extra (missing module {top!r}): "
            f"pip install 'megbed[{extra}]' (or '.[{extra}]' from a checkout)")


def _is_missing_dependency(exc: ModuleNotFoundError) -> bool:
    # A missing third-party package, not a bug inside megbed itself.
    top = (exc.name or "").split(".")[0]
    return bool(top) and top not in ("megbed", "testbed", "analysis", "channel_emu", "measurements", "megwire",
                                      "firmware_profiles", "testing")


def _command_of(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a key of :data:`COMMAND_OWNERS`) only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="megbed",
        description="megbed: a hardware-in-the-loop testbed for mobile edge generation (split latent diffusion).",
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more logging (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    owner = COMMAND_OWNERS.get(command or "")
    for name in ([owner] if owner else COMMAND_MODULES):
        if not owner:
            missing = _module_missing_extra(name)
            if missing is not None:
                _unavailable(sub, name, ModuleNotFoundError(f"No module named {missing!r}", name=missing))
                continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if owner or not _is_missing_dependency(exc):
                raise
            # --help on a partial install: list what works, say what the rest needs.
            _unavailable(sub, name, exc)
            continue
        module.register(sub)
    return parser


def _module_missing_extra(module: str) -> str | None:
    """A module missing for the extra of every command ``module`` adds (None: at least one can run)."""
    commands = [c for c, owner in COMMAND_OWNERS.items() if owner == module]
    missing = [_missing_module(EXTRA_OF_COMMAND[c]) if c in EXTRA_OF_COMMAND else None for c in commands]
    return missing[0] if missing and all(m is not None for m in missing) else None


def _unavailable(sub: Any, module: str, exc: ModuleNotFoundError) -> None:
    for command, owner in COMMAND_OWNERS.items():
        if owner == module:
            message = missing_extra_message(command, exc)
            p = sub.add_parser(command, help=f"(not installed: {message})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda _args, m=message: _fail(m))


def _fail(message: str) -> int:
    print(f"megbed: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    import logging

    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    REQUESTED_ARGV[:] = argv
    extra = EXTRA_OF_COMMAND.get(command or "")
    missing = _missing_module(extra) if extra else None
    if missing is not None:
        return _fail(missing_extra_message(command, ModuleNotFoundError(f"No module named {missing!r}", name=missing)))
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as exc:
        if not _is_missing_dependency(exc):
            raise
        return _fail(missing_extra_message(command, exc))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"megbed: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not _is_missing_dependency(exc):
            raise
        return _fail(missing_extra_message(command, exc))
    except KeyboardInterrupt:
        print("megbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m megbed.testbed.cli.main`: run the imported module's main, so that CliError raised by subcommands (which
    # import megbed.testbed.cli.main) is the class main() catches, not a second copy living in __main__.
    from megbed.testbed.cli.main import main as _main

    sys.exit(_main())
