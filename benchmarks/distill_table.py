"""Base vs distilled UE decoder: the distortion table on held-out prompts, and distillation throughput.

* Table (always): for the model's distilled decoder (``<model>/ue_decoder`` or ``--decoder``), mean -ln MSE and PSNR
  against the N_ref-step reference over the held-out prompts, per beta in {0, .25, .5, .75} and link condition
  (noiseless, analog AWGN at 20 / 10 / 5 / 0 / -4 dB through the channel emulator, optionally the paper's sigma),
  averaged over N in ``--steps``; paired differences distilled - base with 95 % CIs; then beta 0 noiseless per N
  (N_ref included). The summary goes to ``--out`` (default ``<decoder>/distortion.csv``, which the analysis report's
  ``decoder_distortion`` figure reads).
* Throughput (``--throughput``): optimiser steps per second of the distillation loop's decoder step (forward,
  MSE, backward, AdamW) for the model's decoder on 64-px crops and whole images, and for an SD-1.5-size VAE decoder
  (random weights) on 256-px crops, on ``--device`` (``cuda`` with ``--amp bf16`` on a GPU machine).

Usage::

    python benchmarks/distill_table.py                         # the embedded default model (a few minutes, 2 cores)
    python benchmarks/distill_table.py --prompts-n 16 --throughput
    python benchmarks/distill_table.py --model ./sd15 --prompts prompts.txt --device cuda --guidance 7.5
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made U-Net steps ~15x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megbed.testbed.distill.cache import build_cache, make_key  # noqa: E402
from megbed.testbed.distill.config import NoiseConfig  # noqa: E402
from megbed.testbed.distill.decoder import TrainableDecoder  # noqa: E402
from megbed.testbed.distill.evaluate import conditions, evaluate, format_tables, summarize  # noqa: E402
from megbed.testbed.distill.link import TrainingLink  # noqa: E402
from megbed.testbed.distill.prompts import heldout_prompts  # noqa: E402
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD  # noqa: E402
from megbed.testbed.ldm.model import UE_DECODER_SUBFOLDER, check_decoder_fits, load_decoder, load_pipeline  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def table(args: argparse.Namespace, model, model_dir: Path) -> None:
    folder = Path(args.decoder) if args.decoder else model_dir / UE_DECODER_SUBFOLDER
    distilled = load_decoder(folder, device=model.device, dtype=model.dtype)
    check_decoder_fits(distilled, latent_channels=model.latent_channels, vae_scale_factor=model.vae_scale_factor,
                       where=str(folder))
    prompts = heldout_prompts(args.prompts, args.prompts_n)
    steps = sorted(set(args.steps) | {args.n_ref})
    key = make_key(model, prompts, steps, args.n_ref, args.guidance, None, 0.0, "float32")
    cache_dir = args.cache or Path(os.environ.get("TMPDIR", "/tmp")) / "megbed-distill-eval" / key.digest()
    t0 = time.perf_counter_ns()
    cache = build_cache(cache_dir, model, prompts, steps=steps, n_ref=args.n_ref, guidance_scale=args.guidance,
                        target_dtype="float32", progress=True)
    t1 = time.perf_counter_ns()
    link = TrainingLink(NoiseConfig(kind="snr"), "float16")  # the paper's link model: analog AWGN, MMSE
    from megbed.testbed.ldm.gate import gated_decoder

    decoders = {"base": model.base_decoder, "distilled": distilled}
    auto = gated_decoder(model.base_decoder, distilled, folder)
    if auto is not None:  # the 'auto' decoder: the calibrated gate between base and distilled
        decoders["auto"] = auto
    rows = evaluate(cache, decoders, steps=steps, betas=args.betas,
                    conds=conditions(args.snr_db, args.sigma), link=link, seed=0, progress=True,
                    merge_method=args.merge_method)
    t2 = time.perf_counter_ns()
    table_steps = [n for n in steps if n != args.n_ref]
    print(f"model {model_dir} | decoder {folder} | merge method {args.merge_method or DEFAULT_MERGE_METHOD} | "
          f"held-out prompts: {len(prompts)} | N_ref = {args.n_ref} | "
          f"wire float16 | link: channel_emu analog AWGN, MMSE")
    print(f"(latents cached in {(t1 - t0) / 1e9:.1f} s, {len(rows)} decodes scored in {(t2 - t1) / 1e9:.1f} s, "
          f"{torch.get_num_threads()} torch threads)\n")
    print(format_tables(rows, table_steps))
    if auto is not None:
        print(f"\n'auto' = base when the received latent's noise ratio <= {auto.rule.noise_ratio_max:.4f} and beta < "
              f"{auto.rule.merge_ratio_min:g}, else distilled; vs base:\n")
        print(format_tables(rows, table_steps, "base", "auto"))
        share = rows[rows["decoder"] == "auto"].groupby(["beta", "condition"], sort=False)["decoder_used"].apply(
            lambda s: (s == "distilled").mean())
        print("\nshare of latents the gate sent to the distilled decoder:")
        print(share.unstack("condition").round(2).to_string())
    out = args.out or folder / "distortion.csv"
    summarize(rows, table_steps).to_csv(out, index=False)
    print(f"\nsummary CSV: {out}")


def _steps_per_s(decoder: TrainableDecoder, batch: int, side: int, repeats: int, device: torch.device,
                 amp: str) -> float:
    opt = torch.optim.AdamW([p for _, p in decoder.named_trainable()], lr=1e-4)
    f = 8
    x = torch.randn(batch, 4, side, side, device=device)
    y = torch.rand(batch, 3, side * f, side * f, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter_ns()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pred = decoder(x)
        loss = ((pred.float() - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up allocators and kernels
            times.append((time.perf_counter_ns() - t) / 1e9)
    return 1.0 / (sum(times) / len(times))


def throughput(args: argparse.Namespace, model) -> None:
    from megbed.testing.random_weight_models import sd15_vae

    device = torch.device(args.device)
    print(f"\nDistillation step throughput on {device} (amp {args.amp}, {torch.get_num_threads()} torch threads): "
          "forward + MSE + backward + AdamW")
    dec = TrainableDecoder.from_model(model, device)
    side = model.default_size()[0] // model.vae_scale_factor
    for batch, crop in ((32, min(8, side)), (16, side)):
        sps = _steps_per_s(dec, batch, crop, args.repeats, device, args.amp)
        print(f"  model decoder, batch {batch:3d} x {crop * 8:4d} px: {sps:7.3f} steps/s = {sps * batch:8.2f} samples/s")
    sd = TrainableDecoder(sd15_vae().to(device))
    for batch, crop in (((1, 16) if device.type == "cpu" else (8, 32)),):
        sps = _steps_per_s(sd, batch, crop, max(1, args.repeats // 2), device, args.amp)
        print(f"  SD-1.5 VAE decoder (83 M, random), batch {batch} x {crop * 8} px: {sps:7.3f} steps/s = "
              f"{sps * batch:.2f} samples/s")
    if device.type == "cpu":
        print("  (no GPU on this machine: run with --device cuda --amp bf16 on one for the GPU figure)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded default model)")
    p.add_argument("--decoder", default=None, help="decoder folder (default <model>/ue_decoder)")
    p.add_argument("--prompts", default="shapes", help="'shapes' (held-out set) or a prompt file")
    p.add_argument("--prompts-n", type=int, default=32, help="held-out prompts (default 32)")
    p.add_argument("--steps", type=_ints, default=[4, 7, 10], help="N averaged in the table (default 4,7,10)")
    p.add_argument("--n-ref", type=int, default=12, help="reference steps (default 12)")
    p.add_argument("--betas", type=_floats, default=[0.0, 0.25, 0.5, 0.75])
    p.add_argument("--snr-db", type=_floats, default=[20.0, 10.0, 5.0, 0.0, -4.0])
    p.add_argument("--sigma", type=_floats, default=[], help="also the paper's Gaussian noise at these std")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--merge-method", default=None, help="merge method of the handoffs (default: the runtime's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="held-out latent cache folder")
    p.add_argument("--out", type=Path, default=None, help="summary CSV (default <decoder>/distortion.csv)")
    p.add_argument("--throughput", action="store_true", help="also time distillation steps")
    p.add_argument("--skip-table", action="store_true", help="only the throughput section")
    p.add_argument("--repeats", type=int, default=4, help="timed steps per throughput case")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from megbed.testbed.assets import default_model_dir

        args.model = default_model_dir()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" and args.amp != "none" else torch.float32
    model = load_pipeline(args.model, device=device, dtype=dtype)
    if not args.skip_table:
        table(args, model, Path(args.model))
    if args.throughput or args.skip_table:
        throughput(args, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
