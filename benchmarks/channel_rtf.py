"""Channel emulator RTF (processing / airtime) per mode, model and payload, Sionna's blocks and the fast ones side by
side, and the LDPC decoders side by side.

Run: ``python benchmarks/channel_rtf.py [--quick] [--json] [--save result.json]`` (or ``megbed channel bench
--json``).
Goals (issue 5): analog and abstraction RTF <= 0.01 for SD-1.5 / SDXL fp16 latents on 2 cores; coded RTF <= 1 at
1 MHz. The machine's load average is printed: wall-clock figures are only as good as the machine is idle; the CPU
columns (process time, all threads) are what an idle machine would show.
"""

from __future__ import annotations

import argparse
import json
import math

from channel_emu.bench import run


def _fmt_err(r: dict) -> str:
    parts = []
    if not math.isnan(r["nmse"]):
        parts.append(f"nmse {r['nmse']:.3f}")
    if r["mode"] != "analog":
        parts.append(f"ber {r['ber']:.1e} bler {r['bler']:.3f}")
    return "  ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of the tables")
    ap.add_argument("--save", metavar="PATH", help="also write the result as JSON to PATH")
    args = ap.parse_args()
    result = run(quick=args.quick)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=float)
    if args.json:
        print(json.dumps(result, indent=1, default=float))
        return
    la, lb = result["load_avg_start"], result["load_avg_end"]
    print(f"{result['cpu_count']} CPUs, load average {la[0]:.2f} at start, {lb[0]:.2f} at end; "
          f"run took {result['wall_s']:.0f} s")
    print(f"{'impl':6s} {'mode':11s} {'model':14s} {'payload':20s} {'mcs':>3s} {'proc med':>9s} {'min':>9s} "
          f"{'cpu':>9s} {'airtime':>9s} {'RTF med':>8s} {'min':>8s} {'cpu':>8s} {'Mbit/s':>8s}  errors")
    for r in result["rows"]:
        if r["kind"] != "emulator":
            continue
        print(f"{r['impl']:6s} {r['mode']:11s} {r['model']:14s} {r['payload']:20s} {r['mcs']:3d} "
              f"{r['processing_s'] * 1e3:7.2f}ms {r['processing_min_s'] * 1e3:7.2f}ms {r['cpu_s'] * 1e3:7.2f}ms "
              f"{r['airtime_s'] * 1e3:7.1f}ms {r['rtf']:8.4f} {r['rtf_min']:8.4f} {r['rtf_cpu']:8.4f} "
              f"{r['mbit_per_s']:8.2f}  {_fmt_err(r)}")
    print("\ncoded chain, time per stage (ms, mean per delivery, data + side blocks):")
    for r in result["rows"]:
        if r["kind"] == "emulator" and r["stage_s"]:
            stages = "  ".join(f"{k} {v * 1e3:.1f}" for k, v in r["stage_s"].items())
            print(f"  {r['impl']:6s} {r['model']:14s} {r['payload']:20s} {stages}")
    print("\nLDPC decoders on the same LLRs (QPSK, 1 MHz):")
    for r in result["rows"]:
        if r["kind"] == "decoder":
            print(f"  {r['decoder']:42s} Eb/N0 {r['ebno_db']:.1f} dB  {r['blocks']} x ({r['k']},{r['n']})  "
                  f"{r['decode_s'] * 1e3:8.1f} ms (cpu {r['cpu_s'] * 1e3:8.1f})  {r['mbit_per_s']:7.3f} Mbit/s  "
                  f"RTF {r['rtf_1mhz_qpsk']:.3f}  BLER {r['bler']:.3f}  iterations {r['mean_iterations']:.1f}")


if __name__ == "__main__":
    main()
