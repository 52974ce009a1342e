"""Phase 4: train the text encoder (CLIPTextModel) and the U-Net (UNet2DConditionModel) together.

Each step: a batch of encoded training scenes, a caption drawn per scene (varied phrasing, distractor words,
``""`` with probability ``cfg_dropout`` for classifier-free guidance), a latent sampled from the VAE posterior and
scaled, uniform timesteps of the recipe's schedule (:func:`noise_schedule`) and its prediction type's loss,
weighted by min-SNR-gamma (Hang et al. 2023): epsilon ``min(SNR, gamma) / SNR``, which speeds up convergence of small
budgets; v-prediction (for a zero-terminal-SNR schedule) ``min(SNR + 1, gamma) / (SNR + 1)``, which unlike the
paper's ``min(SNR, gamma) / (SNR + 1)`` keeps full weight at SNR 0, the step where the layout is decided from the
prompt alone.
The text encoder can be held at its initialisation for the first ``text_freeze_steps`` (see ``UnetRecipe``).
An exponential moving average of both networks' weights (decay warmed up as ``min(decay, (1 + s) / (10 + s))``) is
what gets exported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from megbed.testbed.modeltrain.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    restore_modules,
    save_checkpoint,
)
from megbed.testbed.modeltrain.config import (
    NOISE_SCHEDULE,
    TrainConfig,
    noise_schedule,
    text_config,
    unet_config,
)
from megbed.testbed.modeltrain.data import LatentSet, derive_seed, step_rngs, training_caption
from megbed.testbed.modeltrain.progress import PhaseClock, Progress, stdout_log
from megbed.testbed.modeltrain.schedule import cycle_total, lr_at, set_lr
from megbed.testbed.modeltrain.tokenizer import load_tokenizer


def alphas_cumprod(cfg: TrainConfig | None = None) -> torch.Tensor:
    """``alpha_bar_t`` ``[T]`` (float32) of a recipe's schedule (:func:`noise_schedule`; None: SD's
    :data:`NOISE_SCHEDULE`), taken from diffusers' own DDPM scheduler so that training and sampling share one
    schedule (the last entry is exactly 0 with the zero-terminal-SNR rescale)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(noise_schedule(cfg)).alphas_cumprod.to(torch.float32).clone()


def new_networks(cfg: TrainConfig, tokenizer) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Freshly initialised ``(text_encoder, unet)`` (initialisation seeded from ``cfg.seed``)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(derive_seed(cfg.seed, "text-init"))
    te = CLIPTextModel(CLIPTextConfig(**text_config(cfg, len(tokenizer), tokenizer.bos_token_id,
                                                    tokenizer.eos_token_id, tokenizer.pad_token_id)))
    torch.manual_seed(derive_seed(cfg.seed, "unet-init"))
    unet = UNet2DConditionModel(**unet_config(cfg))
    return te, unet


