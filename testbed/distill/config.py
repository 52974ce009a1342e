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

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from megbed.channel_emu.config import LinkConfig, LinkConfigError
from megbed.megwire.validation import ConfigModel, not_above, not_below, number, tuple_of
from megbed.megwire.vocab import MAX_MERGE_RATIO as MAX_BETA
from megbed.megwire.vocab import MAX_TOME_RATIO, WIRE_DTYPES
from megbed.testbed.distill.errors import DistillConfigError
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, MERGE_METHODS

NOISE_KINDS = ("sigma", "snr", "link", "none")
AMP_DTYPES = ("none", "bf16", "fp16")
EXPORT_DTYPES = ("auto", "float16", "float32")
CONFIG_VERSION = 1


class _Recipe(ConfigModel):
    # Defaults are validated too: a check comparing two settings runs when only one of them is given.
    model_config = ConfigModel.model_config | {"validate_default": True}
    error = DistillConfigError
    key_word = "setting"


Count = Annotated[int, Field(ge=1)]
Index = Annotated[int, Field(ge=0)]
NonNegative = number(0.0)


class NoiseConfig(_Recipe):
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

    kind: Literal[NOISE_KINDS] = "snr"
    sigma_min: NonNegative = 0.05
    sigma_max: Annotated[NonNegative, not_below("sigma_min")] = 0.32
    snr_min_db: number(-50.0, 80.0) = -5.0
    snr_max_db: Annotated[number(-50.0, 80.0), not_below("snr_min_db")] = 20.0
    clean_fraction: number(0.0, 1.0) = 0.2
    link: dict[str, Any] = Field(default_factory=dict)

    @field_validator("link")
    @classmethod
    def _link(cls, link: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("kind") in ("snr", "link"):
            try:
                LinkConfig.from_dict(link)
            except LinkConfigError as exc:
                raise ValueError(str(exc)) from None
        return link


class DistillConfig(_Recipe):
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

    prompts: Annotated[str, Field(min_length=1)] = "shapes"
    num_prompts: Count = 152
    val_prompts: Index = 8
    prompt_seed: Index = 1
    n_min: Count = 4
    n_max: Annotated[Count, not_below("n_min")] = 12
    n_ref: Annotated[Count, not_below("n_max")] | None = None
    n_stride: Count = 2
    beta_max: number(0.0, MAX_BETA) = MAX_BETA
    merge_method: Literal[MERGE_METHODS] = DEFAULT_MERGE_METHOD
    guidance_scale: NonNegative = 5.0
    scheduler: str | None = None
    wire_dtype: Literal[WIRE_DTYPES] = "float16"
    tome_ratio_es: number(0.0, MAX_TOME_RATIO) = 0.0
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    steps: Count = 600
    batch_size: Count = 16
    lr: NonNegative = 1e-4
    lr_min: Annotated[NonNegative, not_above("lr")] = 1e-5
    warmup_steps: Index = 40
    weight_decay: NonNegative = 0.01
    betas_adam: tuple_of(number(0.0, lt=1.0), min_length=2, max_length=2) = (0.9, 0.999)
    grad_clip: NonNegative = 1.0  # 0: off
    crop_latent: Annotated[int, Field(ge=2, multiple_of=2)] | None = None
    log_mse_floor: NonNegative = 1e-5
    perceptual_weight: NonNegative = 0.0
    seed: Index = 0
    device: Annotated[str, Field(pattern=r"^(cpu|mps|cuda.*)$")] = "cpu"
    model_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    amp: Literal[AMP_DTYPES] = "none"
    gradient_checkpointing: bool = False
    checkpoint_every: Count = 50
    keep_checkpoints: Count = 2
    val_every: Index = 100
    export_dtype: Literal[EXPORT_DTYPES] = "auto"
    threads: Count | None = None

    @field_validator("amp")
    @classmethod
    def _amp_on_cuda(cls, amp: str, info: ValidationInfo) -> str:
        if amp != "none" and not str(info.data.get("device", "cuda")).startswith("cuda"):
            raise ValueError("autocast is only used on CUDA devices")
        return amp

    @property
    def reference_steps(self) -> int:
        return int(self.n_ref if self.n_ref is not None else self.n_max)

    def step_choices(self) -> list[int]:
        """The N values that are cached and drawn: ``n_min, n_min + stride, ...`` and always ``n_max``."""
        return sorted(set(range(self.n_min, self.n_max + 1, self.n_stride)) | {self.n_max})

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
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
        return cls.parse(data, what="distillation config")

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
