"""The embedded default model: size, generation latency at 20 steps, and the quality trade-off vs N, beta, noise.

* Size: parameters and bytes on disk per component (the whole folder, as shipped).
* Latency: one 128x128 image, prompt -> PIL-ready array, 20 steps (the model's default sampler, CFG batch 2), on
  ``--threads`` CPU threads (default 2), median of ``--repeats`` after one warm-up; wall (perf_counter_ns) and
  process CPU time, with the load average (the CPU is shared, so wall times include other people's work).
* Quality tables, against the N_max-step reference image of the same prompt and seed (beta 0, no noise), mean over
  ``--prompts`` held-out prompts:
  - -ln MSE and PSNR vs N in {2, 4, 8, 12, 20} and beta in {0, .25, .5, .75}: the final latent after N steps is
    merged with ``testbed.ldm.merging.merge(latent, beta, seed)``, un-merged and decoded (the paper's split at
    k = N);
  - the same vs latent noise sigma in {0, .05, .1, .2, .32} (Gaussian noise on the merged values, as the paper's
    channel model; latents are in U-Net space, unit std) at beta 0 and 0.5.

Usage::

    python benchmarks/default_model.py                 # everything (a few minutes on 2 cores)
    python benchmarks/default_model.py --prompts 8     # quicker tables
    python benchmarks/default_model.py --skip-latency --json out.json
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (a shared CPU otherwise loses most of its time to spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.assets import default_model_dir  # noqa: E402
from testbed.ldm.merging import merge, unmerge  # noqa: E402
from testbed.ldm.metrics import neg_log_mse, psnr_db  # noqa: E402
from testbed.modeltrain.evaluate import load_sd_pipeline  # noqa: E402
from testbed.modeltrain.export import read_model_meta  # noqa: E402
from testbed.shapes.dataset import heldout_prompts  # noqa: E402

STEPS = (2, 4, 8, 12, 20)
BETAS = (0.0, 0.25, 0.5, 0.75)
SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.32)


def model_size(model_dir: Path, pipe) -> dict:
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    per = {}
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        per[name] = {"params": sum(p.numel() for p in module.parameters()),
                     "bytes": sum(p.stat().st_size for p in files if p.relative_to(model_dir).parts[0] == name)}
    dec = pipe.vae.decoder
    per["vae_decoder_only"] = {"params": sum(p.numel() for p in dec.parameters())
                               + sum(p.numel() for p in pipe.vae.post_quant_conv.parameters())}
    return {"total_bytes": sum(p.stat().st_size for p in files), "components": per}


def latency(pipe, steps: int, guidance: float, repeats: int) -> dict:
    prompt = "a large red circle on the left and a small blue square at the top"

    def once(seed: int) -> None:
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(seed), output_type="np")

    once(0)
    walls, cpus = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        once(i + 1)
        walls.append((time.perf_counter_ns() - t0) / 1e9)
        cpus.append((time.process_time_ns() - c0) / 1e9)
    return {"steps": steps, "wall_s_median": statistics.median(walls), "wall_s": walls,
            "cpu_s_median": statistics.median(cpus), "load_avg_1min": os.getloadavg()[0]}


@torch.no_grad()
def final_latents(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 16):
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        out.append(pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        output_type="latent").images)
    return torch.cat(out)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (img.float() / 2 + 0.5).clamp(0, 1)


def degrade(latents: torch.Tensor, beta: float, sigma: float, seed: int) -> torch.Tensor:
    """Merge at ``beta``, add N(0, sigma^2) to the merged values (the paper's channel), un-merge."""
    m = merge(latents, beta, seed)
    if sigma > 0:
        g = torch.Generator().manual_seed(seed + 1)
        m.tokens = m.tokens + sigma * torch.randn(m.tokens.shape, generator=g, dtype=m.tokens.dtype)
    return unmerge(m)


def quality_tables(pipe, n_prompts: int, guidance: float, n_max: int) -> dict:
    ev = heldout_prompts(n_prompts)
    prompts, seeds = [p.prompt for p in ev], [p.seed for p in ev]
    lat = {n: final_latents(pipe, prompts, seeds, n, guidance) for n in sorted(set(STEPS) | {n_max})}
    ref = decode(pipe, lat[n_max])

    def score(img: torch.Tensor) -> tuple[float, float]:
        return float(neg_log_mse(img, ref).mean()), float(psnr_db(img, ref).mean())

    by_beta = {n: {b: score(decode(pipe, degrade(lat[n], b, 0.0, 7))) for b in BETAS} for n in STEPS}
    by_sigma = {b: {n: {s: score(decode(pipe, degrade(lat[n], b, s, 7))) for s in SIGMAS} for n in STEPS}
                for b in (0.0, 0.5)}
    return {"n_prompts": n_prompts, "n_max": n_max, "guidance_scale": guidance, "by_beta": by_beta,
            "by_sigma": by_sigma}


def print_tables(q: dict) -> None:
    print(f"\nQuality vs the {q['n_max']}-step reference (same prompt and seed), mean over {q['n_prompts']} held-out "
          f"prompts, guidance {q['guidance_scale']}: -ln MSE / PSNR dB")
    print("| N \\ beta | " + " | ".join(f"{b:g}" for b in BETAS) + " |")
    print("|---|" + "---|" * len(BETAS))
    for n, row in q["by_beta"].items():
        print(f"| {n} | " + " | ".join(f"{v[0]:.2f} / {v[1]:.1f}" for v in row.values()) + " |")
    for b, table in q["by_sigma"].items():
        print(f"\nLatent noise sigma (on the merged values), beta {b:g}: -ln MSE / PSNR dB")
        print("| N \\ sigma | " + " | ".join(f"{s:g}" for s in SIGMAS) + " |")
        print("|---|" + "---|" * len(SIGMAS))
        for n, row in table.items():
            print(f"| {n} | " + " | ".join(f"{v[0]:.2f} / {v[1]:.1f}" for v in row.values()) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations (after one warm-up)")
    ap.add_argument("--prompts", type=int, default=32, help="held-out prompts in the quality tables")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    meta = read_model_meta(model_dir)
    steps = int(meta.get("default_num_inference_steps", 20))
    guidance = float(meta.get("default_guidance_scale", 5.0))
    pipe = load_sd_pipeline(model_dir)
    out: dict = {"model": str(model_dir), "threads": torch.get_num_threads(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "scheduler": type(pipe.scheduler).__name__}
    size = model_size(model_dir, pipe)
    out["size"] = size
    print(f"model {model_dir} ({out['scheduler']}, default {steps} steps, guidance {guidance})")
    print(f"size on disk: {size['total_bytes'] / 1e6:.2f} MB")
    for name, v in size["components"].items():
        extra = f", {v['bytes'] / 1e6:.2f} MB" if "bytes" in v else ""
        print(f"  {name}: {v['params'] / 1e6:.3f} M params{extra}")
    if not args.skip_latency:
        lat = latency(pipe, 20, guidance, args.repeats)
        out["latency"] = lat
        print(f"\ngeneration latency, 128x128, 20 steps, CFG, {out['threads']} threads "
              f"(OMP_WAIT_POLICY={out['omp_wait_policy']}): median {lat['wall_s_median']:.2f} s wall "
              f"({', '.join(f'{w:.2f}' for w in lat['wall_s'])}), {lat['cpu_s_median']:.2f} cpu-s; "
              f"load average {lat['load_avg_1min']:.1f}")
    if not args.skip_quality:
        q = quality_tables(pipe, args.prompts, guidance, steps)
        out["quality"] = q
        print_tables(q)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
