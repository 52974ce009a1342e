"""Open a megbed report in headless Chromium, save a screenshot and check that its figures rendered.

    python scripts/report_screenshot.py RUN_DIR_OR_REPORT_HTML [--out shot.png] [--synthetic DIR]

With ``--synthetic DIR`` a synthetic run is written to DIR and reported first (no campaign needed). Exit code 0
when every figure decoded and the screenshot is not blank; 1 otherwise; 2 when no browser is installed
(Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", type=Path, help="run directory (its report/report.html) or an HTML file")
    ap.add_argument("--out", type=Path, default=None, help="screenshot path (default: beside the report)")
    ap.add_argument("--synthetic", type=Path, default=None, help="write a synthetic run here and report it first")
    ap.add_argument("--height", type=int, default=2400, help="viewport height (px)")
    args = ap.parse_args(argv)

    from megbed.analysis.browser import BrowserError, check_report, find_browser

    if find_browser() is None:
        print("no Chromium-family browser on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    if args.synthetic is not None:
        from megbed.analysis.report import build_report
        from megbed.testbed.ldm import flops
        from megbed.testing.ground_truth_run import SyntheticSpec, write_synthetic_run

        t0 = time.perf_counter()
        write_synthetic_run(args.synthetic, SyntheticSpec(images=True))
        result = build_report(args.synthetic, flop_counter=flops)
        print(f"synthetic run and report built in {time.perf_counter() - t0:.1f} s")
        html = result.html_path
    elif args.target is None:
        ap.error("give a run directory / report.html, or --synthetic DIR")
    else:
        html = args.target / "report" / "report.html" if args.target.is_dir() else args.target
    out = args.out or html.with_name("screenshot.png")
    t0 = time.perf_counter()
    try:
        check = check_report(html, out, window=(1200, args.height))
    except BrowserError as exc:
        print(f"browser check failed: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{i['figure']} {i['w']}x{i['h']}" for i in check.images if i.get("figure"))
    print(f"chromium rendered {html} in {time.perf_counter() - t0:.1f} s: {check.figures_decoded} figures decoded "
          f"({sizes})")
    print(f"screenshot {check.screenshot}: grey std {check.screenshot_std:.1f}, non-white {check.non_white_fraction:.1%}")
    for p in check.problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
