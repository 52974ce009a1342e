"""Channel emulator real-time factor on the wall clock and in CPU time, 1 and 2 threads side by side.

One row per mode x link x latent (x SNR for the coded mode), with the emulator run at 1 and at 2 threads (the
process's torch threads, the emulator's ``torch_threads`` cap and the coded chain's numba ``decoder.threads`` all
set to that number, as caps: the chain gives its decoder no more threads than code blocks, nor than 1 + the cores the
load average leaves idle, see :func:`megbed.channel_emu.numba_setup.kernel_threads`), on one seeded channel state per
row so that both thread counts see the same SNR and MCS.

    RTF = processing time / emulated airtime     (goals, issue 21: analog <= 0.01, coded <= 1, at 1 MHz, 2 cores)

``wall`` is the median perf_counter time of a delivery, ``cpu`` the median process time (all threads): what an
idle machine would take. Both come from deliveries back to back, with warm caches. In a campaign the broker idles
between handoffs (seconds of denoising), and the first delivery after idling is slower (cold caches, predictors,
TLB; on the 2-vCPU VM an SD-1.5 analog delivery took 80 us back to back and 440 us after 10 ms of sleep): the last
columns time analog deliveries that each follow ``--idle-ms`` of sleep (1 thread). How much of that is the host is
printed first: a small pure-Python loop timed the same two ways (on the VM: 19 us back to back, 83 us after 10 ms of
sleep, 60 us even after 10 ms of spinning; shared caches, not this code). The load average is printed: on the shared box the wall figures are only as good as the
box is idle, and the 1-vs-2-thread ratio is the figure that travels. So is the host's speed: a fixed reference
workload (numpy's normal and log over 2**20 values, one thread) is timed at the start and at the end, because the
same code ran 2x slower on the same kind of VM one night than another (benchmarks/results/channel_rtf_i21.txt).

Run: ``python benchmarks/channel_rtf.py [--repeats N] [--coded-repeats N] [--snr-db 2.2 10] [--links ...]
[--full-bench]`` (``--full-bench`` also prints the older Sionna-vs-fast table of :mod:`megbed.channel_emu.bench`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

from megbed.channel_emu.emulator import ChannelEmulator
from megbed.megwire import Frame

LATENTS = {"sd15_4x64x64": (4, 64, 64), "sdxl_4x128x128": (4, 128, 128)}


def _frame(shape: tuple[int, ...]) -> Frame:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    return Frame("handoff", meta={"request_id": "bench", "channel_roles": {"tokens": "values", "map": "side"}},
                 buffers={"tokens": x, "map": np.zeros(shape[-1] * shape[-2] // 32, np.uint8)})


def reference_ms(repeats: int = 7) -> float:
    """Median ms of a fixed single-threaded numpy workload (2**20 standard normals and their log of abs): how fast
    this host runs plain vector code right now, printed beside the RTF figures so runs on different days compare."""
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.log(np.abs(rng.standard_normal(1 << 20)) + 1e-12)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _dict_loop() -> int:
    d = {}
    for i in range(150):
        d[i] = (i, str(i))
    return len(d)


def cold_reference_us(idle_s: float, repeats: int = 60) -> tuple[float, float]:
    """Median us of a small pure-Python loop (a 150-entry dict) back to back and after ``idle_s`` of sleep: how
    much slower this host runs any code right after idling, whatever the code (cold caches on a shared VM)."""
    out = []
    for gap in (0.0, idle_s):
        times = []
        for _ in range(repeats):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            _dict_loop()
            times.append(time.perf_counter() - t0)
        out.append(statistics.median(times) * 1e6)
    return out[0], out[1]


def measure(mode: str, link: str, shape: tuple[int, ...], snr_db: float, threads: int, repeats: int,
            idle_s: float = 0.0, idle_repeats: int = 0) -> dict:
    """Median wall and CPU seconds of ``repeats`` back-to-back deliveries (after warming up) and the airtime; with
    ``idle_repeats``, also the median wall seconds of that many deliveries each after ``idle_s`` of sleep."""
    torch.set_num_threads(threads)
    em = ChannelEmulator({"mode": mode, "model": link, "snr_db": snr_db, "mcs": "auto",
                          "decoder": {"threads": threads}}, seed=0, torch_threads=threads)
    frame = _frame(shape)
    state = em.process.step()
    # Sub-millisecond deliveries reach their steady speed only after ~100 of them (caches, predictors): the median
    # of 300 after a single warm-up moved by up to 1.8x between runs.
    for _ in range(100 if mode == "analog" else 1):
        em.deliver(frame, state)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        _, rec = em.deliver(frame, state)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    w, c = statistics.median(wall), statistics.median(cpu)
    idle = []
    for _ in range(idle_repeats):
        time.sleep(idle_s)
        t0 = time.perf_counter()
        em.deliver(frame, state)
        idle.append(time.perf_counter() - t0)
    wi = statistics.median(idle) if idle else math.nan
    return {"wall_s": w, "cpu_s": c, "airtime_s": rec.airtime_s, "rtf_wall": w / rec.airtime_s,
            "rtf_cpu": c / rec.airtime_s, "mcs": rec.mcs, "idle_wall_s": wi, "rtf_idle": wi / rec.airtime_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300,
                    help="analog deliveries per row and thread count (after 100 not timed)")
    ap.add_argument("--coded-repeats", type=int, default=3)
    ap.add_argument("--idle-ms", type=float, default=10.0,
                    help="analog rows: also time deliveries that each follow this much sleep, as in a campaign")
    ap.add_argument("--idle-repeats", type=int, default=60, help="analog deliveries after idling, per row")
    ap.add_argument("--snr-db", type=float, nargs="+", default=[2.2, 10.0],
                    help="2.2 dB: the paper's 200 m cell edge; 10 dB: 16-QAM, the coded chain's hardest case")
    ap.add_argument("--links", nargs="+", default=["awgn", "rayleigh_block", "rayleigh_symbol"])
    ap.add_argument("--modes", nargs="+", default=["analog", "coded"])
    ap.add_argument("--full-bench", action="store_true", help="also print megbed.channel_emu.bench's Sionna/fast table")
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start; "
          f"host reference {reference_ms():.2f} ms")
    hot_us, idle_us = cold_reference_us(args.idle_ms / 1e3)
    print(f"host cold-start reference: a pure-Python loop takes {hot_us:.1f} us back to back, {idle_us:.1f} us after "
          f"{args.idle_ms:g} ms idle ({idle_us / hot_us:.1f}x)")
    print(f"{'mode':7s} {'link':16s} {'latent':15s} {'snr':>5s} {'mcs':>3s} {'airtime':>9s} | "
          f"{'1 thr wall':>10s} {'cpu':>8s} {'RTF wall':>8s} {'cpu':>7s} | "
          f"{'2 thr wall':>10s} {'cpu':>8s} {'RTF wall':>8s} {'cpu':>7s} | {'2/1 wall':>8s} | "
          f"{'after ' + format(args.idle_ms, 'g') + ' ms idle':>18s} {'RTF':>7s}")
    for mode in args.modes:
        for link in args.links:
            for name, shape in LATENTS.items():
                for snr in args.snr_db if mode == "coded" else args.snr_db[:1]:
                    reps = args.repeats if mode == "analog" else args.coded_repeats
                    idle = args.idle_repeats if mode == "analog" else 0
                    r1, r2 = (measure(mode, link, shape, snr, t, reps, args.idle_ms / 1e3, idle if t == 1 else 0)
                              for t in (1, 2))
                    print(f"{mode:7s} {link:16s} {name:15s} {snr:5.1f} {r1['mcs']:3d} {r1['airtime_s'] * 1e3:7.2f}ms | "
                          f"{r1['wall_s'] * 1e3:8.3f}ms {r1['cpu_s'] * 1e3:6.2f}ms {r1['rtf_wall']:8.4f} "
                          f"{r1['rtf_cpu']:7.4f} | {r2['wall_s'] * 1e3:8.3f}ms {r2['cpu_s'] * 1e3:6.2f}ms "
                          f"{r2['rtf_wall']:8.4f} {r2['rtf_cpu']:7.4f} | {r2['wall_s'] / r1['wall_s']:8.2f} | "
                          + (f"{r1['idle_wall_s'] * 1e3:16.3f}ms {r1['rtf_idle']:7.4f}" if idle
                             else f"{'-':>18s} {'-':>7s}"),
                          flush=True)
    load1 = os.getloadavg()
    print(f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end; host reference {reference_ms():.2f} ms; "
          f"took {time.perf_counter() - t_start:.0f} s")
    if args.full_bench:
        from megbed.channel_emu.bench import run

        for r in run()["rows"]:
            print(r)


if __name__ == "__main__":
    main()
