"""Phase 2: train the ``AutoencoderKL`` on random crops of rendered scenes.

Loss: L1 + ``mse_weight`` * MSE (pixels in [-1, 1]) + ``kl_weight`` * KL (mean per latent value). The VAE has no
mid-block attention, so it is fully convolutional and crops teach it the full 128x128 images. At the end the
latent scale (``scaling_factor = 1 / std`` of sampled latents of full images, as SD does) is measured and stored
in the VAE config, and the reconstruction PSNR on held-out renders is logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megbed.testbed.modeltrain.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    restore_modules,
    save_checkpoint,
)
from megbed.testbed.modeltrain.config import TrainConfig, vae_config
from megbed.testbed.modeltrain.data import derive_seed, step_rngs, to_unit_range, vae_crops
from megbed.testbed.modeltrain.progress import PhaseClock, Progress, stdout_log
from megbed.testbed.modeltrain.schedule import lr_at, set_lr
from megbed.testbed.shapes.dataset import generate
from megbed.testbed.shapes.render import render
from megbed.testbed.shapes.scene import sample_dense_scene

SCALE_IMAGES = 256
EVAL_IMAGES = 64


def new_vae(cfg: TrainConfig):
    """A freshly initialised VAE (initialisation seeded from ``cfg.seed``).

    The log-variance half of ``quant_conv`` starts at ``cfg.vae.init_logvar`` (weights zero) instead of about 0:
    with the weak KL weight SD uses, the posterior std ends up small anyway, and starting there spares the
    decoder hundreds of steps of learning through latent noise as large as the latents themselves.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(derive_seed(cfg.seed, "vae-init"))
    vae = AutoencoderKL(**vae_config(cfg))
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:].zero_()
        vae.quant_conv.bias[c:].fill_(cfg.vae.init_logvar)
    return vae


def vae_pool(cfg: TrainConfig) -> np.ndarray:
    """Training images of the autoencoder ``[N, H, W, 3]`` uint8: a fraction ``dense_fraction`` of dense scenes
    (many shapes, see :func:`megbed.testbed.shapes.scene.sample_dense_scene`), the rest grammar scenes (train split)."""
    r = cfg.vae
    n_dense = int(round(r.pool_images * r.dense_fraction))
    grammar = generate(r.pool_images - n_dense, seed=derive_seed(cfg.seed, "vae-pool"), split="train",
                       size_px=cfg.image_size_px).images
    rng = np.random.default_rng(derive_seed(cfg.seed, "vae-dense"))
    dense = np.stack([render(sample_dense_scene(rng), cfg.image_size_px) for _ in range(n_dense)]) if n_dense else \
        np.zeros((0, *grammar.shape[1:]), np.uint8)
    return np.concatenate([dense, grammar])


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    post = vae.encode(x).latent_dist
    z = post.sample(generator=generator)
    y = vae.decode(z).sample
    l1 = (y - x).abs().mean()
    mse = F.mse_loss(y, x)
    kl = post.kl().mean() / z[0].numel()
    loss = l1 + cfg.vae.mse_weight * mse + cfg.vae.kl_weight * kl
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def measure_scale(vae, images_u8: np.ndarray, generator: torch.Generator, batch: int = 64) -> tuple[float, float]:
    """``(scaling_factor, mean)`` of sampled latents of full images: SD's 1 / std recipe."""
    zs = []
    for i in range(0, len(images_u8), batch):
        zs.append(vae.encode(to_unit_range(images_u8[i:i + batch])).latent_dist.sample(generator=generator))
    z = torch.cat(zs)
    return float(1.0 / z.std()), float(z.mean())


@torch.no_grad()
def reconstruction_psnr_db(vae, images_u8: np.ndarray, batch: int = 32) -> float:
    """Mean PSNR (dB, peak 1) of ``decode(mean(encode(x)))`` over ``images_u8``."""
    vals = []
    for i in range(0, len(images_u8), batch):
        x = to_unit_range(images_u8[i:i + batch])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = (((y - x) / 2) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        vals.append(10 * torch.log10(1 / mse))
    return float(torch.cat(vals).mean())


def train_vae(cfg: TrainConfig, out_dir: str | Path, *, log: Callable[[str], None] = stdout_log,
              steps: int | None = None) -> Path:
    """Train (or resume) the VAE in ``out_dir/vae_ckpt``; write the final model to ``out_dir/vae_final``.

    Returns the ``vae_final`` folder (a diffusers ``AutoencoderKL`` folder, float32, scaling factor set).
    """
    out_dir = Path(out_dir)
    ckpt_dir, final_dir = out_dir / "vae_ckpt", out_dir / "vae_final"
    r = cfg.vae
    total = r.steps if steps is None else steps
    vae = new_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    start, clock = 0, PhaseClock()
    if has_checkpoint(ckpt_dir):
        ck = load_checkpoint(ckpt_dir)
        restore_modules(ck, {"vae": vae}, opt)
        start = int(ck.state["step"])
        clock = PhaseClock(ck.state.get("wall_s", 0.0), ck.state.get("cpu_s", 0.0))
        log(f"[vae] resuming at step {start} (spent {clock.wall_before_s:.0f} s wall, {clock.cpu_before_s:.0f} cpu-s)")
    pool = vae_pool(cfg)
    progress = Progress("vae", total, clock, start=start, log=log)
    vae.train()
    for step in range(start, total):
        rng, gen = step_rngs(cfg.seed, "vae", step)
        x = vae_crops(pool, rng, r.batch_size, r.crop_px)
        set_lr(opt, lr_at(step, total=total, lr=r.lr, lr_min=r.lr_min, warmup=r.warmup_steps))
        loss, parts = vae_loss(vae, x, gen, cfg)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[vae] loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), r.grad_clip)
        opt.step()
        done = step + 1
        progress.update(done, **parts)
        if done % r.checkpoint_every == 0 or done == total:
            save_checkpoint(ckpt_dir, done, modules={"vae": vae}, optimizer=opt,
                            state={**clock.as_dict(), "loss": parts["loss"]})
    vae.eval()
    # the scale of the latents the U-Net will model: grammar scenes (the pool's tail), not the dense ones
    scale, mean = measure_scale(vae, pool[-SCALE_IMAGES:], torch.Generator().manual_seed(derive_seed(cfg.seed, "scale")))
    vae.register_to_config(scaling_factor=scale)
    held = generate(min(EVAL_IMAGES, r.pool_images), seed=derive_seed(cfg.seed, "vae-eval"), split="heldout",
                    size_px=cfg.image_size_px).images
    psnr = reconstruction_psnr_db(vae, held)
    vae.save_pretrained(final_dir, safe_serialization=True)
    report = {"steps": total, **clock.as_dict(), "scaling_factor": scale, "latent_mean": mean,
              "reconstruction_psnr_db": psnr, "final_loss": float(load_checkpoint(ckpt_dir).state.get("loss", "nan"))}
    (final_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    log(f"[vae] done: {total} steps, {clock.wall_s:.0f} s wall, {clock.cpu_s:.0f} cpu-s; scaling_factor "
        f"{scale:.4f}; held-out reconstruction PSNR {psnr:.2f} dB")
    return final_dir
