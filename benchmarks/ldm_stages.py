"""Per-stage latency of the split runtime at SD-1.5 or SDXL size, and handoff bytes vs beta (per merge method).

* SD-1.5-shaped model, random weights, real configs (U-Net 860 M, VAE 84 M, CLIP text 123 M), 512x512 image
  (4x64x64 latent), run through the runtime's own stage objects: text_encode, one denoise step (CFG, batch 2)
  with tomesd ratio 0 and 0.5 side by side (repeats interleaved so both see the same machine load), merge /
  serialize / deserialize / unmerge at beta 0 and 0.5, VAE decode.
* ``--family sdxl``: the same stages on an SDXL-base-shaped model (U-Net 2.6 G, two text encoders, VAE with SDXL's
  scaling) at 1024x1024 (4x128x128 latent); built straight on the target device (random init on the GPU takes
  seconds, on a CPU minutes). ``--tiny`` swaps in the tests' tiny random model of the family (a CPU rehearsal of
  the code path, not a figure).
* ``--es-steps 4 8 12``: the ES's U-Net time for a whole request of N steps (CFG, k = N), one request per N.
* Handoff bytes vs beta for SD-1.5 (4x64x64) and SDXL (4x128x128) latents, fp16 on the wire, k = N (what the
  paper sends), for every merge method ``megbed.testbed.ldm.merging`` offers, plus a hybrid DPM++ handoff (solver
  history) for comparison.

Usage::

    python benchmarks/ldm_stages.py                 # 2 repeats per stage (after one warm-up)
    python benchmarks/ldm_stages.py --repeats 1     # quicker
    python benchmarks/ldm_stages.py --bytes-only    # only the handoff-size table (seconds)
    python benchmarks/ldm_stages.py --device cuda   # float16 on a GPU
    python benchmarks/ldm_stages.py --device cuda --family sdxl --es-steps 4 8 12 --json sdxl.json

Timings are wall times (perf_counter_ns, device synchronised); on a shared CPU they include other people's load,
so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megbed.testbed.ldm import merging  # noqa: E402
from megbed.testbed.ldm.handoff import Handoff  # noqa: E402
from megbed.testbed.ldm.merging import merged_payload_nbytes  # noqa: E402
from megbed.testbed.ldm.model import LdmModel, default_dtype, device_sync, load_pipeline  # noqa: E402
from megbed.testbed.ldm.schedulers import new_sampler  # noqa: E402
from megbed.testbed.ldm.stages import (  # noqa: E402
    DecodeStage,
    DenoiseStage,
    DeserializeStage,
    MergeStage,
    SerializeStage,
    TextEncodeStage,
    UnmergeStage,
)
from megbed.testbed.request import Request  # noqa: E402
from megbed.testing.random_weight_models import (  # noqa: E402
    SD15_TEXT_CONFIG,
    SD15_VAE_CONFIG,
    SD_NOISE_SCHEDULE,
    build_tiny_model,
    sd15_text_encoder,
    sd15_unet,
    sd15_vae,
)

BETAS = (0.0, 0.1, 0.25, 0.5, 0.75)
PROMPT = "a photograph of an astronaut riding a horse"

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, written out (2.57 G parameters).
SDXL_UNET_CONFIG: dict = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32, "act_fn": "silu",
}
# SDXL's VAE has SD's architecture with another latent scaling (and upcasts to fp32 with real weights).
SDXL_VAE_CONFIG: dict = {**SD15_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
# text_encoder_2: OpenCLIP ViT-bigG/14's text tower (695 M).
SDXL_TEXT2_CONFIG: dict = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                           "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280}
FAMILY_SIDE_PX = {"sd15": 512, "sdxl": 1024}


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

    from megbed.testing.random_weight_models import write_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    pipe = StableDiffusionPipeline(
        vae=sd15_vae(dtype), text_encoder=sd15_text_encoder(dtype), tokenizer=tokenizer, unet=sd15_unet(dtype),
        scheduler=DDIMScheduler.from_config(SD_NOISE_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    return LdmModel(pipe, device=device, dtype=dtype)


def build_sdxl(device: torch.device, dtype: torch.dtype) -> LdmModel:
    """A StableDiffusionXLPipeline of full-size SDXL-base components with random weights, in memory.

    The modules are created under ``torch.device(device)``, so the random init runs on the GPU (seconds) instead
    of the CPU (minutes for 3.4 G parameters), then cast to ``dtype``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from megbed.testing.random_weight_models import _text_config, write_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    c1, c2 = SD15_TEXT_CONFIG, SDXL_TEXT2_CONFIG
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype).eval()
        vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(dtype).eval()
        text1 = CLIPTextModel(_text_config(c1["hidden_size"], c1["num_hidden_layers"], c1["num_attention_heads"],
                                           c1["projection_dim"], c1["intermediate_size"],
                                           hidden_act=c1["hidden_act"])).to(dtype).eval()
        text2 = CLIPTextModelWithProjection(_text_config(
            c2["hidden_size"], c2["num_hidden_layers"], c2["num_attention_heads"], c2["projection_dim"],
            c2["intermediate_size"], hidden_act=c2["hidden_act"])).to(dtype).eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text1, text_encoder_2=text2, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(SD_NOISE_SCHEDULE), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    ).to(device)
    return LdmModel(pipe, device=device, dtype=dtype)


