"""``megbed profile list | show NAME | verify NAME | apply NAME [--apply]``: firmware profiles on this board.

``verify`` reads the live settings back (never changes anything) and, with ``--run-dir``, records the result in
that run's manifest under ``firmware_profiles[<node>]``; it exits 1 when the live state does not match. ``apply``
prints the commands it would run; only with ``--apply`` (and root, where needed) does it run them, then verifies.
``--sysfs-root DIR`` and ``--command-outputs FILE.json`` read a recorded board instead of this host.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from megbed.testbed.cli.main import CliError


def register(sub) -> None:
    p = sub.add_parser("profile", help="show, verify or apply a firmware profile", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.add_parser("list", help="bundled profiles").set_defaults(func=_list)
    s = verbs.add_parser("show", help="a profile's probes, rails, settings and commands")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_show)
    for verb, helptext in (("verify", "read the live settings back and compare"),
                           ("apply", "run the profile's commands (only with --apply), then verify")):
        v = verbs.add_parser(verb, help=helptext)
        v.add_argument("name", help="profile name, alias or TOML path")
        v.add_argument("--sysfs-root", type=Path, default=Path("/"), help="read files under this root (default /)")
        v.add_argument("--command-outputs", type=Path, default=None,
                       help="JSON {command: stdout} answering commands instead of running them (recorded boards)")
        v.add_argument("--run-dir", type=Path, default=None, help="record the result in this run's manifest")
        v.add_argument("--node", default="local", help="node name in the manifest (default local)")
        v.add_argument("--json", action="store_true")
        if verb == "apply":
            v.add_argument("--apply", action="store_true", help="really run the commands (else: dry run)")
        v.set_defaults(func=_verify if verb == "verify" else _apply)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _load(name: str) -> Any:
    from megbed.firmware_profiles import load_profile

    try:
        return load_profile(name)
    except Exception as exc:  # noqa: BLE001 - ProfileError and I/O errors alike are user errors
        raise CliError(str(exc)) from exc


def _runner(args: argparse.Namespace) -> Any:
    from megbed.firmware_profiles.live import RecordedRunner, subprocess_runner

    if args.command_outputs is None:
        return subprocess_runner
    try:
        return RecordedRunner.from_file(args.command_outputs)
    except (OSError, ValueError) as exc:
        raise CliError(f"--command-outputs {args.command_outputs}: {exc}") from exc


def _record(args: argparse.Namespace, profile: Any, section: dict[str, Any]) -> None:
    if args.run_dir is None:
        return
    from megbed.measurements.manifest import update_manifest

    update_manifest(args.run_dir, firmware_profiles={args.node: {"name": profile.name, **section}})


def _list(args: argparse.Namespace) -> int:
    from megbed.firmware_profiles import list_profiles

    for name in list_profiles():
        prof = _load(name)
        print(f"{name:28s} {prof.kind:9s} {prof.board}")
    return 0


def _show(args: argparse.Namespace) -> int:
    prof = _load(args.name)
    data = prof.to_dict()
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    print(f"{prof.name}: {prof.board} ({prof.kind})\n  {prof.description}")
    print(f"  probes: {' -> '.join(prof.probes.order)}" + (f" (+ {', '.join(prof.probes.extra)})"
                                                           if prof.probes.extra else ""))
    for rail in prof.rails:
        print(f"  rail {rail.label}{' (total)' if rail.total else ''}: {rail.note}")
    for section, values in data["settings"].items():
        print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    for cmd in data["apply"]:
        print(f"  apply: {' '.join(cmd['cmd'])}{'  (root)' if cmd['needs_root'] else ''}  # {cmd['why']}")
    for check in data["verify"]:
        src = check.get("path") or " ".join(check.get("cmd") or [])
        print(f"  verify {check['setting']} = {check['expect']} {check.get('unit', '')} <- {src}")
    return 0


def _print_verify(result: dict[str, Any]) -> None:
    for c in result["checks"]:
        live = "?" if c["live"] is None else c["live"]
        note = f"  ({c['error']})" if c["error"] else ""
        print(f"  {c['status']:10s} {c['setting']}: expect {c['expect']} {c['unit']}, live {live}{note}")
    state = "matches" if result["ok"] else (
        f"DOES NOT MATCH (mismatch: {', '.join(result['mismatches']) or '-'}; "
        f"unreadable: {', '.join(result['unreadable']) or '-'})")
    print(f"profile {result['profile']}: live state {state}")


def _verify(args: argparse.Namespace) -> int:
    from megbed.firmware_profiles.live import verify_live

    prof = _load(args.name)
    result = verify_live(prof, run=_runner(args), sysfs_root=args.sysfs_root)
    _record(args, prof, {"verify": result})
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        _print_verify(result)
    return 0 if result["ok"] else 1


def _apply(args: argparse.Namespace) -> int:
    from megbed.firmware_profiles.live import PrivilegeError, apply_profile, planned_commands

    prof = _load(args.name)
    if not args.apply:
        plan = planned_commands(prof)
        if args.json:
            print(json.dumps({"dry_run": True, "commands": plan}, indent=1))
        else:
            print(f"dry run (add --apply to run): profile {prof.name} would run")
            for c in plan:
                print(f"  {' '.join(c['cmd'])}{'  (root)' if c['needs_root'] else ''}  # {c['why']}")
        return 0
    try:
        result = apply_profile(prof, run=_runner(args), sysfs_root=args.sysfs_root)
    except PrivilegeError as exc:
        raise CliError(str(exc)) from exc
    _record(args, prof, {"apply": result["applied"], "verify": result["verify"]})
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        for c in result["applied"]:
            print(f"  ran {' '.join(c['cmd'])}: exit {c['returncode']}")
        _print_verify(result["verify"])
    return 0 if result["ok"] and result["verify"]["ok"] else 1
