"""Open a report in a real headless Chromium: take a screenshot and check that every figure decoded.

Two runs of the browser, each with a fresh profile (``--user-data-dir``) and no network services:

1. ``--dump-dom`` on a *copy* of the report with a small script appended that, on the page's ``load`` event,
   records each ``<img>``'s ``naturalWidth`` / ``naturalHeight`` into the DOM; the dumped DOM is parsed here.
   An image that failed to decode has a natural width of 0.
2. ``--screenshot`` of the report itself, whose pixels are checked for content (not blank, not one colour).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--mute-audio")
CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (im) {
    out.push({alt: im.alt, figure: im.getAttribute('data-figure'), w: im.naturalWidth, h: im.naturalHeight,
              complete: im.complete});
  });
  var pre = document.createElement('pre');
  pre.id = 'megbed-img-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


class BrowserError(RuntimeError):
    """Chromium could not be run or produced nothing."""


@dataclass
class BrowserCheck:
    """What the browser saw.

    Attributes
    ----------
    images : list of dict
        Per ``<img>``: ``alt``, ``figure`` (the report's figure name or None), ``w``, ``h`` (natural size, px).
    screenshot : Path
        The PNG screenshot.
    screenshot_std : float
        Standard deviation of the screenshot's grey levels (0-255); ~0 for a blank page.
    non_white_fraction : float
        Share of pixels that are not near-white.
    problems : list of str
        Empty when the page rendered its figures.
    """

    images: list[dict]
    screenshot: Path
    screenshot_std: float
    non_white_fraction: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def figures_decoded(self) -> int:
        return sum(1 for im in self.images if im.get("figure") and im.get("w", 0) > 0)


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="megbed-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"{browser} did not finish within {timeout_s:.0f} s") from exc


def image_stats(png: Path) -> tuple[float, float, tuple[int, int]]:
    """Grey-level standard deviation, non-white pixel share and size of a PNG."""
    from PIL import Image

    with Image.open(png) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    return float(grey.std()), float((grey < 235).mean()), (grey.shape[1], grey.shape[0])


def check_report(html_path: str | Path, screenshot: str | Path, *, browser: str | None = None,
                 window: tuple[int, int] = (1200, 2400), timeout_s: float = 120.0,
                 expected_figures: int | None = None) -> BrowserCheck:
    """Render ``html_path`` in headless Chromium; see the module docstring.

    Parameters
    ----------
    html_path : path
        The report.
    screenshot : path
        Where to write the screenshot (PNG).
    browser : str, optional
        Browser executable (default: the first of :data:`BROWSERS` on PATH).
    window : (int, int)
        Viewport width and height (px) of the screenshot.
    timeout_s : float
        Per browser run.
    expected_figures : int, optional
        Figures that must have decoded (default: every ``<img data-figure>`` of the page).

    Raises
    ------
    BrowserError
        No browser, or it produced no DOM / no screenshot.
    """
    browser = browser or find_browser()
    if browser is None:
        raise BrowserError(f"no Chromium-family browser on PATH (tried {', '.join(BROWSERS)})")
    html_path = Path(html_path).resolve()
    screenshot = Path(screenshot).resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="megbed-report-check-") as tmp:
        probe = Path(tmp) / "probe.html"
        text = html_path.read_text(encoding="utf-8")
        text = text.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in text else text + CHECK_SCRIPT
        probe.write_text(text, encoding="utf-8")
        dom = _run(browser, ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], timeout_s)
    m = re.search(r'<pre id="megbed-img-check">(.*?)</pre>', dom.stdout, re.S)
    if not m:
        raise BrowserError(f"{browser} --dump-dom returned no image record (rc {dom.returncode}): "
                           f"{dom.stderr.strip()[-800:]}")
    import html as _html

    images = json.loads(_html.unescape(m.group(1)))
    screenshot.unlink(missing_ok=True)
    shot = _run(browser, [f"--window-size={window[0]},{window[1]}", f"--screenshot={screenshot}",
                          "--virtual-time-budget=10000", html_path.as_uri()], timeout_s)
    if not screenshot.is_file():
        raise BrowserError(f"{browser} wrote no screenshot (rc {shot.returncode}): {shot.stderr.strip()[-800:]}")
    std, non_white, size = image_stats(screenshot)
    problems = []
    figs = [im for im in images if im.get("figure")]
    broken = [im.get("figure") for im in figs if not im.get("w")]
    if broken:
        problems.append(f"figures that did not decode: {broken}")
    want = expected_figures if expected_figures is not None else len(figs)
    if sum(1 for im in figs if im.get("w")) < want:
        problems.append(f"{sum(1 for im in figs if im.get('w'))} figures decoded, expected {want}")
    if want == 0:
        problems.append("the page has no figure")
    if std < 10 or non_white < 0.02:
        problems.append(f"the screenshot looks blank (grey std {std:.1f}, non-white {non_white:.1%})")
    if size != window:
        problems.append(f"screenshot is {size[0]}x{size[1]} px, asked for {window[0]}x{window[1]}")
    return BrowserCheck(images=images, screenshot=screenshot, screenshot_std=std, non_white_fraction=non_white,
                        problems=problems)
