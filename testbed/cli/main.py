"""The ``megbed`` command line: one entry point, subcommands contributed by each part of the project.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommand(s) and sets
``func`` (a callable taking the parsed namespace and returning an exit code) on each parser. Modules are imported
lazily so that ``megbed --help`` stays fast and a broken optional part names itself instead of killing the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order in --help. Each part of the project adds its own line.
COMMAND_MODULES: list[str] = [
    "testbed.cli.node",
    "testbed.cli.policy",
    "testbed.cli.generate",
    "testbed.cli.model",
    "analysis.cli",
    "channel_emu.cli",
    "measurements.cli",
    "testbed.cli.campaign",
    "testbed.cli.profile",
    "testbed.cli.keys",
    "testbed.cli.run",
    "testbed.cli.distill",
]


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megbed",
        description="megbed: a hardware-in-the-loop testbed for mobile edge generation (split latent diffusion).",
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more logging (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = build_parser()
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
    except KeyboardInterrupt:
        print("megbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m testbed.cli.main`: run the imported module's main, so that CliError raised by subcommands (which
    # import testbed.cli.main) is the class main() catches, not a second copy living in __main__.
    from testbed.cli.main import main as _main

    sys.exit(_main())
