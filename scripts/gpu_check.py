"""The GPU run (issue 18): every GPU figure megbed promises, in one bounded script for a lent GPU machine.

Run it through ``scripts/gpu_check.sh`` (which installs the carried wheels first); see that file's header for the
device-tool command. Steps, each a child process with its own time budget (seconds, on an H100/H200 machine):

====  ===========  ======  =================================================================================
step  name         budget  what (and how the budget was sized)
====  ===========  ======  =================================================================================
0     install         45   carried wheels into a --target dir, --no-deps --no-index (11 wheels, 8 MB: 3 s on
                           the 2-core CPU box)
0     env             30   torch/CUDA/NVML/driver facts; every dependency imported (one torch + diffusers +
                           sionna import: 12.6 s wall on the loaded CPU box)
2     nvml            60   benchmarks/nvml_gpu.py: 2 s period probe + 2 s instant-power polling + 1 s + 2 s
                           idle + a 12 s matmul window + a 50 ms one, with 1 s gaps: 25 s of sleeps and windows, plus the torch start
3     ldm_stages     110   benchmarks/ldm_stages.py --family sdxl at 1024^2 fp16: build 3.4 G params on the GPU,
                           stages x2 repeats, ES denoise N = 4/8/12 (26 SDXL steps at batch 2), handoff bytes for
                           every merge method. Sized from estimates, not measurements (no GPU here): SDXL's
                           ~6.8 TFLOP per CFG step at H100 fp16 rates is well under 1 s a step
4     campaign       170   two local campaigns (ES cuda, UE cpu): the default model (meg/ceg/ue_local, N 4/8/12,
                           beta 0/0.5: 18 requests of a 28 MB model, ~35 % of the step) and the SDXL-shaped one
                           saved to disk (meg/ceg, N 4/8/12, beta 0.5, 512^2 so that the CPU UE's VAE decode stays
                           a few s), each followed by ``megbed report`` (<= 30 s; 9.5 s CPU measured here)
1     gpu_tests       75   ``pytest -m gpu`` on the files that hold gpu tests (4 tests, tiny models; collection
                           dominates: 15.5 s wall on the loaded CPU box)
5     distill         60   ``megbed distill train`` of the default model on cuda (bf16 autocast): cache 16+4
                           prompts, 60 optimiser steps; throughput from its summary.json (the CPU rehearsal at 2
                           steps, 2+1 prompts took 44.7 s wall on the loaded CPU box)
====  ===========  ======  =================================================================================

The steps run in the order of this table (the issue's numbers in the first column): the figures the issue must
show come first, so a run cut short loses the gpu tests and the distillation figure rather than those.

Sum 550 s; the run also has one overall deadline (``--deadline-s``, default 535 s after the start): each step's
timeout is its budget or what is left of the deadline, whichever is smaller, and a step with under 10 s left is
skipped with that reason. A step without CUDA skips its CUDA part with the reason and still runs its CPU side
(the gpu tests are collected and skip, the NVML probe states why it cannot open, the handoff-bytes table is
computed, the campaign specs are validated). ``--rehearse`` also runs the CUDA code paths on the CPU at the
smallest sizes (the stage benchmark on the tiny SDXL model, both campaigns with the ES on the CPU, two distillation
steps: a rehearsal, never a figure; minutes). ``--smoke`` (the smoke test in tests/integration/test_gpu_check.py)
runs only the CPU sides, all steps in one process: ~11 s CPU.

Everything lands in ``OUT/gpu_report.json`` (written after every step, so a killed run keeps what it measured) and
``OUT/gpu_check.log`` (every child's output). The campaign reports are copied to ``OUT/campaign_<name>.html``.
This parent process imports nothing but the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORT_NAME = "gpu_report.json"
LOG_NAME = "gpu_check.log"
SCHEMA_VERSION = 1
# seconds per step (see the module docstring for how each was sized)
BUDGET_S = {"install": 45, "env": 30, "gpu_tests": 75, "nvml": 60, "ldm_stages": 110, "campaign": 170,
            "distill": 60}
# run in this order: the figures the issue must show first (NVML, SDXL step, ES energy, MEG vs CEG), so that a
# run cut short by the deadline loses the gpu tests and the distillation throughput rather than those
STEPS = ("env", "nvml", "ldm_stages", "campaign", "gpu_tests", "distill")
DEFAULT_DEADLINE_S = 535.0
MIN_STEP_S = 10.0
# what pyproject.toml needs that the lent machine's image lacks (KINDS.md's package list); scripts/gpu_wheels.sh
# downloads exactly these
DEPENDENCY_MODULES = {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers",
                      "tokenizers": "tokenizers", "safetensors": "safetensors", "tomesd": "tomesd", "numpy": "numpy",
                      "scipy": "scipy", "pandas": "pandas", "pyarrow": "pyarrow", "matplotlib": "matplotlib",
                      "pyzmq": "zmq", "nvidia-ml-py": "pynvml", "sionna-no-rt": "sionna", "gymnasium": "gymnasium",
                      "rich": "rich", "pyyaml": "yaml", "pytorch-msssim": "pytorch_msssim", "numba": "numba",
                      "smbus2": "smbus2", "pytest": "pytest"}


# ---------------------------------------------------------------------------------------------------------------
# parent: install, run the steps as bounded child processes, merge their JSON
# ---------------------------------------------------------------------------------------------------------------
class Run:
    """One gpu_check run: the report dict, the log file, the deadline."""

    def __init__(self, out: Path, deadline_s: float, rehearse: bool, site: Path | None, smoke: bool = False) -> None:
        self.out = out
        self.smoke = smoke
        self.t0 = time.monotonic()
        self.deadline_s = deadline_s
        self.rehearse = rehearse
        self.site = site
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / LOG_NAME
        self.log = self.log_path.open("a", encoding="utf-8")
        self.report: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "python": sys.version.split()[0], "rehearse": rehearse, "smoke": smoke,
            "deadline_s": deadline_s, "budget_s": dict(BUDGET_S), "steps": {},
        }

    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f} s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left_s(self) -> float:
        return self.deadline_s - (time.monotonic() - self.t0)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(ROOT)] + ([str(self.site)] if self.site else []) + [p for p in [env.get("PYTHONPATH")] if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at run time
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        return env

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        tmp = self.out / (REPORT_NAME + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.out / REPORT_NAME)

    def run_child(self, argv: list[str], timeout_s: float, cwd: Path = ROOT) -> tuple[int | None, float, str]:
        """Run argv with its output appended to the log; rc None = killed at the timeout. Returns rc, wall, tail."""
        self.say("$ " + " ".join(argv))
        t = time.monotonic()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as buf:
            proc = subprocess.Popen(argv, cwd=cwd, env=self.env(), stdout=buf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
            buf.seek(0)
            text = buf.read()
        self.log.write(text)
        self.log.flush()
        return rc, time.monotonic() - t, text[-3000:]

    def run_in_process(self, name: str, step_json: Path) -> tuple[int, float, str]:
        """--smoke only: the step in this process, its output captured into the log."""
        import contextlib
        import io

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        for p in self.env()["PYTHONPATH"].split(os.pathsep)[::-1]:
            if p not in sys.path:
                sys.path.insert(0, p)
        from gpu_check_steps import run_step

        buf = io.StringIO()
        t = time.monotonic()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = run_step(name, step_json, self.out, self.rehearse, self.smoke)
        text = buf.getvalue()
        self.log.write(text)
        self.log.flush()
        return rc, time.monotonic() - t, text[-3000:]

    def step(self, name: str) -> None:
        left = self.left_s()
        budget = BUDGET_S[name]
        rec: dict[str, Any] = {"budget_s": budget}
        if left < MIN_STEP_S:
            rec.update(status="skipped", skip_reason=f"no time left: {left:.0f} s of the {self.deadline_s:.0f} s "
                                                     "deadline remain")
            self.report["steps"][name] = rec
            self.say(f"step {name}: {rec['skip_reason']}")
            self.write()
            return
        timeout = min(budget, left)
        rec["timeout_s"] = round(timeout, 1)
        step_json = self.out / f".step_{name}.json"
        step_json.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--step-json", str(step_json),
                "--out", str(self.out)] + (["--rehearse"] if self.rehearse else []) + (["--smoke"] if self.smoke else [])
        self.say(f"step {name}: budget {budget} s, timeout {timeout:.0f} s")
        if self.smoke:  # one process for all steps (one torch import, not six); no timeout is enforced
            rc, wall, tail = self.run_in_process(name, step_json)
        else:
            rc, wall, tail = self.run_child(argv, timeout)
        got: dict[str, Any] = {}
        if step_json.is_file():
            try:
                got = json.loads(step_json.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                got = {"partial_json_error": str(exc)}
            step_json.unlink()
        if "figures" not in got and got.get("figures_path"):  # killed mid-step: what its benchmark wrote so far
            try:
                got["figures"] = json.loads(Path(got["figures_path"]).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                got["figures_error"] = repr(exc)
        rec.update(got)
        rec["wall_s"] = round(wall, 2)
        if rc is None:
            rec["status"] = "timeout"
            rec["error"] = f"killed after {timeout:.0f} s (budget {budget} s); figures above are what it wrote"
            rec["output_tail"] = tail
        elif rc != 0:
            rec["status"] = "failed"
            rec["error"] = f"exit status {rc}"
            rec["output_tail"] = tail
        else:
            rec.setdefault("status", "ok")
        self.report["steps"][name] = rec
        self.say(f"step {name}: {rec['status']} in {wall:.1f} s" +
                 (f" ({rec.get('skip_reason')})" if rec["status"] == "skipped" else ""))
        self.write()


def _kill_group(proc: subprocess.Popen) -> None:
    """End the child's own process session (it started one), then reap it."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def install(run: Run, wheels: Path, skip: bool) -> None:
    """pip-install the carried wheels into run.site (no index: the lent machine reaches no registry)."""
    rec: dict[str, Any] = {"budget_s": BUDGET_S["install"], "wheels_dir": str(wheels)}
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if skip:
        rec.update(status="skipped", skip_reason="--no-install: using this interpreter's packages as they are")
    elif not found:
        rec.update(status="skipped", skip_reason=f"no wheels in {wheels} (run scripts/gpu_wheels.sh here first and "
                                                 "carry .whl): using this interpreter's packages as they are")
    else:
        assert run.site is not None
        run.site.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                "--no-cache-dir", "--upgrade", "--target", str(run.site), *map(str, found)]
        rc, wall, tail = run.run_child(argv, min(BUDGET_S["install"], run.left_s()))
        rec.update(wheels=[w.name for w in found], install_s=round(wall, 2), target=str(run.site))
        if rc == 0:
            rec["status"] = "ok"
        else:
            rec.update(status="failed" if rc is not None else "timeout", error=f"pip exit status {rc}",
                       output_tail=tail)
    run.report["steps"]["install"] = rec
    run.say(f"install: {rec['status']} {rec.get('skip_reason', '')}".rstrip())
    run.write()


