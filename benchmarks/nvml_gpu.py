"""NVML on a real GPU: counter update period, instant-power rate, a known kernel's energy by counter vs integration,
and the same window measured by Zeus's ZeusMonitor side by side (when ``zeus`` is importable).

Needs an NVIDIA GPU, its driver and a CUDA build of torch; run once on a GPU machine:

    python benchmarks/nvml_gpu.py [--index 0] [--seconds 3] [--json OUT.json]

Printed figures:

* NVML energy-counter update period (median gap between counter changes) and the instant-power field's refresh
  period (from the driver's own sample timestamps), plus the rate our sampler achieves;
* for a fixed matmul workload (long: ``--seconds``; short: 50 ms, to show short-window flagging) the window energy
  by counter difference and by integrating ``NVML_FI_DEV_POWER_INSTANT`` samples over exactly the same window
  (stamps after ``torch.cuda.synchronize()``), and their relative difference;
* ZeusMonitor's energy for the same window (Zeus opens its window right after ours opens and closes it right before
  ours closes, so its window is nested inside ours by a few microseconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _gpu_or_exit():
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to measure")
        sys.exit(2)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible (torch.cuda.is_available() is False): run this on a GPU machine")
        sys.exit(2)
    return torch


def instant_power_rate(probe, seconds: float = 2.0) -> dict:
    """Poll the instant-power field as fast as possible; count distinct driver timestamps."""
    nv, h = probe.nv, probe._handles[0]
    stamps, reads = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_POWER_INSTANT])[0]
        reads += 1
        if v.nvmlReturn == nv.NVML_SUCCESS and (not stamps or v.timestamp != stamps[-1]):
            stamps.append(int(v.timestamp))
    gaps_ms = np.diff(stamps) / 1e3 if len(stamps) > 1 else np.array([np.nan])
    return {"polls_per_s": reads / seconds, "distinct_values_per_s": len(stamps) / seconds,
            "median_gap_ms": float(np.median(gaps_ms)), "p95_gap_ms": float(np.percentile(gaps_ms, 95))}


def kernel(torch, seconds: float, n: int = 8192):
    """Back-to-back fp16 matmuls for about ``seconds`` (calibrated once), synchronised at the end."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    a @ b  # warm-up: cuBLAS handle and kernel selection would otherwise inflate the calibration, shortening
    torch.cuda.synchronize()  # the window below the asked-for length
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / 5
    reps = max(1, int(seconds / per))

    def run():
        for _ in range(reps):
            a @ b

    return run, reps, per


def _zeus_call(fn, label):
    """Zeus >= 0.9 takes ``sync_execution``; older releases synchronised by default and take only the key."""
    try:
        return fn(label, sync_execution=True)
    except TypeError:
        return fn(label)


def measure_window(torch, meter, run, label: str, zeus_monitor=None) -> dict:
    from megbed.measurements.integrate import integrate_window

    sync = torch.cuda.synchronize
    w = meter.begin(label, sync=sync)
    if zeus_monitor is not None:
        _zeus_call(zeus_monitor.begin_window, label)
    run()
    zeus = None
    if zeus_monitor is not None:
        m = _zeus_call(zeus_monitor.end_window, label)
        zeus = {"time_s": m.time, "gpu_energy_mj": {str(k): v * 1000 for k, v in m.gpu_energy.items()}}
    meter.end(w)
    time.sleep(0.2)  # let the sampler read past the window end
    r = w.result
    snap = meter.samplers[0].window_arrays(w.t_start_ns, w.t_end_ns, margin_ns=200_000_000)
    # a gap is only a gap when it is longer than a few of the field's own refreshes (50 ms floor)
    field_s = meter.probes[0].sensor_period_s() or 0.0
    integ = integrate_window(snap.t_ns, np.where(snap.valid, snap.power_mw[:, 0], np.nan), w.t_start_ns,
                             w.t_end_ns, max_gap_ns=int(max(50e6, 2.5 * field_s * 1e9)))
    out = {"window": label, "duration_s": r.duration_s, "counter_mj": r.energy_mj["gpu" + str(meter.probes[0].indices[0])],
           "integrated_mj": integ.energy_mj, "integrated_samples": integ.n_samples,
           "integrated_problems": list(integ.problems), "valid": r.valid, "reason": r.reason,
           "mean_power_w": r.total_mj / r.duration_s / 1000 if r.duration_s > 0 else None}
    out["integrated_vs_counter_pct"] = pct_diff(integ.energy_mj, out["counter_mj"])
    if zeus is not None:
        z = next(iter(zeus["gpu_energy_mj"].values()))
        out["zeus"] = zeus
        out["zeus_vs_counter_pct"] = pct_diff(z, out["counter_mj"])
    return out


