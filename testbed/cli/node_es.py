"""``megbed node es``: the edge-server process (ROUTER for UEs, the broker and the orchestrator)."""

from __future__ import annotations

import argparse

from megbed.testbed.cli import node_common as C
from megbed.testbed.nodes.es import DEFAULT_ES_BIND


def add_node_parser(kinds) -> None:
    p = kinds.add_parser("es", help="edge server: answers UE requests with handoffs (MEG) or images (CEG)",
                         description=__doc__)
    p.add_argument("--bind", default=DEFAULT_ES_BIND, help=f"ROUTER address to bind (default {DEFAULT_ES_BIND})")
    C.add_common_flags(p, "es")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megbed.testbed.nodes.es import EsNode

    C.check_bind(args.bind)
    profile = C.load_profile_arg(args)
    engine = C.build_engine(args, role="es")
    meter, info = C.build_meter(args, profile)
    node = EsNode(engine, meter=meter, name=args.name, bind=args.bind, curve=C.server_curve(args, "es"),
                  limits=C.limits(args), info=info, bounds=C.bounds(args, engine))
    return C.serve(node, meter)