def build_tiny(family: str, device: torch.device, dtype: torch.dtype, folder: Path) -> LdmModel:
    """The tests' tiny random model of ``family`` (64x64 px), loaded through the runtime's own loader."""
    build_tiny_model(folder, family, scheduler="dpmpp_2m")
    return load_pipeline(folder, device=device, dtype=dtype)


def stage_latencies(model: LdmModel, repeats: int, side_px: int = 512) -> dict[str, list[float]]:
    device = model.device
    base = Request(PROMPT, n_steps=1, seed=0, scheduler="dpmpp_2m",
                   guidance_scale=7.5, height_px=side_px, width_px=side_px, wire_dtype="float16")
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
    h, w = latents.shape[-2:]
    results[f"decode (VAE, {h}x{w} latent -> {8 * h}x{8 * w})"] = _time(
        lambda: DecodeStage(model.decoder)({"latents": latents}), device, repeats)
    return results


def es_request_latency(model: LdmModel, n_steps: list[int], side_px: int) -> dict[str, list[float]]:
    """The ES's U-Net time for a whole N-step request (CFG, k = N, tomesd 0), after one warm-up step."""
    req0 = model.resolve(Request(PROMPT, n_steps=1, seed=0, scheduler="dpmpp_2m", guidance_scale=7.5,
                                 height_px=side_px, width_px=side_px, wire_dtype="float16"))
    text = TextEncodeStage(model)({"request": req0})["text"]
    denoise = DenoiseStage(model, stop="end", tome_node="es")
    denoise({"request": req0, "text": text})  # warm-up (kernels, allocator)
    out = {}
    for n in n_steps:
        req = model.resolve(req0.replace(n_steps=n))
        out[f"ES denoise, N = {n} (CFG, batch 2)"] = _time(lambda r=req: denoise({"request": r, "text": text}),
                                                            model.device, 1, warmup=0)
    return out


def merge_methods() -> tuple[str | None, ...]:
    """The merge methods ``megbed.testbed.ldm.merging`` offers at run time; ``(None,)`` when it has a single, unnamed one.

    Looks for a ``MERGE_METHODS`` / ``METHODS`` collection (tuple, list or dict keys) and for a ``method`` /
    ``merge_method`` parameter of :func:`merge`, so this benchmark follows the module as methods are added.
    """
    params = inspect.signature(merging.merge).parameters
    if not ({"method", "merge_method"} & set(params)):
        return (None,)
    for name in ("MERGE_METHODS", "METHODS"):
        found = getattr(merging, name, None)
        if found:
            return tuple(str(m) for m in found)
    default = next(params[k].default for k in ("method", "merge_method") if k in params)
    return (None,) if default is inspect.Parameter.empty else (str(default),)


def _merge(latent: torch.Tensor, beta: float, method: str | None):
    if method is None:
        return merging.merge(latent, beta, 0)
    params = inspect.signature(merging.merge).parameters
    key = "method" if "method" in params else "merge_method"
    return merging.merge(latent, beta, 0, **{key: method})


def _request(method: str | None, **kwargs) -> Request:
    if method is not None and "merge_method" in inspect.signature(Request).parameters:
        kwargs["merge_method"] = method
    return Request(PROMPT, **kwargs)


def _payload_closed_form(shape: tuple[int, int, int], beta: float, method: str | None) -> int | None:
    params = inspect.signature(merged_payload_nbytes).parameters
    if method is None:
        return merged_payload_nbytes(shape, beta, "float16")
    for key in ("method", "merge_method"):
        if key in params:
            return merged_payload_nbytes(shape, beta, "float16", **{key: method})
    return None  # the closed form does not know the method: leave it out rather than report the wrong one


