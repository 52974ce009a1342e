"""``megbed campaign run SPEC --out DIR`` and ``megbed campaign resume DIR``; ``megbed campaign check SPEC``;
``megbed campaign schema [--link] [--out PATH]`` writes the JSON Schema of campaign (or link) files for editors.

``run`` validates the spec completely (every problem listed, each naming its key), starts the nodes when the spec
says ``nodes: local`` (ES, channel broker and UE as processes on 127.0.0.1), and sweeps the grid in a seeded random
order with a progress bar. ``resume`` continues an interrupted run: completed requests are skipped, failed ones tried
again, nothing already written is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from megbed.testbed.cli.main import CliError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("campaign", help="run, resume or check a measurement campaign", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    r = verbs.add_parser("run", help="validate SPEC and run it into --out DIR")
    r.add_argument("spec", type=Path)
    r.add_argument("--out", type=Path, required=True, help="run directory to create")
    r.add_argument("--engine", choices=("ldm", "synthetic"), default="ldm",
                   help="local nodes' engine (synthetic: no model, harness measurements)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run)
    s = verbs.add_parser("resume", help="continue the campaign in DIR (completed requests skipped)")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--engine", choices=("ldm", "synthetic"), default="ldm")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=resume)
    c = verbs.add_parser("check", help="validate SPEC and print its grid size (runs nothing)")
    c.add_argument("spec", type=Path)
    c.set_defaults(func=check)
    j = verbs.add_parser("schema", help="write the JSON Schema (Draft 2020-12) of campaign files (--link: of link "
                                        "files) to stdout or --out PATH")
    j.add_argument("--link", action="store_true", help="the link configuration's schema (campaign link_config files)")
    j.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    j.set_defaults(func=schema)
    p.set_defaults(func=lambda args: p.print_help() or 2)


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """User-facing errors (bad spec, unreachable nodes) as CliError: one clear message, no traceback."""
    from megbed.testbed.campaign.runner import CampaignError
    from megbed.testbed.campaign.spec import SpecError

    try:
        yield
    except (SpecError, CampaignError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # a file system refusal not foreseen above: one line naming the file, no traceback
        where = f"{str(exc.filename)[:200]}: " if exc.filename else ""
        raise CliError(" ".join(f"{where}{exc.strerror or exc}".split())[:500]) from exc


def print_summary(summary) -> int:
    print(f"run {summary.run_id}: {summary.ok} ok, {summary.failed} failed, {summary.skipped} already done, "
          f"{summary.retried} retried, of {summary.total} requests in {summary.wall_s:.0f} s -> {summary.run_dir}")
    for line in summary.failures[:10]:
        print(f"  failed: {line}")
    if summary.stopped_early:
        print(f"stopped early: {summary.stopped_early}")
        return 1
    return 0 if summary.failed == 0 else 1


def run(args: argparse.Namespace) -> int:
    from megbed.testbed.campaign.runner import CampaignRunner
    from megbed.testbed.campaign.spec import load_spec

    with wrap_errors():
        spec = load_spec(args.spec)
        summary = CampaignRunner(spec, args.out, engine=args.engine, progress=not args.no_progress).run()
    return print_summary(summary)


def resume(args: argparse.Namespace) -> int:
    from megbed.testbed.campaign.runner import resume_campaign

    with wrap_errors():
        summary = resume_campaign(args.run_dir, engine=args.engine, progress=not args.no_progress)
    return print_summary(summary)


def check(args: argparse.Namespace) -> int:
    from megbed.testbed.campaign.spec import load_spec

    with wrap_errors():
        spec = load_spec(args.spec)
    points = spec.points()
    by = {s: sum(p.scheme == s for p in points) for s in spec.schemes}
    print(f"{args.spec}: valid; {len(points)} grid points ({', '.join(f'{k} {v}' for k, v in by.items())}), "
          f"{len(spec.requests())} requests")
    return 0


def schema_text(link: bool = False) -> str:
    """The JSON Schema of campaign files (``link``: of link files) as the repository commits it."""
    import json

    if link:
        from megbed.channel_emu.config import link_json_schema

        data = link_json_schema()
    else:
        from megbed.testbed.campaign.spec_schema import campaign_json_schema

        data = campaign_json_schema()
    return json.dumps(data, indent=2) + "\n"


def schema(args: argparse.Namespace) -> int:
    text = schema_text(args.link)
    if args.out is None:
        print(text, end="")
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"wrote {args.out}")
    return 0