def collect_results(run: Run) -> None:
    """A compact summary of the figures the issue asks for, pulled from the steps (None where not measured)."""
    s = run.report["steps"]
    nvml = s.get("nvml", {}).get("figures") or {}
    long_w = next((w for w in nvml.get("windows", []) if w.get("window") == "long"), {})
    ldm = s.get("ldm_stages", {}).get("figures") or {}
    lat = ldm.get("latency_s", {}) if not ldm.get("tiny") else {}
    med = {k: sorted(v)[len(v) // 2] for k, v in lat.items() if v}
    camp = s.get("campaign", {}).get("campaigns", {})
    gpu = s.get("env", {}).get("gpu_name")
    run.report["commit_as"] = (f"benchmarks/results/gpu_{_slug(gpu)}.json" if gpu else None)
    run.report["summary"] = {
        "gpu": gpu,
        "nvml_counter_period_ms": nvml.get("counter_period_ms"),
        "nvml_instant_field_period_ms": nvml.get("instant_field_period_ms"),
        "nvml_idle_power_w": nvml.get("idle_power_w"),
        "nvml_long_window_s": long_w.get("duration_s"),
        "nvml_integrated_vs_counter_pct": long_w.get("integrated_vs_counter_pct"),
        "nvml_within_2pct": (abs(long_w["integrated_vs_counter_pct"]) <= 2.0
                             if long_w.get("integrated_vs_counter_pct") is not None else None),
        "sdxl_1024_unet_step_s": {k: v for k, v in med.items() if k.startswith("denoise")} or None,
        "sdxl_1024_es_denoise_s": {k: v for k, v in med.items() if k.startswith("ES denoise")} or None,
        "sdxl_1024_vae_decode_s": next((v for k, v in med.items() if k.startswith("decode")), None),
        "campaign_es_energy_mj_by_n": {name: c.get("es_energy_mj_by_n") for name, c in camp.items()} or None,
        "campaign_meg_vs_ceg_latency_s": {name: c.get("latency_s_by_scheme_n") for name, c in camp.items()} or None,
        "distill_samples_per_s": (s.get("distill", {}).get("figures") or {}).get("samples_per_s"),
        "step_status": {k: v.get("status") for k, v in s.items()},
    }


def _slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3`` (a results file name)."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(p for p in out.split("-") if p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_check"),
                    help="where gpu_report.json and the log go (default $OUT, else runs/gpu_check)")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels to install (default .whl)")
    ap.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "megbed-site",
                    help="pip --target folder for the wheels (put on PYTHONPATH of every step)")
    ap.add_argument("--no-install", action="store_true", help="skip the install step")
    ap.add_argument("--rehearse", action="store_true", help="CPU rehearsal sizes (tiny models)")
    ap.add_argument("--smoke", action="store_true",
                    help="--rehearse, lighter still: all steps in this one process (no per-step timeout), the gpu "
                         "tests only collected, the bytes table only, the specs only validated (make test's smoke "
                         "test)")
    ap.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S, help="overall wall-clock limit")
    ap.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS), help="run only these steps")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--step-json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.step:
        from gpu_check_steps import run_step  # noqa: PLC0415 - child only: imports torch and the project

        return run_step(args.step, args.step_json, args.out, args.rehearse, args.smoke)

    run = Run(args.out.resolve(), args.deadline_s, args.rehearse or args.smoke, args.site, args.smoke)
    run.say(f"gpu_check: out {run.out}, deadline {args.deadline_s:.0f} s, rehearse {args.rehearse}")
    install(run, args.wheels, args.no_install)
    for name in STEPS:
        if name in args.steps:
            run.step(name)
        else:
            run.report["steps"][name] = {"status": "skipped", "skip_reason": "not selected (--steps)",
                                         "budget_s": BUDGET_S[name]}
    collect_results(run)
    run.write()
    run.say(f"done in {time.monotonic() - run.t0:.1f} s: {run.out / REPORT_NAME}")
    for name in ("campaign_default.html", "campaign_sdxl.html"):
        if (run.out / name).is_file():
            run.say(f"report: {run.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
