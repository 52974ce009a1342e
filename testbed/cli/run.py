"""``megbed run`` (what ``make run`` calls): the whole testbed on this machine, end to end.

1. starts ES, channel broker and UE as separate processes on 127.0.0.1;
2. runs the default campaign (``campaigns/default.yaml``; MEG vs CEG vs UE-local on the embedded default model)
   into ``runs/<id>/`` -- dataset, manifest, images;
3. renders the analysis report (``megbed report``) when the analysis package is installed;
4. trains the policy briefly on the new dataset and evaluates it (when the policy package is installed);
5. prints latency and energy per scheme and MEG's change vs CEG and vs UE-local in %.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from megbed.testbed.cli.main import CliError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO / "campaigns" / "default.yaml"


def register(sub) -> None:
    p = sub.add_parser("run", help="local ES + broker + UE, default campaign, report, policy, summary (make run)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help=f"campaign YAML (default {DEFAULT_SPEC})")
    p.add_argument("--model", type=Path, default=None, help="model folder instead of the spec's")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of run directories (default runs)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default RUNS/<timestamp>-<name>)")
    p.add_argument("--engine", choices=("ldm", "synthetic"), default="ldm", help=argparse.SUPPRESS)
    p.add_argument("--no-report", action="store_true", help="skip the analysis report")
    p.add_argument("--no-policy", action="store_true", help="skip the policy's short training and evaluation")
    # 180 s: the multipliers of a short run still swing; more rounds give the kept-within-limits rule its chance.
    p.add_argument("--policy-seconds", type=_seconds, default=180.0, help="training budget of the policy (s, > 0)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (checked before the campaign runs, not when its policy step starts)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def _load(args: argparse.Namespace):
    from megbed.testbed.campaign.spec import SpecError, load_spec, read_spec_yaml, validate_spec

    try:
        if args.model is None:
            return load_spec(args.spec)
        data = read_spec_yaml(args.spec)
        if isinstance(data, dict):
            data["model"] = str(args.model.resolve())
        return validate_spec(data, base_dir=args.spec.resolve().parent, source=str(args.spec))
    except SpecError as exc:
        hint = ""
        if "model" in str(exc) and args.model is None:
            hint = "\n(the embedded default model is not installed; pass --model DIR with a diffusers folder)"
        raise CliError(f"{exc}{hint}") from exc
    except OSError as exc:
        raise CliError(f"cannot read {args.spec}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from megbed.testbed.campaign.baselines import print_summary, scheme_summary
    from megbed.testbed.campaign.runner import CampaignError, CampaignRunner

    console = Console()
    spec = _load(args)
    out = args.out or run_dir_under(args.runs, f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}")
    console.print(f"[bold]megbed run[/]: campaign {spec.name} ({len(spec.requests())} requests) -> {out}")
    try:
        summary = CampaignRunner(spec, out, engine=args.engine, progress=not args.no_progress).run()
    except CampaignError as exc:
        raise CliError(str(exc)) from exc
    console.print(f"campaign: {summary.ok} ok, {summary.failed} failed in {summary.wall_s:.0f} s")
    if summary.ok == 0:
        raise CliError(f"no request succeeded; see the node logs in {out / 'logs'}")
    extras: dict[str, str] = {}
    if not args.no_report:
        extras["report"], matched = _report(out)
        if matched:
            # The comparisons at matched quality are the report's headline: shown beside the pooled table.
            extras["matched_quality"] = "\n".join(line.strip() for line in matched)
    if not args.no_policy:
        extras["policy"] = _policy(out, args.policy_seconds)
    table = scheme_summary(out)
    (out / "summary.json").write_text(json.dumps({"campaign": summary.to_dict(), "schemes": table, **extras},
                                                 indent=1, default=str))
    print_summary(table, console)
    for key, value in extras.items():
        console.print(f"{key}: {value}")
    if summary.stopped_early:
        console.print(f"[red]stopped early[/]: {summary.stopped_early}")
        return 1
    return 0


def run_dir_under(runs: Path, name: str) -> Path:
    """``runs / name``, refusing any name that would leave ``runs`` (the spec validates names; this is the backstop).

    Raises
    ------
    CliError
        ``name`` is not one plain path component.
    """
    out = runs / name
    if Path(name).name != name or name in (".", "..") or out.resolve().parent != runs.resolve():
        raise CliError(f"run name {name!r} would write outside --runs {runs}")
    return out


def _report(out: Path) -> tuple[str, list[str]]:
    """The report's HTML path (or why it failed) and its matched-quality comparison lines."""
    # `megbed run` needs the 'all' extra (checked before it starts), so analysis and the policy are importable here
    from megbed.analysis.report import build_report
    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.ldm import flops

    try:
        result = build_report(out, flop_counter=flops, named_models={"default": default_model_dir()})
    except Exception as exc:  # noqa: BLE001 - the measurement is done and kept; say why the report is missing
        log.exception("report failed")
        return f"failed: {type(exc).__name__}: {exc}", []
    html = getattr(result, "html", None) or getattr(result, "html_path", None)
    return str(html or result), list(result.matched)


def _policy(out: Path, seconds: float) -> str:
    from megbed.testbed.policy.quick import quick_train_and_evaluate

    try:
        res = quick_train_and_evaluate(out, max_wall_s=seconds)
    except Exception as exc:  # noqa: BLE001 - as above: the dataset stands on its own
        log.exception("policy training failed")
        return f"failed: {type(exc).__name__}: {exc}"
    lines = list(res.get("summary_lines") or [])
    if not res.get("within_limits", False):
        train = res.get("train", {})
        lines.append(f"  the policy did NOT end within its limits after {train.get('steps', '?')} steps "
                     f"({train.get('wall_s', math.nan):.0f} s of a {train.get('budget_s', seconds):.0f} s budget; "
                     "--policy-seconds trains longer)")
    lines.append(f"  details in {res.get('out_dir')}")
    return "\n".join(lines)
