"""Channel emulator RTF (processing / airtime) per mode, model and payload, and LDPC decoders side by side.

Run: ``python benchmarks/channel_rtf.py [--quick] [--json]`` (or ``megbed channel bench --json``).
Goals (issue 5): analog and abstraction RTF <= 0.01 for SD-1.5 / SDXL fp16 latents on 2 cores; coded RTF <= 1 at
1 MHz. The machine's load average is printed: the figures are only as good as the machine is idle.
"""

from __future__ import annotations

import argparse
import json
import math

from channel_emu.bench import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(quick=args.quick)
    if args.json:
        print(json.dumps(result, indent=1, default=float))
        return
    print(f"torch threads {result['torch_threads']}, load average {result['load_avg']}")
    for r in result["rows"]:
        if r["kind"] == "emulator":
            print(f"{r['mode']:12s} {r['model']:15s} {r['payload']:22s} mcs {r['mcs']:3d} proc {r['processing_s']*1e3:9.2f} ms "
                  f"air {r['airtime_s']*1e3:9.2f} ms  RTF {r['rtf']:.4f}  {r['mbit_per_s']:.2f} Mbit/s"
                  + ("" if math.isnan(r["nmse"]) else f"  nmse {r['nmse']:.3f}"))
        else:
            print(f"{r['decoder']:32s} Eb/N0 {r['ebno_db']:.1f} dB  {r['blocks']} x ({r['k']},{r['n']})  "
                  f"{r['decode_s']:.3f} s  {r['mbit_per_s']:.3f} Mbit/s  RTF@1MHz {r['rtf_1mhz_qpsk']:.3f}  "
                  f"BLER {r['bler']:.3f}")


if __name__ == "__main__":
    main()