def handoff_bytes(families: tuple[tuple[str, tuple[int, int, int]], ...] = (("SD-1.5", (4, 64, 64)),
                                                                           ("SDXL", (4, 128, 128)))) -> list[dict]:
    rows = []
    for family, shape in families:
        latent = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        raw = latent.numel() * 2
        for method in merge_methods():
            for beta in BETAS:
                req = _request(method, n_steps=8, merge_ratio=beta, seed=0, scheduler="ddim",
                               height_px=8 * shape[1], width_px=8 * shape[2])
                h = Handoff.build(req, _merge(latent, beta, method), None)
                frame = h.to_frame()
                rows.append({"latent": family, "shape": "x".join(map(str, shape)), "beta": beta,
                             "merge_method": method or "default", "kind": "k = N", "handoff_bytes": h.nbytes,
                             "tokens_bytes": int(frame.buffers["merge.tokens"].nbytes),
                             "map_bytes": int(frame.buffers["merge.map"].nbytes),
                             "header_bytes": h.nbytes - frame.payload_nbytes,
                             "closed_form_payload_bytes": _payload_closed_form(shape, beta, method),
                             "vs_raw_fp16_latent": h.nbytes / raw})
        # hybrid: DPM++ 2M at k = N/2 carries its two model outputs as well
        req = Request(PROMPT, n_steps=8, es_steps=4, merge_ratio=0.5, seed=0, scheduler="dpmpp_2m",
                      height_px=8 * shape[1], width_px=8 * shape[2])
        sampler = new_sampler("dpmpp_2m", SD_NOISE_SCHEDULE, 8, 0)
        x = latent.clone()
        for i in range(4):
            x = sampler.scheduler.step(torch.tanh(x), sampler.timesteps[i], x, return_dict=False)[0]
            sampler.step = i + 1
        h = Handoff.build(req, merging.merge(x, 0.5, 0), sampler)
        frame = h.to_frame()
        rows.append({"latent": family, "shape": "x".join(map(str, shape)), "beta": 0.5, "merge_method": "default",
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
    p.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="model shape (default sd15)")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny model of the family (rehearsal, not a figure)")
    p.add_argument("--es-steps", type=int, nargs="*", default=[], metavar="N",
                   help="also time the ES's whole N-step denoise for each N (e.g. 4 8 12)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--bytes-only", action="store_true", help="only the handoff-bytes table")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                    "family": args.family, "tiny": args.tiny, "merge_methods": [m or "default" for m in merge_methods()]}
    print(f"handoff bytes (fp16 wire; k = N unless noted; merge methods: {', '.join(report['merge_methods'])})")
    print(f"{'latent':<7} {'shape':<9} {'method':<10} {'beta':>5} {'kind':<22} {'bytes':>8} {'tokens':>8} {'map':>5} "
          f"{'header':>6} {'x raw':>6}")
    families = (("SD-1.5", (4, 64, 64)), ("SDXL", (4, 128, 128)))
    if args.tiny:
        families = (("tiny", (4, 8, 8)),)
    rows = handoff_bytes(families)
    for r in rows:
        print(f"{r['latent']:<7} {r['shape']:<9} {r['merge_method']:<10} {r['beta']:>5.2f} {r['kind']:<22} "
              f"{r['handoff_bytes']:>8} {r['tokens_bytes']:>8} {r['map_bytes']:>5} {r['header_bytes']:>6} "
              f"{r['vs_raw_fp16_latent']:>6.3f}")
    report["handoff_bytes"] = rows
    if args.json:  # the bytes table first: a later stage that fails or times out leaves it written
        args.json.write_text(json.dumps(report, indent=2))

    if not args.bytes_only:
        device = torch.device(args.device)
        dtype = default_dtype(device)
        side_px = 64 if args.tiny else FAMILY_SIDE_PX[args.family]
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        print(f"\n{args.family}{' (tiny)' if args.tiny else ''} shapes, random weights, {side_px}x{side_px}, {device} "
              f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, load average {load}")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            if args.tiny:
                model = build_tiny(args.family, device, dtype, Path(tmp) / "model")
            else:
                model = build_sdxl(device, dtype) if args.family == "sdxl" else build_sd15(device, dtype)
        build_s = time.perf_counter() - t0
        unet_mparams = sum(p.numel() for p in model.unet.parameters()) / 1e6
        print(f"(built in {build_s:.1f} s; U-Net {unet_mparams:.0f} M params, tomesd max_downsample "
              f"{model.tome_max_downsample})")
        report.update({"build_s": build_s, "unet_mparams": unet_mparams, "side_px": side_px,
                       "dtype": str(dtype).removeprefix("torch.")})
        if device.type == "cuda":
            report["gpu_name"] = torch.cuda.get_device_name(device)
        with torch.inference_mode():
            latencies = stage_latencies(model, args.repeats, side_px)
            if args.es_steps:
                latencies.update(es_request_latency(model, args.es_steps, side_px))
        print(f"{'stage':<44} {'median':>11}  [min-max]")
        for name, samples in latencies.items():
            print(f"{name:<44} {_fmt(samples)}")
        steps = [v for k, v in latencies.items() if k.startswith("denoise")]
        if len(steps) == 2:
            report["tomesd_0.5_speedup_per_step"] = statistics.median(steps[0]) / statistics.median(steps[1])
            print(f"tomesd 0.5 speed-up per step: x{report['tomesd_0.5_speedup_per_step']:.2f}")
        if device.type == "cuda":
            report["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report["latency_s"] = latencies
        report["load_average_start"] = load
        report["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
