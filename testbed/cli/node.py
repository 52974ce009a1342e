"""``megbed node KIND``: run one testbed process (es, ue, channel broker, orchestrator).

Each module in ``NODE_MODULES`` exposes ``add_node_parser(node_subparsers)`` adding its node kind.
"""

from __future__ import annotations

import importlib

NODE_MODULES: list[str] = [
    "testbed.cli.node_es",
    "testbed.cli.node_ue",
    "testbed.cli.node_orchestrator",
    "channel_emu.cli",
]


def register(sub) -> None:
    parser = sub.add_parser("node", help="run one testbed node process (es, ue, channel, orchestrator)")
    kinds = parser.add_subparsers(dest="node_kind", metavar="NODE")
    for name in NODE_MODULES:
        importlib.import_module(name).add_node_parser(kinds)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
