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
from megbed.megwire.validation import ConfigModel, Count, Index, not_above, not_below, number, tuple_of
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


NonNegative = number(0.0)


class NoiseConfig(_Recipe):
    """Link noise drawn per training sample (see the module docstring).

    Each setting is described once, by its field's ``description`` (``megbed distill train --help`` and the JSON
    schema show it).
    """

    kind: Literal[NOISE_KINDS] = Field("snr", description="link noise drawn per sample: sigma, snr, link or none")
    # The paper trains on sigma ~ U[0.05, 0.32].
    sigma_min: NonNegative = Field(0.05, description="smallest Gaussian std of kind sigma")
    sigma_max: Annotated[NonNegative, not_below("sigma_min")] = Field(
        0.32, description="largest Gaussian std of kind sigma")
    snr_min_db: number(-50.0, 80.0) = Field(-5.0, description="lowest average SNR (dB) of kind snr")
    snr_max_db: Annotated[number(-50.0, 80.0), not_below("snr_min_db")] = Field(
        20.0, description="highest average SNR (dB) of kind snr")
    clean_fraction: number(0.0, 1.0) = Field(0.2, description="share of samples delivered noiseless, whatever the kind")
    link: dict[str, Any] = Field(
        default_factory=dict,
        description="a channel_emu LinkConfig mapping (mode, model, process, analog ...) for kinds snr and link; "
                    "empty: the paper's link (analog, AWGN, path loss over d ~ U[200, 300] m)")

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

    Each setting is described once, by its field's ``description`` (``megbed distill train --help`` and the JSON
    schema show it); a comment beside a field says why its default is what it is.
    """

    prompts: Annotated[str, Field(min_length=1)] = Field(
        "shapes", description="training prompts: 'shapes' (the default model's caption grammar, train split) or a "
                              "text file, one prompt per line")
    num_prompts: Count = Field(152, description="training prompts drawn (a file gives at most its line count)")
    val_prompts: Index = Field(8, description="further prompts kept out of training, for the validation loss")
    # Prompt i is generated with seed prompt_seed * 100_003 + i.
    prompt_seed: Index = Field(1, description="seed of the prompt draw")
    # The paper draws N from 4..12.
    n_min: Count = Field(4, description="smallest ES step count N drawn per sample")
    n_max: Annotated[Count, not_below("n_min")] = Field(12, description="largest N drawn")
    n_ref: Annotated[Count, not_below("n_max")] | None = Field(
        None, description="steps of the reference image, the target (unset: n_max)")
    n_stride: Count = Field(2, description="cache only every n_stride-th N of the range (n_max always)")
    beta_max: number(0.0, MAX_BETA) = Field(MAX_BETA, description="beta ~ U[0, beta_max] per sample (<= 0.75, "
                                                                  "the merging's cap)")
    merge_method: Literal[MERGE_METHODS] = Field(DEFAULT_MERGE_METHOD,
                                                 description="merge method of the training samples")
    # 5.0: the campaigns' default; SD-1.5 is usually run at 7.5.
    guidance_scale: NonNegative = Field(5.0, description="CFG scale of the cached generations")
    scheduler: str | None = Field(None, description="sampler name (unset: the model's own)")
    wire_dtype: Literal[WIRE_DTYPES] = Field("float16", description="dtype of the merged values on the wire")
    tome_ratio_es: number(0.0, MAX_TOME_RATIO) = Field(
        0.0, description="tomesd ratio in the ES U-Net while caching latents (0: off)")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="link noise drawn per training sample")
    steps: Count = Field(600, description="optimiser steps")
    batch_size: Count = Field(16, description="samples per step")
    lr: NonNegative = Field(1e-4, description="peak learning rate")
    lr_min: Annotated[NonNegative, not_above("lr")] = Field(
        1e-5, description="final learning rate of the cosine schedule")
    warmup_steps: Index = Field(40, description="linear warm-up steps from 0 to lr")
    weight_decay: NonNegative = Field(0.01, description="AdamW weight decay")
    betas_adam: tuple_of(number(0.0, lt=1.0), min_length=2, max_length=2) = Field(
        (0.9, 0.999), description="AdamW betas")
    grad_clip: NonNegative = Field(1.0, description="gradient-norm clip (0: off)")
    # Crops come after merging and the channel, which see the whole latent; they cut memory for SDXL-size images.
    crop_latent: Annotated[int, Field(ge=2, multiple_of=2)] | None = Field(
        None, description="train on random square latent crops of this side (unset: whole latents)")
    # A plain mean lets the noisy samples (MSE ~1e-2) dominate and costs the clean ones dearly: on the default model,
    # 900 steps of it lost 8 dB PSNR at beta 0 noiseless while gaining 5 dB at 0 dB SNR. The log makes every
    # sample's relative error count (the project's distortion metric, -ln MSE); the floor (1e-5: 50 dB) stops
    # near-exact samples from taking all the gradient.
    log_mse_floor: NonNegative = Field(
        1e-5, description="loss = mean over samples of ln(MSE_i + floor); 0: the batch's plain mean MSE")
    perceptual_weight: NonNegative = Field(
        0.0, description="weight of an LPIPS term (needs the lpips package and its weights locally); 0: MSE only")
    # Step s is a pure function of (seed, s).
    seed: Index = Field(0, description="seed of every per-step draw (prompts, N, beta, noise, crops)")
    device: Annotated[str, Field(pattern=r"^(cpu|mps|cuda.*)$")] = Field(
        "cpu", description="torch device for training: cpu, cuda, cuda:1")
    model_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="precision of the frozen pipeline while caching latents (float16 needs a GPU)")
    amp: Literal[AMP_DTYPES] = Field("none", description="autocast of the decoder on CUDA (fp16 with a gradient "
                                                         "scaler)")
    gradient_checkpointing: bool = Field(
        False, description="recompute decoder activations in the backward pass (SDXL-size decoders on one GPU)")
    checkpoint_every: Count = Field(50, description="checkpoint period (steps)")
    keep_checkpoints: Count = Field(2, description="checkpoints kept")
    val_every: Index = Field(100, description="validation period (steps; 0: at the start and the end only)")
    export_dtype: Literal[EXPORT_DTYPES] = Field(
        "auto", description="dtype of the exported decoder weights (auto: the base VAE's stored dtype)")
    threads: Count | None = Field(None, description="torch CPU threads (unset: torch's default)")

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
