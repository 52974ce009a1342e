"""The steps of scripts/gpu_check.py, each run in its own child process (``gpu_check.py --step NAME``).

Each step writes its record (``status``, ``skip_reason`` when skipped, ``figures``) to ``--step-json``, and saves it
early and after each part, so a step the parent kills at its timeout still hands back what it measured. Without
CUDA every step runs its CPU side and skips the CUDA part with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import BUDGET_S, DEPENDENCY_MODULES  # noqa: E402

NO_CUDA = "no CUDA GPU visible (torch.cuda.is_available() is False)"
WORK = Path(tempfile.gettempdir()) / "megbed-gpu-work"


class Step:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rec: dict[str, Any] = {"status": "running"}
        self.t0 = time.monotonic()
        self.smoke = False
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rec, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.path)

    def left_s(self, budget: float) -> float:
        return budget - (time.monotonic() - self.t0)


def _cuda() -> tuple[bool, Any]:
    import torch

    return bool(torch.cuda.is_available()), torch


def _sub(argv: list[str], timeout_s: float, cwd: Path = ROOT) -> tuple[int | None, str]:
    """A grandchild with its own timeout; its output goes to our stdout (the parent's log)."""
    print("$ " + " ".join(argv), flush=True)
    try:
        p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=max(1.0, timeout_s), errors="replace")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        print(out, flush=True)
        return None, out[-2000:]
    print(p.stdout, flush=True)
    return p.returncode, p.stdout[-2000:]


# --- step env ---------------------------------------------------------------------------------------------------
def step_env(st: Step, rehearse: bool) -> None:
    rec = st.rec
    rec["platform"] = platform.platform()
    deps = {}
    for dist, module in DEPENDENCY_MODULES.items():
        spec = importlib.util.find_spec(module)
        if spec is None:
            deps[dist] = None
            continue
        try:
            from importlib.metadata import version

            deps[dist] = version(dist)
        except Exception:  # noqa: BLE001 - importable but without metadata (a source tree): still present
            deps[dist] = "present"
    rec["dependencies"] = deps
    rec["missing_dependencies"] = [d for d, v in deps.items() if v is None]
    errors = {}
    for module in ("diffusers", "tomesd", "zmq", "sionna.phy", "gymnasium", "pytorch_msssim", "megbed.testbed.ldm.model"):
        try:  # importable is not enough: a wheel built against another numpy/torch fails only here
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - record every broken import, not just the first
            errors[module] = repr(exc)[:500]
    rec["import_errors"] = errors
    cuda, torch = _cuda()
    rec.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=cuda)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        rec.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    try:
        import pynvml

        pynvml.nvmlInit()
        rec["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - report why, never fail the step for it
        rec["driver"] = f"unavailable: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi:
        rc, out = _sub([smi, "-L"], 15)
        rec["nvidia_smi_l"] = out.strip() if rc == 0 else f"nvidia-smi -L failed ({rc})"
    rec["status"] = "ok" if cuda and not errors else ("failed" if errors else "skipped")
    if errors:
        rec["error"] = f"imports failed: {', '.join(errors)}"
    elif not cuda:
        rec["skip_reason"] = f"{NO_CUDA}: facts of the CPU machine recorded"


# --- step 1: gpu-marked tests -----------------------------------------------------------------------------------
def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text(encoding="utf-8", errors="replace"))