def pct_diff(value: float, reference: float) -> float | None:
    """100 (value - reference) / reference; None when the reference is zero or not finite (a window shorter than
    one counter update reads a zero difference: that is the short-window flag's case, not a crash)."""
    if reference is None or value is None or not np.isfinite(reference) or reference == 0 or not np.isfinite(value):
        return None
    return 100 * (value - reference) / reference


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of the long kernel window")
    ap.add_argument("--rate", type=float, default=500.0, help="sampler rate (Hz)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    torch = _gpu_or_exit()
    from megbed.measurements.meter import Meter
    from megbed.measurements.probes.nvml import NvmlProbe

    probe = NvmlProbe((args.index,), measure_period_s=2.0)
    report: dict = {"device": probe.device_names[0], "counter_period_ms": _ms(probe.counter_period_s()),
                    "instant_field_period_ms": _ms(probe.sensor_period_s()), "settings": probe.settings()}
    report["instant_power_polling"] = instant_power_rate(probe)
    print(f"device: {report['device']}")
    print(f"energy counter update period: {report['counter_period_ms']} ms; instant-power field refresh: "
          f"{report['instant_field_period_ms']} ms")
    ip = report["instant_power_polling"]
    print(f"instant power: {ip['polls_per_s']:.0f} polls/s give {ip['distinct_values_per_s']:.1f} distinct values/s "
          f"(median gap {ip['median_gap_ms']:.2f} ms, p95 {ip['p95_gap_ms']:.2f} ms)")

    zeus_monitor = None
    try:
        from zeus.monitor import ZeusMonitor

        zeus_monitor = ZeusMonitor(gpu_indices=[args.index])
        report["zeus"] = "ZeusMonitor available"
    except Exception as exc:  # noqa: BLE001 - zeus absent or failing: skip that column cleanly
        report["zeus"] = f"skipped: {exc!r}"
        print(f"zeus: skipped ({exc.__class__.__name__}: {exc})")

    meter = Meter(probe, rate_hz=args.rate).start()
    try:
        time.sleep(1.0)
        idle = meter.measure_idle(2.0)
        report["idle_power_w"] = idle.total_power_mw / 1000
        report["sampler"] = meter.samplers[0].stats()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
        windows = []
        for label, secs in (("long", args.seconds), ("short", 0.05)):
            run, reps, per = kernel(torch, secs)
            res = measure_window(torch, meter, run, label, zeus_monitor)
            res.update({"matmuls": reps, "matmul_ms": per * 1000})
            windows.append(res)
            report["windows"] = windows
            if args.json:  # after each window: a run killed later keeps what it measured
                args.json.write_text(json.dumps(report, indent=1, default=str))
            time.sleep(1.0)
        report["windows"] = windows
    finally:
        meter.close()
    print(f"idle: {report['idle_power_w']:.1f} W; sampler achieved {report['sampler']['achieved_rate_hz']:.0f} Hz")
    print("window  duration_s  counter_mJ  integrated_mJ  integ-vs-counter_%  zeus_mJ  zeus-vs-counter_%  valid")
    for w in windows:
        z = w.get("zeus")
        zm = f"{next(iter(z['gpu_energy_mj'].values())):8.1f}" if z else "     n/a"
        zp = f"{_f(w.get('zeus_vs_counter_pct')):>17s}"
        print(f"{w['window']:6s}  {w['duration_s']:10.3f}  {w['counter_mj']:10.1f}  {w['integrated_mj']:13.1f}"
              f"  {_f(w['integrated_vs_counter_pct']):>18s}  {zm}  {zp}  {w['valid']} {w['reason']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 3)


if __name__ == "__main__":
    sys.exit(main())
