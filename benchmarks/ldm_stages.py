"""Per-stage latency of the split runtime at SD-1.5 size, and handoff bytes vs beta.

* SD-1.5-shaped model, random weights, real configs (U-Net 860 M, VAE 84 M, CLIP text 123 M), 512x512 image
  (4x64x64 latent), run through the runtime's own stage objects: text_encode, one denoise step (CFG, batch 2)
  with tomesd ratio 0 and 0.5 side by side (repeats interleaved so both see the same machine load), merge /
  serialize / deserialize / unmerge at beta 0 and 0.5, VAE decode.
* Handoff bytes vs beta for SD-1.5 (4x64x64) and SDXL (4x128x128) latents, fp16 on the wire, k = N (what the
  paper sends), plus a hybrid DPM++ handoff (solver history) for comparison.

Usage::

    python benchmarks/ldm_stages.py                 # 2 repeats per stage (after one warm-up)
    python benchmarks/ldm_stages.py --repeats 1     # quicker
    python benchmarks/ldm_stages.py --bytes-only    # only the handoff-size table (seconds)
    python benchmarks/ldm_stages.py --device cuda   # float16 on a GPU

Timings are wall times (perf_counter_ns, device synchronised); on a shared CPU they include other people's load,
so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.ldm.handoff import Handoff  # noqa: E402
from testbed.ldm.merging import merge, merged_payload_nbytes  # noqa: E402
from testbed.ldm.model import LdmModel, default_dtype, device_sync  # noqa: E402
from testbed.ldm.request import GenerationRequest  # noqa: E402
from testbed.ldm.schedulers import new_sampler  # noqa: E402
from testbed.ldm.stages import (  # noqa: E402
    DecodeStage,
    DenoiseStage,
    DeserializeStage,
    MergeStage,
    SerializeStage,
    TextEncodeStage,
    UnmergeStage,
)
from testbed.ldm.synthetic import SD_NOISE_SCHEDULE, sd15_text_encoder, sd15_unet, sd15_vae  # noqa: E402

BETAS = (0.0, 0.1, 0.25, 0.5, 0.75)


def _time(fn, device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        device_sync(device)
        t0 = time.perf_counter_ns()
        fn()
        device_sync(device)
        out.append((time.perf_counter_ns() - t0) / 1e9)
    return out


def _fmt(samples: list[float]) -> str:
    med = statistics.median(samples)
    scale, unit = (1.0, "s ") if med >= 1.0 else (1e3, "ms")
    spread = f" [{min(samples) * scale:.3f}-{max(samples) * scale:.3f}]" if len(samples) > 1 else ""
    return f"{med * scale:9.3f} {unit}{spread}"


def build_sd15(device: torch.device, dtype: torch.dtype) -> LdmModel:
    """A StableDiffusionPipeline of full-size SD-1.5 components with random weights, in memory."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from testbed.ldm.synthetic import write_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    pipe = StableDiffusionPipeline(
        vae=sd15_vae(dtype), text_encoder=sd15_text_encoder(dtype), tokenizer=tokenizer, unet=sd15_unet(dtype),
        scheduler=DDIMScheduler.from_config(SD_NOISE_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    return LdmModel(pipe, device=device, dtype=dtype)


def stage_latencies(model: LdmModel, repeats: int) -> dict[str, list[float]]:
    device = model.device
    base = GenerationRequest("a photograph of an astronaut riding a horse", num_steps=1, seed=0, scheduler="dpmpp_2m",
                             guidance_scale=7.5, height=512, width=512, wire_dtype="float16")
    req = model.resolve(base)
    results: dict[str, list[float]] = {}
    text = TextEncodeStage(model)({"request": req})["text"]
    results["text_encode (CFG: 2 prompts)"] = _time(lambda: TextEncodeStage(model)({"request": req}), device, repeats)

    denoise = DenoiseStage(model, stop="end", tome_node="es")
    per_ratio: dict[float, list[float]] = {0.0: [], 0.5: []}
    for ratio in per_ratio:  # warm-up both code paths once
        denoise({"request": req.replace(tome_ratio_es=ratio), "text": text})
    for _ in range(repeats):
        for ratio in per_ratio:
            per_ratio[ratio] += _time(lambda r=ratio: denoise({"request": req.replace(tome_ratio_es=r), "text": text}),
                                      device, 1, warmup=0)
    for ratio, samples in per_ratio.items():
        results[f"denoise, 1 step (CFG, batch 2), tomesd {ratio:g}"] = samples

    latents = torch.randn(model.latent_shape(req), generator=torch.Generator().manual_seed(1)).to(device, model.dtype)
    for beta in (0.0, 0.5):
        r = req.replace(merge_ratio=beta)
        merged = MergeStage()({"request": r, "latents": latents})["merged"]
        frame = SerializeStage(model)({"request": r, "merged": merged})["handoff_frame"]
        results[f"merge (beta {beta:g})"] = _time(lambda r=r: MergeStage()({"request": r, "latents": latents}),
                                                  device, max(repeats, 5))
        results[f"serialize (beta {beta:g})"] = _time(
            lambda r=r, m=merged: SerializeStage(model)({"request": r, "merged": m}), device, max(repeats, 5))
        results[f"deserialize (beta {beta:g})"] = _time(
            lambda f=frame: DeserializeStage(model)({"handoff_frame": f}), device, max(repeats, 5))
        results[f"unmerge (beta {beta:g})"] = _time(lambda m=merged: UnmergeStage()({"merged": m}), device,
                                                    max(repeats, 5))
    results["decode (VAE, 64x64 latent -> 512x512)"] = _time(
        lambda: DecodeStage(model.decoder)({"latents": latents}), device, repeats)
    return results


def handoff_bytes() -> list[dict]:
    rows = []
    for family, shape in (("SD-1.5", (4, 64, 64)), ("SDXL", (4, 128, 128))):
        latent = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        raw = latent.numel() * 2
        for beta in BETAS:
            req = GenerationRequest("a photograph of an astronaut riding a horse", num_steps=8, merge_ratio=beta,
                                    seed=0, scheduler="ddim", height=8 * shape[1], width=8 * shape[2])
            h = Handoff.build(req, merge(latent, beta, 0), None)
            frame = h.to_frame()
            rows.append({"latent": family, "shape": "x".join(map(str, shape)), "beta": beta, "kind": "k = N",
                         "handoff_bytes": h.nbytes, "tokens_bytes": int(frame.buffers["merge.tokens"].nbytes),
                         "map_bytes": int(frame.buffers["merge.map"].nbytes),
                         "header_bytes": h.nbytes - frame.payload_nbytes,
                         "closed_form_payload_bytes": merged_payload_nbytes(shape, beta, "float16"),
                         "vs_raw_fp16_latent": h.nbytes / raw})
        # hybrid: DPM++ 2M at k = N/2 carries its two model outputs as well
        req = GenerationRequest("a photograph of an astronaut riding a horse", num_steps=8, split_step=4,
                                merge_ratio=0.5, seed=0, scheduler="dpmpp_2m", height=8 * shape[1],
                                width=8 * shape[2])
        sampler = new_sampler("dpmpp_2m", SD_NOISE_SCHEDULE, 8, 0)
        x = latent.clone()
        for i in range(4):
            x = sampler.scheduler.step(torch.tanh(x), sampler.timesteps[i], x, return_dict=False)[0]
            sampler.step = i + 1
        h = Handoff.build(req, merge(x, 0.5, 0), sampler)
        frame = h.to_frame()
        rows.append({"latent": family, "shape": "x".join(map(str, shape)), "beta": 0.5,
                     "kind": "hybrid dpmpp_2m k=4/8", "handoff_bytes": h.nbytes,
                     "tokens_bytes": int(frame.buffers["merge.tokens"].nbytes),
                     "map_bytes": int(frame.buffers["merge.map"].nbytes),
                     "header_bytes": h.nbytes - frame.payload_nbytes, "closed_form_payload_bytes": None,
                     "vs_raw_fp16_latent": h.nbytes / raw})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per stage after one warm-up (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--bytes-only", action="store_true", help="only the handoff-bytes table")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device}
    print("handoff bytes (fp16 wire; k = N unless noted)")
    print(f"{'latent':<7} {'shape':<9} {'beta':>5} {'kind':<22} {'bytes':>8} {'tokens':>8} {'map':>5} "
          f"{'header':>6} {'x raw':>6}")
    rows = handoff_bytes()
    for r in rows:
        print(f"{r['latent']:<7} {r['shape']:<9} {r['beta']:>5.2f} {r['kind']:<22} {r['handoff_bytes']:>8} "
              f"{r['tokens_bytes']:>8} {r['map_bytes']:>5} {r['header_bytes']:>6} {r['vs_raw_fp16_latent']:>6.3f}")
    report["handoff_bytes"] = rows

    if not args.bytes_only:
        device = torch.device(args.device)
        dtype = default_dtype(device)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        print(f"\nSD-1.5 shapes, random weights, 512x512, {device} {str(dtype).removeprefix('torch.')}, "
              f"{torch.get_num_threads()} threads, load average {load}")
        t0 = time.perf_counter()
        model = build_sd15(device, dtype)
        print(f"(built in {time.perf_counter() - t0:.1f} s; U-Net {sum(p.numel() for p in model.unet.parameters())/1e6:.0f} M "
              f"params, tomesd max_downsample {model.tome_max_downsample})")
        with torch.inference_mode():
            latencies = stage_latencies(model, args.repeats)
        print(f"{'stage':<44} {'median':>11}  [min-max]")
        for name, samples in latencies.items():
            print(f"{name:<44} {_fmt(samples)}")
        steps = [v for k, v in latencies.items() if k.startswith("denoise")]
        if len(steps) == 2:
            print(f"tomesd 0.5 speed-up per step: x{statistics.median(steps[0]) / statistics.median(steps[1]):.2f}")
        report["latency_s"] = latencies
        report["load_average_start"] = load
        report["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
