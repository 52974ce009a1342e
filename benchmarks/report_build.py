"""Report build time: load, comparison (bootstrap), each figure, HTML, for a synthetic run of a chosen size.

Run: ``python benchmarks/report_build.py [--reps 3] [--n-steps 4 8 12] [--betas 0 0.25 0.5] [--run DIR]``
(``--run`` reports an existing run directory instead). There is no speed goal in the issue; this shows where the
time goes as campaigns grow. The machine's load average is printed: the figures are only as good as the machine
is idle.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-steps", type=int, nargs="+", default=[4, 8, 12])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    ap.add_argument("--bootstrap", type=int, default=4000)
    ap.add_argument("--run", type=Path, default=None, help="report this run directory instead of a synthetic one")
    args = ap.parse_args()

    from megbed.analysis.figures import FigureContext
    from megbed.analysis.html import write_html
    from megbed.analysis.load import load_run
    from megbed.analysis.report import render_figures, summary_text
    from megbed.analysis.tables import comparison
    from megbed.testbed.ldm import flops
    from megbed.testing.ground_truth_run import SyntheticSpec, write_synthetic_run

    print(f"load average {os.getloadavg()}, cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            t0 = time.perf_counter()
            run = write_synthetic_run(Path(tmp) / "run", SyntheticSpec(
                n_steps=tuple(args.n_steps), merge_ratios=tuple(args.betas), repetitions=args.reps, images=True))
            print(f"synthetic run written        {time.perf_counter() - t0:7.2f} s")
        t0 = time.perf_counter()
        data = load_run(run)
        n_trace = 0 if data.traces is None else len(data.traces)
        print(f"load ({len(data.rows)} rows, {len(data.requests)} requests, {n_trace} trace samples) "
              f"{time.perf_counter() - t0:7.2f} s")
        t0 = time.perf_counter()
        comp = comparison(data, n_boot=args.bootstrap)
        print(f"comparison ({len(comp.table)} settings, {args.bootstrap} resamples) {time.perf_counter() - t0:7.2f} s")
        out = Path(tmp) / "report"
        out.mkdir()
        ctx = FigureContext(flop_counter=flops)
        t0 = time.perf_counter()
        figs, skipped, failed = render_figures(data, out, ctx)
        print(f"figures ({len(figs)} drawn, {len(skipped)} skipped, {len(failed)} failed) "
              f"{time.perf_counter() - t0:7.2f} s")
        for f in figs.values():
            print(f"  {f.name:20s} {f.seconds:6.2f} s  {f.path.stat().st_size / 1024:7.0f} KiB")
        t0 = time.perf_counter()
        html = out / "report.html"
        write_html(html, data, comp, figs, skipped, failed, ctx, summary_text(data, comp, figs, skipped, failed, html))
        print(f"html ({html.stat().st_size / 1e6:.2f} MB)         {time.perf_counter() - t0:7.2f} s")


if __name__ == "__main__":
    main()
