"""``megbed node KIND``: run one testbed process (es, ue, channel broker, orchestrator).

Each module in ``NODE_MODULES`` exposes ``add_node_parser(node_subparsers)`` adding its node kind.
"""

from __future__ import annotations

import importlib

NODE_MODULES: list[str] = [
    "megbed.testbed.cli.node_es",
    "megbed.testbed.cli.node_ue",
    "megbed.testbed.cli.node_orchestrator",
    "megbed.channel_emu.cli",
]
CHANNEL = "megbed.channel_emu.cli"


def register(sub) -> None:
    from megbed.testbed.cli.main import REQUESTED_ARGV, missing_extra_message

    parser = sub.add_parser("node", help="run one testbed node process (es, ue, channel, orchestrator)")
    kinds = parser.add_subparsers(dest="node_kind", metavar="NODE")
    # `megbed node es` imports only node_es: an ES / UE process never loads the channel emulator (nor needs it
    # installed). Without a known kind (--help) every module is imported, a missing extra shown in its place.
    argv = list(REQUESTED_ARGV)
    kind = next((a for a in argv[argv.index("node") + 1:] if not a.startswith("-")), None) if "node" in argv else None
    wanted = [m for m in NODE_MODULES if m.rsplit("_", 1)[-1] == kind or (kind == "channel" and m == CHANNEL)]
    for name in wanted or NODE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name != CHANNEL:
                raise
            message = missing_extra_message("node channel", exc)
            p = kinds.add_parser("channel", help=f"(not installed: {message})", add_help=False)
            p.add_argument("rest", nargs="...")
            p.set_defaults(func=lambda _a, m=message: print(f"megbed: error: {m}") or 2)
            continue
        module.add_node_parser(kinds)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
