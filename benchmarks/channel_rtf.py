"""Channel emulator real-time factor on the wall clock and in CPU time, 1 and 2 threads side by side.

One row per mode x link x latent (x SNR for the coded mode), with the emulator run at 1 and at 2 threads (the
process's torch threads, the emulator's ``torch_threads`` cap and the coded chain's numba ``decoder.threads`` all
set to that number, as caps: the chain gives its decoder no more threads than code blocks, nor than 1 + the cores the
load average leaves idle, see :func:`megbed.channel_emu.numba_setup.kernel_threads`), on one seeded channel state per
row so that both thread counts see the same SNR and MCS.

    RTF = processing time / emulated airtime     (goals, issue 21: analog <= 0.01, coded <= 1, at 1 MHz, 2 cores)

``wall`` is the median perf_counter time of a delivery, ``cpu`` the median process time (all threads): what an
idle machine would take. The load average is printed: on the shared box the wall figures are only as good as the
box is idle, and the 1-vs-2-thread ratio is the figure that travels. So is the host's speed: a fixed reference
workload (numpy's normal and log over 2**20 values, one thread) is timed at the start and at the end, because the
same code ran 2x slower on the same kind of VM one night than another (benchmarks/results/channel_rtf_i21.txt).

Run: ``python benchmarks/channel_rtf.py [--repeats N] [--coded-repeats N] [--snr-db 2.2 10] [--links ...]
[--full-bench]`` (``--full-bench`` also prints the older Sionna-vs-fast table of :mod:`megbed.channel_emu.bench`).
"""

from __future__ import annotations

import argparse
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


def measure(mode: str, link: str, shape: tuple[int, ...], snr_db: float, threads: int, repeats: int) -> dict:
    """Median wall and CPU seconds of ``repeats`` deliveries (after one warm-up) and the airtime."""
    torch.set_num_threads(threads)
    em = ChannelEmulator({"mode": mode, "model": link, "snr_db": snr_db, "mcs": "auto",
                          "decoder": {"threads": threads}}, seed=0, torch_threads=threads)
    frame = _frame(shape)
    state = em.process.step()
    em.deliver(frame, state)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        _, rec = em.deliver(frame, state)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    w, c = statistics.median(wall), statistics.median(cpu)
    return {"wall_s": w, "cpu_s": c, "airtime_s": rec.airtime_s, "rtf_wall": w / rec.airtime_s,
            "rtf_cpu": c / rec.airtime_s, "mcs": rec.mcs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300,
                    help="analog deliveries per row and thread count (the median of 50 moved by up to 1.8x between "
                         "runs on the shared box)")
    ap.add_argument("--coded-repeats", type=int, default=3)
    ap.add_argument("--snr-db", type=float, nargs="+", default=[2.2, 10.0],
                    help="2.2 dB: the paper's 200 m cell edge; 10 dB: 16-QAM, the coded chain's hardest case")
    ap.add_argument("--links", nargs="+", default=["awgn", "rayleigh_block", "rayleigh_symbol"])
    ap.add_argument("--modes", nargs="+", default=["analog", "coded"])
    ap.add_argument("--full-bench", action="store_true", help="also print megbed.channel_emu.bench's Sionna/fast table")
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start; "
          f"host reference {reference_ms():.2f} ms")
    print(f"{'mode':7s} {'link':16s} {'latent':15s} {'snr':>5s} {'mcs':>3s} {'airtime':>9s} | "
          f"{'1 thr wall':>10s} {'cpu':>8s} {'RTF wall':>8s} {'cpu':>7s} | "
          f"{'2 thr wall':>10s} {'cpu':>8s} {'RTF wall':>8s} {'cpu':>7s} | {'2/1 wall':>8s}")
    for mode in args.modes:
        for link in args.links:
            for name, shape in LATENTS.items():
                for snr in args.snr_db if mode == "coded" else args.snr_db[:1]:
                    reps = args.repeats if mode == "analog" else args.coded_repeats
                    r1, r2 = (measure(mode, link, shape, snr, t, reps) for t in (1, 2))
                    print(f"{mode:7s} {link:16s} {name:15s} {snr:5.1f} {r1['mcs']:3d} {r1['airtime_s'] * 1e3:7.2f}ms | "
                          f"{r1['wall_s'] * 1e3:8.3f}ms {r1['cpu_s'] * 1e3:6.2f}ms {r1['rtf_wall']:8.4f} "
                          f"{r1['rtf_cpu']:7.4f} | {r2['wall_s'] * 1e3:8.3f}ms {r2['cpu_s'] * 1e3:6.2f}ms "
                          f"{r2['rtf_wall']:8.4f} {r2['rtf_cpu']:7.4f} | {r2['wall_s'] / r1['wall_s']:8.2f}",
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