def collected_counts(text: str) -> dict[str, int]:
    """``pytest --collect-only -qq`` output (``path.py: N`` per file, or one ``path::test`` id per line) -> counts."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        head, sep, tail = line.rpartition(": ")
        if sep and head.endswith(".py") and tail.isdigit():
            out[head] = out.get(head, 0) + int(tail)
        elif "::" in line and " " not in line:
            f = line.split("::", 1)[0]
            out[f] = out.get(f, 0) + 1
    return out


def _junit(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "cases": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kind, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                reason = (child.get("message") or "")[:300]
        out[kind] += 1
        out["cases"].append({"test": name, "outcome": kind, "reason": reason, "time_s": float(case.get("time", 0))})
    return out


def step_gpu_tests(st: Step, rehearse: bool) -> None:
    rec = st.rec
    files = gpu_test_files()
    rec["files"] = files
    if not files:
        rec.update(status="skipped", skip_reason="no test file holds a gpu-marked test")
        return
    cuda, _ = _cuda()
    xml = WORK / "gpu_tests.xml"
    WORK.mkdir(parents=True, exist_ok=True)
    xml.unlink(missing_ok=True)
    if st.smoke and not cuda:
        rc, tail = _sub([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "--collect-only", "-p", "no:cacheprovider",
                         *files], st.left_s(BUDGET_S["gpu_tests"]) - 5)
        per_file = collected_counts(tail)
        n = sum(per_file.values())
        rec["figures"] = {"collected_per_file": per_file, "collected": n}
        if rc != 0:
            rec.update(status="failed", error=f"pytest --collect-only exit status {rc}", output_tail=tail)
            return
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: {n} gpu tests collected (smoke: not run)")
        return
    rc, tail = _sub([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                     f"--junitxml={xml}", *files], st.left_s(BUDGET_S["gpu_tests"]) - 5)
    rec["pytest_rc"] = rc
    if xml.is_file():
        rec["figures"] = _junit(xml)
    if rc is None:
        rec.update(status="timeout", error="pytest killed at the step's budget", output_tail=tail)
    elif not cuda:
        n = rec.get("figures", {}).get("skipped", 0)
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: {n} gpu tests collected and skipped")
    else:
        rec["status"] = "ok" if rc == 0 else "failed"
        if rc != 0:
            rec["output_tail"] = tail


# --- step 2: NVML -----------------------------------------------------------------------------------------------
def step_nvml(st: Step, rehearse: bool) -> None:
    rec = st.rec
    from megbed.measurements.probes.base import ProbeUnavailable
    from megbed.measurements.probes.nvml import NvmlProbe

    try:
        probe = NvmlProbe((0,), measure_period_s=0)
        rec["device"] = probe.device_names[0]
        probe.close()
    except ProbeUnavailable as exc:
        rec.update(status="skipped", skip_reason=f"NVML probe unavailable: {exc}")
        return
    cuda, _ = _cuda()
    if not cuda:
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: NVML opened but there is no CUDA workload to measure")
        return
    import nvml_gpu

    out = WORK / "nvml.json"
    WORK.mkdir(parents=True, exist_ok=True)
    rec["figures_path"] = str(out)
    st.save()
    nvml_gpu.main(["--seconds", "12", "--json", str(out)])
    rec["figures"] = json.loads(out.read_text(encoding="utf-8"))
    rec["status"] = "ok"


# --- step 3: stage latencies at SDXL 1024^2 ---------------------------------------------------------------------
def step_ldm_stages(st: Step, rehearse: bool) -> None:
    rec = st.rec
    import ldm_stages

    cuda, _ = _cuda()
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "ldm_stages.json"
    rec["figures_path"] = str(out)
    st.save()
    if cuda:
        ldm_stages.main(["--device", "cuda", "--family", "sdxl", "--es-steps", "4", "8", "12", "--repeats", "2",
                         "--json", str(out)])
        rec["status"] = "ok"
    elif rehearse and not st.smoke:
        ldm_stages.main(["--device", "cpu", "--family", "sdxl", "--tiny", "--es-steps", "4", "8", "12",
                         "--repeats", "1", "--threads", "1", "--json", str(out)])
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: no SDXL 1024^2 timings; the code path was rehearsed on "
                                                 "the tiny SDXL-shaped model on CPU (not a figure)")
    else:
        ldm_stages.main(["--bytes-only", "--json", str(out)] + (["--tiny"] if st.smoke else []))
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: no SDXL 1024^2 timings; handoff bytes computed on CPU")
    rec["figures"] = json.loads(out.read_text(encoding="utf-8"))


# --- step 4: campaigns with the ES on CUDA ----------------------------------------------------------------------
def campaign_spec(name: str, model: str, *, es_device: str, sdxl: bool, rehearse: bool) -> dict[str, Any]:
    """The campaign: ES on ``es_device`` measured by auto-detected probes (NVML first), UE on the CPU measured by
    the generic CPU profile (RAPL, else modeled) so that it never reads the GPU's counter as its own."""
    return {
        "name": name, "model": model, "device": {"es": es_device, "ue": "cpu"},
        "prompts": ["a large red circle on the left and a small blue square at the top"],
        "negative_prompt": "", "seeds": [0],
        "image": {"height_px": 512 if sdxl else None, "width_px": 512 if sdxl else None, "guidance_scale": 5.0,
                  "scheduler": None, "wire_dtype": "float16"},
        "schemes": ["meg", "ceg"] if sdxl else ["meg", "ceg", "ue_local"],
        "grid": {"n_steps": [4] if rehearse else [4, 8, 12], "es_steps": [None],
                 "merge_ratio": [0.5] if sdxl else [0.0, 0.5], "tome_ratio_es": [0.0], "tome_ratio_ue": [0.0],
                 "link_model": ["awgn"], "distance_m": [200], "tx_mode": ["analog"], "decoder": ["base"]},
        "reference": {"n_steps": 12}, "repetitions": 1, "warmup": 1, "cooldown_s": 0.0,
        "order": {"randomize": True, "seed": 0}, "nodes": "local", "link_config": None,
        "profiles": {"es": None, "ue": "generic_cpu"},
        "timeouts": {"request_s": 120, "heartbeat_s": 1.0, "dead_after_s": 30}, "retries": 0,
        "keep_images": "none", "curve": None,
    }


