"""``megbed node orchestrator``: run a campaign against nodes already running (on this or other hosts).

Example (ES on host A, broker on B, UE on C)::

    megbed node orchestrator campaign.yaml --out runs/remote1 --es tcp://A:5555 --ue tcp://C:5557 \\
        --channel-pub tcp://B:5558

The addresses override the spec's ``nodes`` section; everything else (grid, order, retries, references) is as in
``megbed campaign run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_node_parser(kinds) -> None:
    p = kinds.add_parser("orchestrator", help="run a campaign against running nodes (heartbeats, clock sync, rows)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="campaign YAML")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--es", required=True, help="the ES's ROUTER address (direct, not the broker)")
    p.add_argument("--ue", action="append", required=True, help="a UE's control address (repeatable)")
    p.add_argument("--channel-pub", default=None, help="the broker's PUB address (delivery records)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megbed.testbed.campaign.runner import CampaignRunner
    from megbed.testbed.campaign.spec import load_spec
    from megbed.testbed.cli.campaign import print_summary, wrap_errors

    with wrap_errors():
        spec = load_spec(args.spec)
        runner = CampaignRunner(spec, args.out, progress=not args.no_progress,
                                addresses={"es": args.es, "ue": args.ue, "channel_pub": args.channel_pub})
        summary = runner.run()
    return print_summary(summary)