def tokenize(tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    """Token ids ``[B, L]`` padded / truncated to ``max_length`` exactly as ``StableDiffusionPipeline`` does."""
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


class Ema:
    """Exponential moving average of the floating-point parameters and buffers of named modules."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for n, m in modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[n][k]
                if v.is_floating_point():
                    s.lerp_(v.detach(), 1.0 - d)
                else:
                    s.copy_(v)


def diffusion_loss(te, unet, latents: torch.Tensor, ids: torch.Tensor, acp: torch.Tensor,
                   generator: torch.Generator, gamma: float,
                   prediction_type: str = NOISE_SCHEDULE["prediction_type"]) -> tuple[torch.Tensor, dict]:
    """SNR-weighted diffusion loss of one batch of scaled latents ``[B, 4, H, W]`` and token ids ``[B, L]``.

    ``prediction_type`` ``"v_prediction"`` (target ``sqrt(ab) eps - sqrt(1 - ab) x0``, weight
    ``min(SNR + 1, gamma) / (SNR + 1)``) or ``"epsilon"`` (weight ``min(SNR, gamma) / SNR``); ``gamma <= 0`` turns
    the weighting off.
    """
    b = latents.shape[0]
    t = torch.randint(0, acp.shape[0], (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    ab = acp[t].view(b, 1, 1, 1)
    noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
    hidden = te(ids)[0]
    pred = unet(noisy, t, encoder_hidden_states=hidden).sample
    snr = acp[t] / (1 - acp[t])
    if prediction_type == "v_prediction":
        target = ab.sqrt() * noise - (1 - ab).sqrt() * latents
        weight = torch.clamp(snr + 1, max=gamma) / (snr + 1)
    elif prediction_type == "epsilon":
        target = noise
        weight = torch.clamp(snr, max=gamma) / snr
    else:
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    if gamma <= 0:
        weight = torch.ones_like(snr)
    per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    loss = (weight * per).mean()
    return loss, {"loss": float(loss.detach()), "mse": float(per.detach().mean())}


def train_unet(cfg: TrainConfig, out_dir: str | Path, latents: LatentSet, scaling_factor: float, *,
               log: Callable[[str], None] = stdout_log, steps: int | None = None) -> Path:
    """Train (or resume) text encoder + U-Net in ``out_dir/unet_ckpt``; write the EMA weights to
    ``out_dir/unet_final/{text_encoder,unet}`` (diffusers / transformers folders, float32).

    ``latents`` holds the *unscaled* VAE posteriors; ``scaling_factor`` is the VAE's.
    """
    out_dir = Path(out_dir)
    ckpt_dir, final_dir = out_dir / "unet_ckpt", out_dir / "unet_final"
    r = cfg.unet
    total = r.steps if steps is None else steps
    tokenizer = load_tokenizer(out_dir / "tokenizer")
    te, unet = new_networks(cfg, tokenizer)
    nets = {"text_encoder": te, "unet": unet}
    params = [p for m in nets.values() for p in m.parameters()]
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr_scale": 1.0},
                             {"params": list(te.parameters()), "lr_scale": r.text_lr_scale}],
                            lr=r.lr, weight_decay=r.weight_decay)
    ema = Ema(nets, r.ema_decay)
    start, clock = 0, PhaseClock()
    if has_checkpoint(ckpt_dir):
        ck = load_checkpoint(ckpt_dir)
        restore_modules(ck, nets, opt)
        for n in nets:
            ema.shadow[n] = ck.ema[n]
        start = int(ck.state["step"])
        clock = PhaseClock(ck.state.get("wall_s", 0.0), ck.state.get("cpu_s", 0.0))
        log(f"[unet] resuming at step {start} (spent {clock.wall_before_s:.0f} s wall, {clock.cpu_before_s:.0f} cpu-s)")
    acp = alphas_cumprod(cfg)
    progress = Progress("unet", total, clock, start=start, log=log)
    for m in nets.values():
        m.train()
    parts: dict = {"loss": float("nan")}
    for step in range(start, total):
        rng, gen = step_rngs(cfg.seed, "unet", step)
        idx = torch.from_numpy(rng.integers(0, len(latents), size=r.batch_size))
        caps = [training_caption(latents.objects[int(i)], rng, r.cfg_dropout, r.distractor_prob) for i in idx]
        ids = tokenize(tokenizer, caps, cfg.text.max_length)
        eps = torch.randn(latents.mean[idx].shape, generator=gen)
        x0 = (latents.mean[idx] + latents.std[idx] * eps) * scaling_factor
        cycle = cycle_total(step, total, tuple(r.lr_restart_steps))
        set_lr(opt, lr_at(step, total=cycle, lr=r.lr, lr_min=r.lr_min, warmup=r.warmup_steps))
        te.requires_grad_(step >= r.text_freeze_steps)
        loss, parts = diffusion_loss(te, unet, x0, ids, acp, gen, r.min_snr_gamma, r.prediction_type)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[unet] loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
        opt.step()
        ema.update(nets, step)
        done = step + 1
        progress.update(done, **parts)
        if done % r.checkpoint_every == 0 or done == total:
            save_checkpoint(ckpt_dir, done, modules=nets, ema=ema.shadow, optimizer=opt,
                            state={**clock.as_dict(), "loss": parts["loss"]})
    for n, m in nets.items():
        m.load_state_dict(ema.shadow[n])
        m.save_pretrained(final_dir / n, safe_serialization=True)
    report = {"steps": total, **clock.as_dict(), "final_loss": parts["loss"],
              "params": {n: sum(p.numel() for p in m.parameters()) for n, m in nets.items()}}
    (final_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    log(f"[unet] done: {total} steps, {clock.wall_s:.0f} s wall, {clock.cpu_s:.0f} cpu-s")
    return final_dir
