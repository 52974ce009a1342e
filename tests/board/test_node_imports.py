"""Must-show (c): node code is Python 3.10 compatible (vermin), node entry points import nothing of the channel
emulator, analysis, the policy or model training, and a node-install user gets one line naming the missing extra."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from board_helpers import REPO

# Everything a node (and megbed doctor) runs, plus the rest of the project: requires-python is >= 3.10 throughout.
PACKAGES = ("megwire", "firmware_profiles", "measurements", "testbed", "channel_emu", "analysis", "testing")
# scipy is absent from the list: diffusers imports it by itself when it is installed (scipy.stats, for some
# schedulers), and works without it -- the node-install test (a) serves requests with no scipy installed.
FORBIDDEN = ("megbed.channel_emu", "megbed.analysis", "megbed.testbed.policy", "megbed.testbed.modeltrain", "megbed.testbed.distill", "sionna", "numba",
             "matplotlib", "gymnasium", "pandas", "pyarrow", "pytorch_msssim")
# The link vocabulary and ranges a node checks requests against (pure Python, no Sionna): one definition, which the
# broker uses too. The package's __init__ is lazy, so importing it pulls nothing else of the emulator.
ALLOWED = ("megbed.channel_emu", "megbed.channel_emu.config")


def _vermin() -> list[str]:
    exe = shutil.which("vermin", path=str(REPO / ".venv" / "bin")) or shutil.which("vermin")
    if exe:
        return [exe]
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    return [sys.executable, "-m", "vermin"]


def test_vermin_says_python_310():
    out = subprocess.run([*_vermin(), "--no-tips", "-t=3.10-", "--violations", "--eval-annotations",
                          *(str(REPO / p) for p in PACKAGES)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


# Runs a whole node entry point in-process (no sockets): parse `megbed node es|ue`, build the engines exactly as the
# node commands do, serve one MEG and one hybrid request, run the doctor; then list forbidden modules imported.
PROBE = r"""
import sys
from megbed.testbed.cli.main import REQUESTED_ARGV, build_parser
from megbed.testbed.cli import node_common as C
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request
engines = {}
for role in ("es", "ue"):
    argv = ["node", role, "--probe", "none", "--idle-s", "0", "--plans", "meg,hybrid"]
    REQUESTED_ARGV[:] = argv
    args = build_parser("node").parse_args(argv)
    engines[role] = C.build_engine(args, role=role)
for k in (3, 1):
    spec = Request(request_id=f"r{k}", scheme="meg", prompt="a cat", seed=1, n_steps=3, es_steps=k,
                   link_model="awgn", tx_mode="analog", distance_m=20.0, snr_db_set=None, height_px=64, width_px=64)
    engines["ue"].select_decoder("", spec.request_id)
    engines["ue"].ue_receive(engines["es"].es(spec, StageRecorder("es")), StageRecorder("ue"))
from megbed.testbed.doctor import DoctorOptions, run_checks
run_checks(DoctorOptions(role="ue", bind="tcp://127.0.0.1:0"))
bad = sorted({m for m in sys.modules if (m.split(".")[0] in FORBIDDEN or m.startswith(FORBIDDEN))
              and m not in ALLOWED})
print("FORBIDDEN:", bad)
"""


def test_node_entry_points_import_nothing_of_the_other_parts():
    code = f"FORBIDDEN = {FORBIDDEN!r}\nALLOWED = {ALLOWED!r}\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FORBIDDEN: []" in out.stdout, out.stdout[-2000:]


BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None\nfrom megbed.testbed.cli.main import main\nsys.exit(main({argv!r}))"


@pytest.mark.parametrize("argv, mods, extra", [
    (["channel", "simulate"], ("sionna", "numba", "scipy"), "channel"),
    (["train", "--help"], ("gymnasium",), "policy"),
    (["report", "somewhere"], ("matplotlib", "pandas", "pyarrow", "scipy"), "analysis"),
    (["node", "channel"], ("sionna", "numba", "scipy"), "channel"),
])
def test_node_install_user_gets_one_line_naming_the_extra(argv, mods, extra):
    code = BLOCK.format(mods=mods, argv=argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    text = (out.stderr + out.stdout).strip()
    assert out.returncode == 2, text[-2000:]
    assert "Traceback" not in text and f"megbed[{extra}]" in text, text[-2000:]
    assert len([line for line in text.splitlines() if "megbed[" in line]) == 1


def test_help_lists_commands_whose_extra_is_missing():
    code = BLOCK.format(mods=("sionna", "numba", "gymnasium", "matplotlib", "pandas"), argv=["--help"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "doctor" in out.stdout and "not installed" in out.stdout
