"""``megbed keys generate DIR``: CURVE key pairs for the testbed's nodes and the folder of authorised keys.

Then start every node with ``--keys DIR`` (and the broker with its ``--curve-*`` flags pointing into DIR); a peer
whose public key is not in ``DIR/authorized`` -- or that does not speak CURVE -- is refused at the handshake.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megbed.testbed.cli.main import CliError


def register(sub) -> None:
    p = sub.add_parser("keys", help="CURVE keys for authenticated node connections", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    g = verbs.add_parser("generate", help="create key pairs and the authorised-keys folder")
    g.add_argument("dir", type=Path)
    g.add_argument("--names", nargs="+", default=None,
                   help="node names (default: es ue channel orchestrator); add ue1 ue2 ... for more UEs")
    g.add_argument("--force", action="store_true", help="replace existing keys")
    g.set_defaults(func=_generate)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _generate(args: argparse.Namespace) -> int:
    from megbed.testbed.nodes.keys import DEFAULT_NAMES, generate

    try:
        made = generate(args.dir, tuple(args.names or DEFAULT_NAMES), overwrite=args.force)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # unwritable, under a file, a file in the way, disk full: one line naming the place
        if exc.errno is None:  # the keys module's own message (a key exists and --force is not given)
            raise CliError(str(exc)) from exc
        where = exc.filename or args.dir
        raise CliError(f"cannot write keys into {args.dir}: {where}: {exc.strerror or exc}") from None
    for name, (public, secret) in made.items():
        print(f"{name}: {public} (public), {secret} (secret)")
    print(f"authorised public keys: {args.dir / 'authorized'}")
    return 0
