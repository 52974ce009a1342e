"""UE peak memory and decode latency: whole-pipeline load vs role-aware decode-only vs decode-only + VAE tiling.

Two models, each case in its own subprocess (a clean RSS high-water mark per case; ``VmHWM`` of the child):

* ``sdxl``: SDXL-shaped, random weights, fp32 on CPU, 1024 x 1024 output from a 4 x 128 x 128 latent. Built from
  the SDXL base configs written out below (never downloaded). The whole pipeline (U-Net 2.6 B parameters, CLIP-L
  and OpenCLIP-bigG text encoders, VAE) is materialised with ``meta`` device construction + ``to_empty`` + zero
  fill (touching every page, so it is resident as a loaded checkpoint would be) -- random init of 3.5 B parameters
  would take many CPU-minutes and changes neither memory nor latency. The VAE is randomly initialised (seeded).
* ``default``: the embedded default model, loaded from its folder through ``load_pipeline`` (whole) and
  ``load_pipeline(role="ue", plans=["meg"])`` (role-aware, lazy), 128 x 128 output at its native size, and at
  1024 x 1024 so that tiling has something to tile.

Per case: ``peak_rss_mb`` (VmHWM over the child's whole life: load + one decode), ``decode_s`` (one decode, after one
warm-up for the default model only: SDXL's fp32 1024^2 decode is minutes on one core) and, against the non-tiled
decode of the same latent, ``max_abs_diff`` of the tiled image (the quality effect of tiling; tiles are blended).
Goal: SDXL decode-only with tiling <= 2 GB peak RSS.

    /work/helpers/heavy 900 .venv/bin/python benchmarks/node_memory.py [--models sdxl default] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                                                 "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 1024,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "scaling_factor": 0.13025, "force_upcast": True,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "max_position_embeddings": 77, "projection_dim": 768, "vocab_size": 49408}
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
             "max_position_embeddings": 77, "projection_dim": 1280, "vocab_size": 49408, "hidden_act": "gelu"}


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return float("nan")


def _materialise(build):
    """A module built on the meta device, then given real (zeroed, resident) storage: a loaded checkpoint's memory."""
    import torch

    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.zero_()
    return module.eval()


def _sdxl_case(case: str, out: dict) -> tuple:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from megbed.testbed.ldm.model import VaeDecoder

    torch.manual_seed(0)
    keep = []
    if case == "whole":
        keep.append(_materialise(lambda: UNet2DConditionModel(**SDXL_UNET)))
        keep.append(_materialise(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))))
        keep.append(_materialise(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))))
        out["params_loaded_m"] = sum(p.numel() for m in keep for p in m.parameters()) / 1e6
    vae = AutoencoderKL(**SDXL_VAE).eval()
    out["params_loaded_m"] = out.get("params_loaded_m", 0.0) + sum(p.numel() for p in vae.parameters()) / 1e6
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 128, 128, generator=gen)
    return VaeDecoder(vae), latents, keep


def _default_case(case: str, out: dict, size_px: int) -> tuple:
    import torch

    from megbed.testbed.assets import default_model_dir
    from megbed.testbed.ldm.model import load_pipeline

    model = (load_pipeline(default_model_dir(), device="cpu") if case == "whole"
             else load_pipeline(default_model_dir(), device="cpu", role="ue", plans=["meg"]))
    decoder = model.base_decoder
    if case == "tiled":
        model.set_vae_tiling(True)
    out["components_loaded"] = ("all" if case == "whole" else ",".join(model.loaded_components))
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, size_px // 8, size_px // 8, generator=gen)
    return decoder, latents, [model]


def child(model: str, case: str, threads: int, size_px: int, save: Path | None) -> None:
    import torch

    torch.set_num_threads(threads)
    out: dict = {"model": model, "case": case, "size_px": size_px}
    t0 = time.monotonic()
    if model == "sdxl":
        decoder, latents, _keep = _sdxl_case(case, out)
    else:
        decoder, latents, _keep = _default_case(case, out, size_px)
    if case == "tiled":
        from megbed.testbed.ldm.model import set_vae_tiling

        set_vae_tiling(decoder.vae, True)  # what LdmModel.set_vae_tiling does (512 px tiles at most)
        out["tile_px"] = int(decoder.vae.tile_sample_min_size)
    out["load_s"] = time.monotonic() - t0
    out["rss_after_load_mb"] = _vmhwm_mb()
    if model != "sdxl":
        decoder.decode(latents)  # warm-up
    t1 = time.monotonic()
    image = decoder.decode(latents)
    out["decode_s"] = time.monotonic() - t1
    out["peak_rss_mb"] = _vmhwm_mb()
    out["image_shape"] = list(image.shape)
    if save is not None:
        torch.save(image, save)
    print("RESULT " + json.dumps(out), flush=True)


def run_case(model: str, case: str, threads: int, size_px: int, save: Path | None) -> dict:
    argv = [sys.executable, __file__, "--child", model, case, "--threads", str(threads), "--size", str(size_px)]
    if save is not None:
        argv += ["--save", str(save)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"model": model, "case": case, "size_px": size_px,
            "error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:120]}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "sdxl"], choices=("default", "sdxl"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.threads, args.size, args.save)
        return 0
    import tempfile

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for model in args.models:
            sizes = [1024] if model == "sdxl" else [128, args.size]
            for size in sizes:
                for case in ("whole", "decode_only", "tiled"):
                    runs.append((model, case, size))
        for model, case, size in runs:
            save = Path(tmp) / f"{model}-{case}-{size}.pt"
            row = run_case(model, case, args.threads, size, save)
            if case == "tiled" and save.exists():
                ref = Path(tmp) / f"{model}-decode_only-{size}.pt"
                if ref.exists():
                    row["max_abs_diff"] = float((torch.load(save) - torch.load(ref)).abs().max())
                    row["psnr_vs_untiled_db"] = float(-10 * torch.log10(
                        ((torch.load(save) - torch.load(ref)) ** 2).mean().clamp_min(1e-12)))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"UE decode: peak RSS (VmHWM of a fresh process: load + one decode), {args.threads} torch thread(s), fp32 CPU")
    print(f"{'model':8s} {'out px':>7s} {'case':12s} {'params M':>9s} {'load s':>7s} {'peak RSS MB':>12s} "
          f"{'decode s':>9s} {'tiled vs untiled':>18s}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:8s} {r['size_px']:7d} {r['case']:12s} FAILED {r['error']}")
            continue
        q = (f"PSNR {r['psnr_vs_untiled_db']:.1f} dB" if "psnr_vs_untiled_db" in r else "")
        params = f"{r['params_loaded_m']:.0f}" if "params_loaded_m" in r else r.get("components_loaded", "")
        print(f"{r['model']:8s} {r['size_px']:7d} {r['case']:12s} {params:>9s} {r['load_s']:7.1f} "
              f"{r['peak_rss_mb']:12.0f} {r['decode_s']:9.2f} {q:>18s}")
    sdxl_tiled = [r for r in rows if r.get("model") == "sdxl" and r.get("case") == "tiled" and "peak_rss_mb" in r]
    if sdxl_tiled:
        mb = sdxl_tiled[0]["peak_rss_mb"]
        print(f"\ngoal: SDXL decode-only + tiling <= 2048 MB peak RSS: {mb:.0f} MB -> {'met' if mb <= 2048 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
