"""The distillation recipe: what the decoder sees (N, beta, link noise), how it is optimised, where it runs.

One JSON-able dataclass tree (:class:`DistillConfig`), saved with every checkpoint and with the exported decoder so
that a run can be resumed and a shipped decoder traced back to its recipe. Defaults are sized for the embedded
default model on 2 CPU cores (about 30 min: ~11 min of latent caching for 160 prompts x 5 step counts, ~17 min of
training on whole 128-px images; 64-px crops were 4x faster per sample but the decoder they gave was worse on whole
images than before training, measured); SD-1.5 / SDXL on a GPU change
``device`` / ``amp`` / ``model_dtype`` / ``crop_latent`` / ``guidance_scale`` and the prompts.

Noise kinds (:class:`NoiseConfig`), each drawn per sample:

* ``sigma``: the paper's distortion model -- Gaussian noise of std sigma ~ U[sigma_min, sigma_max] added straight to
  the merged latent values (in U-Net latent units) after they were cast to the wire dtype.
* ``snr``: the channel emulator's analog transmission (power normalisation by the buffer RMS, two values per complex
  symbol, the link model of ``link`` -- AWGN, Rayleigh, TDL-OFDM --, MMSE or ZF equalisation, cast back to the wire
  dtype) at an average SNR ~ U[snr_min_db, snr_max_db]; block fading on top when the link model has it.
* ``link``: the same analog path with the SNR drawn by the emulator's own channel process (log-distance path loss at
  a distance from ``link.process``, block fading): the paper's link gives SNR in about [-4.4, +2.2] dB.
* ``none``: noiseless (merging only).

A share ``clean_fraction`` of the samples is delivered noiseless whatever the kind: a digital link with HARQ
delivers exact values, and the decoder must stay good there.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megbed.testbed.ldm.merging import DEFAULT_MERGE_METHOD, MAX_BETA, MERGE_METHODS
from megbed.testbed.ldm.request import WIRE_DTYPES

NOISE_KINDS = ("sigma", "snr", "link", "none")
AMP_DTYPES = ("none", "bf16", "fp16")
EXPORT_DTYPES = ("auto", "float16", "float32")
CONFIG_VERSION = 1


class DistillConfigError(ValueError):
    """A distillation setting is invalid; the message names the key (``noise.snr_min_db``) and the problem."""


@dataclass
class NoiseConfig:
    """Link noise drawn per training sample (see the module docstring).

    Attributes
    ----------
    kind : str
        ``sigma`` | ``snr`` | ``link`` | ``none``.
    sigma_min, sigma_max : float
        Range of the Gaussian std for ``sigma`` (the paper trains on U[0.05, 0.32]).
    snr_min_db, snr_max_db : float
        Range of the average SNR (dB) for ``snr``.
    clean_fraction : float
        Share of samples delivered noiseless (any kind).
    link : dict
        A :class:`channel_emu.LinkConfig` mapping (``mode``, ``model``, ``process``, ``analog`` ...) for ``snr`` and
        ``link``; empty means the paper's link (analog, AWGN, path loss over d ~ U[200, 300] m).
    """

    kind: str = "snr"
    sigma_min: float = 0.05
    sigma_max: float = 0.32
    snr_min_db: float = -5.0
    snr_max_db: float = 20.0
    clean_fraction: float = 0.2
    link: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Everything that decides the distilled decoder (besides the model and the code).

    Attributes
    ----------
    prompts : str
        Training prompts: ``shapes`` (the default model's caption grammar, train split) or a text file, one prompt
        per line.
    num_prompts : int
        Prompts drawn for training (from ``shapes``; a file gives at most its line count).
    val_prompts : int
        Further prompts kept out of training, for the validation loss logged during training.
    prompt_seed : int
        Seed of the prompt draw; prompt ``i`` is generated with seed ``prompt_seed * 100_003 + i``.
    n_min, n_max : int
        ES denoising steps N drawn per sample from ``{n_min .. n_max}`` (the paper: 4..12).
    n_ref : int or None
        Steps of the reference image (the target); None: ``n_max``.
    n_stride : int
        Only every ``n_stride``-th N of the range is cached (fewer denoising runs; ``n_max`` is always included).
    beta_max : float
        beta ~ U[0, beta_max] per sample (at most 0.75, the merging's cap).
    merge_method : str
        Merge method of the training samples (:data:`megbed.testbed.ldm.merging.MERGE_METHODS`; the runtime's default).
    guidance_scale : float
        CFG scale of the cached generations (5.0: the campaigns' default; SD-1.5 is usually run at 7.5).
    scheduler : str or None
        Sampler name (None: the model's own).
    wire_dtype : str
        dtype of the merged values on the wire (float16 as the runtime's default).
    tome_ratio_es : float
        tomesd ratio in the ES U-Net while caching latents (0: off).
    steps, batch_size : int
        Optimiser steps and samples per step.
    lr, lr_min : float
        Peak and final learning rate of the cosine schedule.
    warmup_steps : int
        Linear warm-up from 0 to ``lr``.
    weight_decay, betas_adam, grad_clip :
        AdamW settings and the gradient-norm clip (0: off).
    crop_latent : int or None
        Train on random square latent crops of this side (after merging and the channel, which see the whole
        latent); None: whole latents. Cuts memory for SDXL-size images.
    log_mse_floor : float
        0: the loss is the batch's mean squared error. > 0: the mean over samples of ln(MSE_i + floor), the
        project's distortion metric (-ln MSE) with a floor. A plain mean lets the noisy samples (MSE ~1e-2) dominate
        and costs the clean ones dearly: on the default model, 900 steps of it lost 8 dB PSNR at beta 0 noiseless
        while gaining 5 dB at 0 dB SNR. The log makes every sample's relative error count; the floor (1e-5: 50 dB)
        stops near-exact samples from taking all the gradient.
    perceptual_weight : float
        Weight of an LPIPS term (needs the ``lpips`` package and its backbone weights locally); 0: MSE only.
    seed : int
        Seeds every per-step draw (prompts, N, beta, noise, crops): step ``s`` is a pure function of (seed, s).
    device : str
        Torch device for training (``cpu``, ``cuda``, ``cuda:1``).
    model_dtype : str
        Precision of the frozen pipeline while caching latents (``float32`` / ``float16``; float16 needs a GPU).
    amp : str
        Autocast for the decoder's forward pass on CUDA: ``none``, ``bf16`` or ``fp16`` (with a gradient scaler).
    gradient_checkpointing : bool
        Recompute decoder activations in the backward pass (SDXL-size decoders on one GPU).
    checkpoint_every, keep_checkpoints : int
        Checkpoint period (steps) and how many to keep.
    val_every : int
        Validation period (steps); 0: only at the start and the end.
    export_dtype : str
        dtype of the exported decoder weights: ``auto`` (the base VAE's stored dtype), ``float16``, ``float32``.
    threads : int or None
        torch CPU threads (None: torch's default).
    """

    prompts: str = "shapes"
    num_prompts: int = 152
    val_prompts: int = 8
    prompt_seed: int = 1
    n_min: int = 4
    n_max: int = 12
    n_ref: int | None = None
    n_stride: int = 2
    beta_max: float = MAX_BETA
    merge_method: str = DEFAULT_MERGE_METHOD
    guidance_scale: float = 5.0
    scheduler: str | None = None
    wire_dtype: str = "float16"
    tome_ratio_es: float = 0.0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-4
    lr_min: float = 1e-5
    warmup_steps: int = 40
    weight_decay: float = 0.01
    betas_adam: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    crop_latent: int | None = None
    log_mse_floor: float = 1e-5
    perceptual_weight: float = 0.0
    seed: int = 0
    device: str = "cpu"
    model_dtype: str = "float32"
    amp: str = "none"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    val_every: int = 100
    export_dtype: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.noise, dict):
            self.noise = _build(NoiseConfig, self.noise, "noise")
        self.betas_adam = tuple(self.betas_adam)
        validate(self)

    @property
    def reference_steps(self) -> int:
        return int(self.n_ref if self.n_ref is not None else self.n_max)

    def step_choices(self) -> list[int]:
        """The N values that are cached and drawn: ``n_min, n_min + stride, ...`` and always ``n_max``."""
        return sorted(set(range(self.n_min, self.n_max + 1, self.n_stride)) | {self.n_max})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas_adam"] = list(self.betas_adam)
        data["config_version"] = CONFIG_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`DistillConfigError`."""
        if not isinstance(data, dict):
            raise DistillConfigError(f"distillation config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise DistillConfigError(f"distillation config version {version} is not {CONFIG_VERSION}")
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | Path) -> DistillConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise DistillConfigError(f"cannot read the distillation config {path}: {exc}") from exc

    def replace(self, **changes: Any) -> DistillConfig:
        """A validated copy; ``noise`` may be a partial mapping merged into the current one."""
        data = self.to_dict()
        for key, value in changes.items():
            if key == "noise" and isinstance(value, dict):
                data["noise"] = {**data["noise"], **value}
            else:
                data[key] = value
        return DistillConfig.from_dict(data)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise DistillConfigError(f"unknown setting(s) {', '.join(where + k for k in unknown)}; "
                                 f"known: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise DistillConfigError(f"bad {prefix or 'distillation'} settings: {exc}") from exc


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise DistillConfigError(f"{key}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: DistillConfig) -> None:
    """Check ranges and choices; raises :class:`DistillConfigError` naming the first bad key."""
    for key in ("num_prompts", "steps", "batch_size", "n_min", "n_max", "n_stride", "checkpoint_every",
                "keep_checkpoints"):
        _check(_is_int(getattr(cfg, key)) and getattr(cfg, key) >= 1, key, "must be an integer >= 1")
    for key in ("val_prompts", "warmup_steps", "val_every", "seed", "prompt_seed"):
        _check(_is_int(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "must be an integer >= 0")
    _check(cfg.n_min <= cfg.n_max, "n_min", f"{cfg.n_min} exceeds n_max={cfg.n_max}")
    _check(cfg.n_ref is None or (_is_int(cfg.n_ref) and cfg.n_ref >= cfg.n_max), "n_ref",
           f"reference steps {cfg.n_ref!r} must be an integer >= n_max={cfg.n_max}")
    _check(_is_num(cfg.beta_max) and 0.0 <= cfg.beta_max <= MAX_BETA, "beta_max", f"must be in [0, {MAX_BETA}]")
    _check(cfg.merge_method in MERGE_METHODS, "merge_method", f"{cfg.merge_method!r} is not one of {MERGE_METHODS}")
    _check(_is_num(cfg.guidance_scale) and cfg.guidance_scale >= 0, "guidance_scale", "must be a number >= 0")
    _check(cfg.wire_dtype in WIRE_DTYPES, "wire_dtype", f"{cfg.wire_dtype!r} is not one of {WIRE_DTYPES}")
    _check(_is_num(cfg.tome_ratio_es) and 0.0 <= cfg.tome_ratio_es <= 0.75, "tome_ratio_es", "must be in [0, 0.75]")
    for key in ("lr", "lr_min"):
        _check(_is_num(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "must be a number >= 0")
    _check(cfg.lr_min <= cfg.lr, "lr_min", f"{cfg.lr_min} exceeds lr={cfg.lr}")
    _check(_is_num(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    _check(len(cfg.betas_adam) == 2 and all(_is_num(b) and 0 <= b < 1 for b in cfg.betas_adam), "betas_adam",
           "must be two numbers in [0, 1)")
    _check(_is_num(cfg.grad_clip) and cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0: off)")
    _check(cfg.crop_latent is None or (_is_int(cfg.crop_latent) and cfg.crop_latent >= 2 and cfg.crop_latent % 2 == 0),
           "crop_latent", "must be an even integer >= 2 or null")
    _check(_is_num(cfg.perceptual_weight) and cfg.perceptual_weight >= 0, "perceptual_weight", "must be >= 0")
    _check(_is_num(cfg.log_mse_floor) and cfg.log_mse_floor >= 0, "log_mse_floor", "must be >= 0")
    _check(isinstance(cfg.device, str) and (cfg.device in ("cpu", "mps") or cfg.device.startswith("cuda")), "device",
           f"{cfg.device!r} is not cpu, mps or cuda[:N]")
    _check(cfg.model_dtype in ("float32", "float16", "bfloat16"), "model_dtype", "float32 | float16 | bfloat16")
    _check(cfg.amp in AMP_DTYPES, "amp", f"{cfg.amp!r} is not one of {AMP_DTYPES}")
    _check(cfg.amp == "none" or cfg.device.startswith("cuda"), "amp", "autocast is only used on CUDA devices")
    _check(cfg.export_dtype in EXPORT_DTYPES, "export_dtype", f"{cfg.export_dtype!r} is not one of {EXPORT_DTYPES}")
    _check(cfg.threads is None or (_is_int(cfg.threads) and cfg.threads >= 1), "threads", "must be >= 1 or null")
    _check(isinstance(cfg.prompts, str) and bool(cfg.prompts), "prompts", "must be 'shapes' or a prompt file path")
    n = cfg.noise
    _check(n.kind in NOISE_KINDS, "noise.kind", f"{n.kind!r} is not one of {NOISE_KINDS}")
    _check(_is_num(n.sigma_min) and _is_num(n.sigma_max) and 0 <= n.sigma_min <= n.sigma_max, "noise.sigma_min",
           "need 0 <= sigma_min <= sigma_max")
    _check(_is_num(n.snr_min_db) and _is_num(n.snr_max_db) and -50 <= n.snr_min_db <= n.snr_max_db <= 80,
           "noise.snr_min_db", "need -50 <= snr_min_db <= snr_max_db <= 80 dB")
    _check(_is_num(n.clean_fraction) and 0 <= n.clean_fraction <= 1, "noise.clean_fraction", "must be in [0, 1]")
    _check(isinstance(n.link, dict), "noise.link", "must be a mapping (a channel_emu LinkConfig)")
    if n.kind in ("snr", "link"):
        from megbed.channel_emu.config import LinkConfig, LinkConfigError

        try:
            LinkConfig.from_dict(n.link)
        except LinkConfigError as exc:
            raise DistillConfigError(f"noise.link: {exc}") from exc
