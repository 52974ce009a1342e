"""``megbed node ue``: the user-equipment process (control ROUTER for the orchestrator, DEALER to the ES)."""

from __future__ import annotations

import argparse
from pathlib import Path

from megbed.testbed.cli import node_common as C
from megbed.testbed.nodes.ue import DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_UE_BIND, DEFAULT_UE_ES


def add_node_parser(kinds) -> None:
    p = kinds.add_parser("ue", help="user equipment: requests from the ES and finishes the image",
                         description=__doc__)
    p.add_argument("--bind", default=DEFAULT_UE_BIND,
                   help=f"control ROUTER address to bind (default {DEFAULT_UE_BIND})")
    p.add_argument("--es", default=DEFAULT_UE_ES,
                   help=f"where requests go: the channel broker's frontend or the ES (default {DEFAULT_UE_ES})")
    p.add_argument("--es-key", type=Path, default=None,
                   help="public key of the server at --es (default KEYS/es.key; the broker's when it has its own)")
    p.add_argument("--decoder", default=None,
                   help="the UE's default decoder: base, distilled (<model>/ue_decoder), auto (base for clean "
                        "latents, distilled for noisy or heavily merged ones) or a decoder folder "
                        "(a request naming another gets that one)")
    p.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                   help="longest wait for the ES's answer (s)")
    C.add_common_flags(p, "ue")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megbed.testbed.nodes.ue import UeNode

    C.check_bind(args.bind)
    profile = C.load_profile_arg(args)
    engine = C.build_engine(args, decoder=args.decoder, role="ue")
    meter, info = C.build_meter(args, profile)
    node = UeNode(engine, es_address=args.es, meter=meter, name=args.name, bind=args.bind,
                  curve=C.server_curve(args, "ue"), es_curve=C.client_curve(args, "ue", "es", args.es_key),
                  limits=C.limits(args), request_timeout_s=args.request_timeout_s, info=info,
                  bounds=C.bounds(args, engine))
    return C.serve(node, meter)