def build_sdxl_folder(folder: Path, *, tiny: bool) -> Path:
    """An SDXL-shaped model folder: full size (random weights, fp16, built on the GPU) or the tests' tiny one."""
    from megbed.testing.random_weight_models import build_tiny_model

    if tiny:
        return build_tiny_model(folder, "sdxl")
    import ldm_stages
    import torch

    model = ldm_stages.build_sdxl(torch.device("cuda"), torch.float16)
    model.pipe.to("cpu")  # safetensors writes host tensors
    model.pipe.save_pretrained(folder, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return folder


def summarise_run(run_dir: Path) -> dict[str, Any]:
    """Per (scheme, N): median end-to-end latency and median ES energy per request; energy methods seen."""
    from megbed.measurements.dataset import read_dataset

    df = read_dataset(run_dir)
    out: dict[str, Any] = {"rows": int(len(df))}
    es = df[(df["node"] == "es") & (df["status"] == "ok")]
    out["es_energy_methods"] = {str(k): int(v) for k, v in es["energy_method"].value_counts().items()}
    out["es_probes"] = sorted(str(p) for p in es["probe"].dropna().unique())
    e2e = df[(df["stage"] == "end_to_end") & (df["status"] == "ok")]
    out["requests_ok"] = int(len(e2e))
    out["requests_failed"] = int(((df["stage"] == "end_to_end") & (df["status"] != "ok")).sum())
    lat: dict[str, float] = {}
    for (scheme, n), g in e2e.groupby(["scheme", "n_steps"]):
        lat[f"{scheme} N={int(n)}"] = float(g["latency_s"].median())
    out["latency_s_by_scheme_n"] = lat
    energy = es.groupby(["request_id", "scheme", "n_steps"])["energy_mj_total"].sum().reset_index()
    out["es_energy_mj_by_n"] = {f"{s} N={int(n)}": float(g["energy_mj_total"].median())
                                for (s, n), g in energy.groupby(["scheme", "n_steps"])}
    return out


def step_campaign(st: Step, rehearse: bool, out_dir: Path) -> None:
    import yaml

    from megbed.testbed.campaign.spec import load_spec

    rec = st.rec
    rec["campaigns"] = {}
    cuda, torch = _cuda()
    work = WORK / "campaign"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    budget = BUDGET_S["campaign"]
    # share of what is left when each starts; each run's timeout keeps 15 s + its report's (<= 30 s) in reserve
    plans = [("default", 0.35), ("sdxl", 1.0)]
    for name, share in plans:
        c: dict[str, Any] = {}
        rec["campaigns"][name] = c
        st.save()
        model = "default" if name == "default" else "sdxl"  # a placeholder until the folder is built
        if name == "sdxl" and not (st.smoke and not cuda):
            t = time.monotonic()
            folder = build_sdxl_folder(work / "sdxl_model", tiny=not cuda)
            c["model_build_s"] = round(time.monotonic() - t, 1)
            c["model"] = "SDXL-shaped, random weights, fp16" if cuda else "tiny SDXL-shaped (spec check only)"
            model = str(folder)
        spec = campaign_spec(name, model, es_device="cuda", sdxl=name == "sdxl", rehearse=rehearse)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        loaded = load_spec(path, check_paths=model != "sdxl")
        c["spec"] = spec
        c["grid_points"] = len(loaded.points()) if hasattr(loaded, "points") else None
        if not cuda and (st.smoke or not rehearse):
            c.update(status="skipped", skip_reason=f"{NO_CUDA}: spec validated, not run (the ES must be on CUDA)")
            continue
        if not cuda:  # --rehearse: the same run with the ES on the CPU, smallest grid (a code-path check only)
            spec["device"]["es"] = "cpu"
            spec["grid"]["merge_ratio"] = [0.5]
            spec["schemes"] = ["meg", "ceg"]
            spec["reference"]["n_steps"] = 4
            path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            c["rehearsal"] = "ES on cpu, N 4, beta 0.5, meg/ceg: not figures"
        run_dir = work / f"run_{name}"
        left = st.left_s(budget) - 10
        rc, tail = _sub([sys.executable, "-m", "megbed.testbed.cli.main", "campaign", "run", str(path), "--out",
                         str(run_dir)], left * share - 30)
        c["run_rc"] = rc
        if rc != 0:
            c["output_tail"] = tail
        try:
            c.update(summarise_run(run_dir))
        except Exception as exc:  # noqa: BLE001 - a failed campaign still reports why
            c["summary_error"] = repr(exc)
        rc_r, tail_r = _sub([sys.executable, "-m", "megbed.testbed.cli.main", "report", str(run_dir), "--out",
                             str(run_dir / "report"), "--bootstrap", "200", "--no-traces"],
                            min(30.0, st.left_s(budget) - 5))
        html = run_dir / "report" / "report.html"
        if html.is_file():
            shutil.copy(html, out_dir / f"campaign_{name}.html")
            c["report"] = f"campaign_{name}.html"
        else:
            c["report_error"] = f"megbed report rc {rc_r}: {tail_r[-500:]}"
        c["status"] = "ok" if rc == 0 and "summary_error" not in c else ("timeout" if rc is None else "failed")
        st.save()
    states = [c.get("status") for c in rec["campaigns"].values()]
    if not cuda and rehearse and not st.smoke:
        rec.update(status="skipped" if all(x == "ok" for x in states) else "failed",
                   skip_reason=f"{NO_CUDA}: both campaigns rehearsed with the ES on the CPU (not figures): {states}")
    elif not cuda:
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: both campaign specs validated, not run")
    else:
        rec["status"] = "ok" if all(s == "ok" for s in states) else "failed"


# --- step 5: distillation throughput ----------------------------------------------------------------------------
DISTILL_ARGS = ["--num-prompts", "16", "--val-prompts", "4", "--steps", "60", "--amp", "bf16", "--no-progress",
                "--no-resume"]


def step_distill(st: Step, rehearse: bool) -> None:
    from megbed.testbed.distill.config import DistillConfig

    rec = st.rec
    cuda, _ = _cuda()
    rec["args"] = DISTILL_ARGS
    DistillConfig(device="cuda", amp="bf16", steps=60)  # the recipe must validate before GPU time is spent
    if not cuda and (st.smoke or not rehearse):
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: recipe validated, no training run")
        return
    args = DISTILL_ARGS
    if not cuda:  # --rehearse: the same command on the CPU at the smallest sizes (a code-path check only)
        args = ["--num-prompts", "2", "--val-prompts", "1", "--steps", "2", "--n-min", "4", "--n-max", "4",
                "--amp", "none", "--no-progress", "--no-resume", "--threads", "1"]
        rec["rehearsal_args"] = args
    run = WORK / "distill"
    shutil.rmtree(run, ignore_errors=True)
    rc, tail = _sub([sys.executable, "-m", "megbed.testbed.cli.main", "distill", "train", "--run", str(run), "--device",
                     "cuda" if cuda else "cpu", *args], st.left_s(BUDGET_S["distill"]) - 3)
    summary = run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text(encoding="utf-8"))
        rec["figures"] = {k: s.get(k) for k in ("steps", "samples", "train_wall_s", "samples_per_s", "device", "amp")}
        rec["figures"]["val_final"] = s.get("val_final")
    rec["status"] = "ok" if rc == 0 and "figures" in rec else ("timeout" if rc is None else "failed")
    if rec["status"] != "ok":
        rec["output_tail"] = tail
    elif not cuda:
        rec.update(status="skipped", skip_reason=f"{NO_CUDA}: rehearsed on the CPU at the smallest sizes (not a "
                                                 "figure)")


def run_step(name: str, step_json: Path, out_dir: Path, rehearse: bool, smoke: bool = False) -> int:
    st = Step(step_json)
    st.smoke = smoke
    try:
        if name == "env":
            step_env(st, rehearse)
        elif name == "gpu_tests":
            step_gpu_tests(st, rehearse)
        elif name == "nvml":
            step_nvml(st, rehearse)
        elif name == "ldm_stages":
            step_ldm_stages(st, rehearse)
        elif name == "campaign":
            step_campaign(st, rehearse, out_dir)
        elif name == "distill":
            step_distill(st, rehearse)
        else:
            raise ValueError(f"unknown step {name!r}")
    except Exception as exc:  # noqa: BLE001 - the record says what broke; the parent moves on to the next step
        import traceback

        st.rec.update(status="failed", error=repr(exc), traceback=traceback.format_exc()[-3000:])
        st.save()
        return 1
    st.rec["step_s"] = round(time.monotonic() - st.t0, 2)
    st.save()
    return 0
