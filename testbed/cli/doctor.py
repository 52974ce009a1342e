"""``megbed doctor --role es|ue|channel``: the board's readiness checklist (see :mod:`megbed.testbed.doctor`).

Exit status 0 when nothing failed (warnings allowed), 1 otherwise; ``--json`` prints the result for scripts.
``megbed doctor --serve-clock tcp://0.0.0.0:5560`` answers clock-sync exchanges (on the orchestrator host) until
interrupted, so that a board's ``--orchestrator tcp://HOST:5560`` can measure its offset before a campaign.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check that this board is ready for its role (torch, model, probes, ...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("es", "ue", "channel"), default=None, help="the node role to check for")
    p.add_argument("--profile", default=None, help="this board's firmware profile (probes, settings to verify)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded default model)")
    p.add_argument("--plans", default=None, metavar="PLAN,...",
                   help="plans the node will serve (default: UE meg; ES meg,hybrid)")
    p.add_argument("--decoder", default=None, help="the UE's decoder: base, distilled or auto")
    p.add_argument("--device", default=None, help="torch device the node will use (default: cuda if usable)")
    p.add_argument("--bind", default=None, help="address the node will bind (default: the role's default)")
    p.add_argument("--keys", type=Path, default=None, help="CURVE keys folder the node will use")
    p.add_argument("--orchestrator", default=None, metavar="ADDR",
                   help="clock-sync responder on the orchestrator host (megbed doctor --serve-clock) or a node")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sysfs-root", type=Path, default=Path("/"), help="read sysfs under this root (recorded boards)")
    p.add_argument("--command-outputs", type=Path, default=None,
                   help="JSON {command: stdout} answering the profile's commands (recorded boards)")
    p.add_argument("--serve-clock", default=None, metavar="ADDR",
                   help="instead of checking: answer clock-sync exchanges on ADDR until interrupted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megbed.testbed.cli.main import CliError

    if args.serve_clock:
        return _serve_clock(args.serve_clock)
    if args.role is None:
        raise CliError("--role es|ue|channel is required (or --serve-clock ADDR)")
    from megbed.testbed.doctor import DoctorOptions, report, run_checks

    plans = None if not args.plans else [p.strip() for p in args.plans.split(",") if p.strip()]
    opts = DoctorOptions(role=args.role, profile=args.profile, model=args.model, plans=plans, decoder=args.decoder,
                         device=args.device, bind=args.bind, keys=args.keys, orchestrator=args.orchestrator,
                         sysfs_root=args.sysfs_root, command_outputs=args.command_outputs)
    checks = run_checks(opts)
    result = report(checks)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for check in checks:
            print(check.line())
        c = result["counts"]
        verdict = "ready" if result["ok"] else "NOT ready"
        print(f"\n{args.role.upper()} {verdict}: {c['ok']} ok, {c['warn']} warnings, {c['fail']} failed, "
              f"{c['skip']} skipped")
    return 0 if result["ok"] else 1


def _serve_clock(address: str) -> int:
    import time

    from megbed.measurements.clocksync import ClockSyncResponder

    responder = ClockSyncResponder(address).start()
    print(f"answering clock sync on {responder.address} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        responder.stop()
    return 0
