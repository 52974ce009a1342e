"""``megbed report RUN_DIR``: figures, tables and a self-contained HTML report of a campaign run.

The report itself is :mod:`analysis` (it reads data); this command hands it what only the runtime has: the FLOP
counter (:mod:`megbed.testbed.ldm.flops`, which builds networks on the meta device) and the embedded default model's folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="build figures and an HTML report of a run directory",
        description="Read RUN_DIR (manifest.json, dataset/part-*.parquet, optional traces/, training logs, images/) "
                    "and write PNG figures, CSV tables and one self-contained report.html into RUN_DIR/report "
                    "(or --out). Prints a short summary.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the campaign's run directory")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--figure", action="append", dest="figures", metavar="NAME",
                   help="draw only this figure (repeatable); see --list-figures")
    p.add_argument("--list-figures", action="store_true", help="list the registered figures and exit")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (default 0)")
    p.add_argument("--bootstrap", type=int, default=4000, metavar="N", help="bootstrap resamples (default 4000)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="diffusers model folder for FLOP counting (default: the one the manifest names)")
    p.add_argument("--no-traces", action="store_true", help="do not read raw power traces")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_figures:
        from megbed.analysis.figures import figures

        for spec in figures():
            print(f"{spec.name:20s} [{spec.section}] needs {', '.join(spec.requires)}: {spec.title}")
        return 0
    from megbed.analysis.load import RunDataError
    from megbed.analysis.report import build_report
    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.cli.main import CliError
    from megbed.testbed.ldm import flops

    try:
        result = build_report(args.run_dir, args.out, figure_names=args.figures, seed=args.seed,
                              n_boot=args.bootstrap, model_dir=args.model_dir, with_traces=not args.no_traces,
                              flop_counter=flops, named_models={"default": default_model_dir()})
    except (RunDataError, ValueError) as exc:  # unusable run directory, unknown figure names
        raise CliError(str(exc)) from exc
    print(result.summary)
    return 0 if result.ok else 1
