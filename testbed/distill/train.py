"""The distillation loop: one UE decoder for every (N, beta, link) the policy may pick.

Each optimiser step draws ``batch_size`` tuples from a generator seeded with ``(seed, step)``: a training prompt, N
from the cached steps, beta ~ U[0, beta_max], a link condition (:class:`~megbed.testbed.distill.link.TrainingLink`) and,
with ``crop_latent``, a crop position. The input is that prompt's cached ES latent after N steps, merged, sent
through the link and un-merged (:meth:`TrainingLink.receive`); the target is its reference image (N_ref steps,
beta 0, noiseless, base VAE). Loss: per-sample MSE, averaged as ln(MSE + ``log_mse_floor``) by default (+ ``perceptual_weight`` x LPIPS when local weights exist). AdamW with a
linear warm-up and a cosine decay to ``lr_min`` (:func:`lr_at`, a pure function of the step).

Because every draw depends only on (config, step), a run resumed from a checkpoint takes exactly the steps the
uninterrupted run would have taken (bit-identical parameters on the same device and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megbed.testbed.distill.cache import LatentCache
from megbed.testbed.distill.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from megbed.testbed.distill.config import DistillConfig, DistillConfigError
from megbed.testbed.distill.decoder import TrainableDecoder, export_decoder, stored_dtype
from megbed.testbed.distill.link import NoiseDraw, TrainingLink
from megbed.testbed.ldm.model import UE_DECODER_SUBFOLDER, LdmModel

log = logging.getLogger(__name__)

# Settings that may change when a run is resumed (they do not alter the steps' arithmetic on one device).
RESUMABLE_CHANGES = frozenset({"device", "threads", "checkpoint_every", "keep_checkpoints", "val_every",
                               "export_dtype"})
VAL_STREAM = 0x5EED_0001
VAL_DRAWS_PER_PROMPT = 4
LOG_FILE = "train_log.jsonl"


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up to ``lr``, cosine decay to ``lr_min``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Sample:
    """One training tuple.

    Attributes
    ----------
    prompt_index : int
        Row of the latent cache.
    n_steps : int
        ES steps N.
    beta : float
        Merge ratio.
    draw : NoiseDraw
        Link condition.
    crop : tuple[int, int] or None
        Top-left latent cell of the crop.
    """

    prompt_index: int
    n_steps: int
    beta: float
    draw: NoiseDraw
    crop: tuple[int, int] | None = None


class PerceptualLoss:
    """LPIPS (``lpips`` package) from backbone weights already in the torch hub cache; never downloads."""

    def __init__(self, device: torch.device, net: str = "alex") -> None:
        try:
            import lpips  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DistillConfigError("perceptual_weight > 0 needs the lpips package (and its backbone weights in the "
                                     "torch hub cache; megbed never downloads); use perceptual_weight 0") from exc
        from megbed.testbed.ldm.feature_metrics import LPIPS_BACKBONE_FILES

        cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
        if not cached.is_file():
            raise DistillConfigError(f"perceptual_weight > 0 needs the LPIPS backbone weights at {cached} "
                                     "(megbed never downloads); use perceptual_weight 0")
        self.net = lpips.LPIPS(net=net, verbose=False).to(device).eval().requires_grad_(False)

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(image * 2 - 1, target * 2 - 1).mean()


class Distiller:
    """Trains a UE decoder on a latent cache.

    Parameters
    ----------
    model : LdmModel
        The base model (its VAE initialises the decoder; nothing else is used).
    cache : LatentCache
        Latents and targets: the first ``len(cache) - config.val_prompts`` prompts train, the rest validate.
    config : DistillConfig
    run_dir : path
        Checkpoints, the training log and the exported decoder go here.
    init_decoder : path, optional
        Start from this decoder folder instead of the base VAE.
    log_line : callable, optional
        Where one-line messages go (default: the module logger).
    """

    def __init__(self, model: LdmModel, cache: LatentCache, config: DistillConfig, run_dir: str | Path, *,
                 init_decoder: str | Path | None = None, log_line: Callable[[str], None] | None = None) -> None:
        self.cfg = config
        self.model = model
        self.cache = cache
        self.run_dir = Path(run_dir)
        self.log_line = log_line or log.info
        if config.threads:
            torch.set_num_threads(config.threads)
        missing = [n for n in config.step_choices() if n not in cache.steps]
        if missing:
            raise DistillConfigError(f"the latent cache has N={cache.steps}, the config draws N={config.step_choices()}")
        self.num_train = len(cache) - config.val_prompts
        if self.num_train < 1:
            raise DistillConfigError(f"the cache holds {len(cache)} prompts, {config.val_prompts} of them for "
                                     "validation: none left to train on")
        self.device = torch.device(config.device)
        self.decoder = (TrainableDecoder.from_folder(init_decoder, model, self.device) if init_decoder
                        else TrainableDecoder.from_model(model, self.device))
        self.init_decoder = None if init_decoder is None else str(init_decoder)
        if config.gradient_checkpointing:
            self.decoder.enable_gradient_checkpointing()
        self.param_names = [n for n, _ in self.decoder.named_trainable()]
        self.optimizer = torch.optim.AdamW([p for _, p in self.decoder.named_trainable()], lr=config.lr,
                                           betas=tuple(config.betas_adam), weight_decay=config.weight_decay)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.perceptual = PerceptualLoss(self.device) if config.perceptual_weight > 0 else None
        self.link = TrainingLink(config.noise, config.wire_dtype)
        self.factor = model.vae_scale_factor
        self.step = 0
        self.samples_seen = 0
        self.train_wall_s = 0.0
        self.val_history: list[dict[str, float]] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.fingerprint = model.fingerprint()

    # --- data --------------------------------------------------------------------------------------------------------

    def _crop_side(self) -> int | None:
        c = self.cfg.crop_latent
        h, w = self.cache.latent_shape[1:]
        return c if c is not None and c < min(h, w) else None

    def plan(self, step: int) -> list[Sample]:
        """The tuples of optimiser step ``step`` (a pure function of the config's seed and ``step``)."""
        rng = np.random.default_rng([self.cfg.seed, int(step)])
        steps = self.cfg.step_choices()
        side = self._crop_side()
        h, w = self.cache.latent_shape[1:]
        out = []
        for _ in range(self.cfg.batch_size):
            i = int(rng.integers(self.num_train))
            n = steps[int(rng.integers(len(steps)))]
            beta = float(rng.uniform(0.0, self.cfg.beta_max))
            draw = self.link.draw(rng)
            crop = None
            if side is not None:
                crop = (int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1)))
            out.append(Sample(i, n, beta, draw, crop))
        return out

    def assemble(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Received latents ``[B, C, h', w']`` and targets ``[B, 3, H', W']`` (float32, CPU) for ``samples``."""
        xs, ys = [], []
        f = self.factor
        for s in samples:
            seed = self.cache.prompts[s.prompt_index].seed
            x = self.link.receive(self.cache.latent(s.prompt_index, s.n_steps), s.beta, seed, s.draw,
                                  self.cfg.merge_method).latent
            y = self.cache.target(s.prompt_index)
            if s.crop is not None:
                c, (r0, c0) = self._crop_side(), s.crop
                x = x[:, r0:r0 + c, c0:c0 + c]
                y = y[:, r0 * f:(r0 + c) * f, c0 * f:(c0 + c) * f]
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def validation_set(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed (input, target) pairs on the validation prompts: whole latents, draws from a separate stream."""
        if self._val is None:
            rng = np.random.default_rng([self.cfg.seed, VAL_STREAM])
            steps = self.cfg.step_choices()
            samples = []
            for j in range(self.num_train, len(self.cache)):
                for _ in range(VAL_DRAWS_PER_PROMPT):
                    n = steps[int(rng.integers(len(steps)))]
                    beta = float(rng.uniform(0.0, self.cfg.beta_max))
                    samples.append(Sample(j, n, beta, self.link.draw(rng)))
            pairs = []
            for k in range(0, len(samples), self.cfg.batch_size):
                x, y = self.assemble(samples[k:k + self.cfg.batch_size])
                pairs.append((x, y))
            self._val = pairs
        return self._val

    # --- steps -------------------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with self._autocast():
            pred = self.decoder(x.to(self.device))
        pred, y = pred.float(), y.to(self.device, torch.float32)
        per_sample = (pred - y).square().flatten(1).mean(1)
        mse = per_sample.mean()
        floor = self.cfg.log_mse_floor
        total = torch.log(per_sample + floor).mean() if floor > 0 else mse
        parts = {"mse": float(mse.detach())}
        if self.perceptual is not None:
            lp = self.perceptual(pred, y)
            total = total + self.cfg.perceptual_weight * lp
            parts["lpips"] = float(lp.detach())
        return total, parts

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """Run optimiser step ``self.step`` and advance; returns its loss parts, lr and gradient norm.

        Parameters
        ----------
        batch : (inputs, targets), optional
            Train on this batch instead of the step's own draw (tests: a fixed batch).
        """
        t0 = time.perf_counter_ns()
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = batch if batch is not None else self.assemble(self.plan(self.step))
        t_data = time.perf_counter_ns()
        self.decoder.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = self.loss(x, y)
        params = [p for _, p in self.decoder.named_trainable()]
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        norm = (torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0
                else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter_ns()
        self.step += 1
        self.samples_seen += len(x)
        self.train_wall_s += (t1 - t0) / 1e9
        return {"step": self.step, "loss": float(total.detach()), **parts, "lr": lr, "grad_norm": float(norm),
                "data_s": (t_data - t0) / 1e9, "step_s": (t1 - t0) / 1e9}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean MSE and PSNR (dB, clamped images) of the decoder on the validation set."""
        pairs = self.validation_set()
        if not pairs:
            return {}
        self.decoder.eval()
        errs = []
        for x, y in pairs:
            with self._autocast():
                pred = self.decoder(x.to(self.device))
            err = ((pred.float().clamp(0, 1) - y.to(self.device)) ** 2).mean(dim=(1, 2, 3))
            errs.append(err.double().cpu())
        e = torch.cat(errs).clamp_min(1e-10)
        return {"val_mse": float(e.mean()), "val_psnr_db": float((10 * torch.log10(1 / e)).mean()),
                "val_neg_log_mse": float((-torch.log(e)).mean())}

    # --- checkpoints -------------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(), "param_names": self.param_names, "model_fingerprint": self.fingerprint,
            "cache_digest": self.cache.index.get("digest"), "samples_seen": self.samples_seen,
            "train_wall_s": self.train_wall_s, "val_history": self.val_history, "init_decoder": self.init_decoder,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.decoder.trainable_state(), self.optimizer, self._state(),
                               keep=self.cfg.keep_checkpoints)

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from checkpoint ``path`` (default: the run's latest); returns the step reached (0: none found).

        Raises
        ------
        CheckpointError
            The checkpoint belongs to another model, cache or recipe.
        """
        path = Path(path) if path is not None else latest_checkpoint(self.run_dir)
        if path is None:
            return 0
        weights, state = load_checkpoint(path, self.optimizer)
        old = dict(state.get("config", {}))
        new = self.cfg.to_dict()
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise CheckpointError(f"checkpoint {path} was written with other settings ({', '.join(changed)}); resume "
                                  "with the same recipe or start a new run folder")
        if state.get("model_fingerprint") != self.fingerprint:
            raise CheckpointError(f"checkpoint {path} was trained on another model (fingerprint "
                                  f"{state.get('model_fingerprint')}, this model {self.fingerprint})")
        if state.get("cache_digest") != self.cache.index.get("digest"):
            raise CheckpointError(f"checkpoint {path} was trained on another latent cache")
        if state.get("param_names") != self.param_names:
            raise CheckpointError(f"checkpoint {path} holds weights of another decoder architecture")
        self.decoder.load_trainable(weights)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.samples_seen = int(state.get("samples_seen", 0))
        self.train_wall_s = float(state.get("train_wall_s", 0.0))
        self.val_history = list(state.get("val_history", []))
        return self.step

    # --- the run -----------------------------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _validate_and_log(self) -> dict[str, float]:
        v = self.validate()
        if v:
            v = {"step": self.step, **v}
            self.val_history.append(v)
            self._log({"kind": "val", **v})
            self.log_line(f"step {self.step}: validation MSE {v['val_mse']:.3e}, PSNR {v['val_psnr_db']:.2f} dB")
        return v

    def fit(self, *, resume: bool = True, progress: bool = True, export: bool = True) -> dict[str, Any]:
        """Train to ``config.steps`` (continuing the latest checkpoint when ``resume``), checkpoint, export.

        Returns
        -------
        dict
            Summary: steps, samples, wall time, throughput, validation before/after, the exported folder.
        """
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(cfg.to_json(), encoding="utf-8")
        if resume and self.resume():
            self.log_line(f"resumed at step {self.step} from {latest_checkpoint(self.run_dir)}")
        elif list_checkpoints(self.run_dir):
            raise CheckpointError(f"{self.run_dir} already holds checkpoints; resume, or use another run folder")
        if self.step == 0 and not self.val_history:
            self._validate_and_log()
        bar = None
        if progress and self.step < cfg.steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="distilling UE decoder", unit="step")
        ema = None
        last_saved = self.step
        while self.step < cfg.steps:
            rec = self.train_step()
            ema = rec["loss"] if ema is None else 0.95 * ema + 0.05 * rec["loss"]
            self._log({"kind": "train", **rec, "loss_ema": ema})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.2e}", lr=f"{rec['lr']:.1e}")
            if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                self._validate_and_log()
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()
                last_saved = self.step
        if bar is not None:
            bar.close()
        final = self.val_history[-1] if self.val_history and self.val_history[-1]["step"] == self.step else None
        if final is None:
            final = self._validate_and_log()
        if last_saved != self.step or not list_checkpoints(self.run_dir):
            self.save()
        summary = self.summary(final)
        if export:
            summary["exported"] = str(self.export())
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")
        return summary

    def summary(self, final: dict[str, float] | None = None) -> dict[str, Any]:
        first = self.val_history[0] if self.val_history else {}
        return {
            "steps": self.step, "samples": self.samples_seen, "train_wall_s": round(self.train_wall_s, 3),
            "samples_per_s": self.samples_seen / self.train_wall_s if self.train_wall_s > 0 else math.nan,
            "device": str(self.device), "amp": self.cfg.amp, "val_initial": first, "val_final": final or {},
            "precompute_s": self.cache.precompute_s, "model_fingerprint": self.fingerprint,
            "torch_threads": torch.get_num_threads(),
        }

    def export(self, out_dir: str | Path | None = None) -> Path:
        """Write the decoder as an AutoencoderKL folder (default ``RUN_DIR/ue_decoder``) with ``distill.json``."""
        out_dir = Path(out_dir) if out_dir is not None else self.run_dir / UE_DECODER_SUBFOLDER
        if self.cfg.export_dtype == "auto":
            model_dir = self.model.model_dir
            dtype = stored_dtype(model_dir / "vae") if model_dir is not None else torch.float32
        else:
            dtype = getattr(torch, self.cfg.export_dtype)
        meta = {"config": self.cfg.to_dict(), "summary": self.summary(self.val_history[-1] if self.val_history
                                                                      else None),
                "base_model_fingerprint": self.fingerprint, "cache": self.cache.key,
                "weights_dtype": str(dtype).removeprefix("torch."), "init_decoder": self.init_decoder}
        return export_decoder(self.decoder, out_dir, dtype=dtype, meta=meta)
