"""The recipe of the embedded default model: architectures, optimisation and data settings, in one JSON-able place.

Sized for the training budget (2 CPU cores, about 2 hours for everything) and the runtime's needs: 128x128 images,
16x16x4 latents, a VAE decoder of about 0.6 M parameters (1.2 MB in fp16) so that a distilled copy fits beside it,
and a U-Net of 10.8 M parameters (21.7 MB in fp16) so that the whole folder stays under 30 MB. The noise schedule is
SD's scaled-linear betas rescaled to zero terminal SNR with v-prediction (Lin et al. 2024), 1000 steps, trailing
timestep spacing (DDIM, Euler, Euler-ancestral, DPM++ 2M and UniPC all accept it); :func:`noise_schedule` is what
training and the exported scheduler use. The first shipped model (epsilon prediction, a 3-level U-Net, text encoder
trained jointly from step 0) followed colors but not position words: see ``UnetRecipe.text_freeze_steps``."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from megbed.megwire.validation import ConfigModel, Count, Index, Positive, tuple_of

IMAGE_SIZE_PX = 128
VAE_SCALE = 8
LATENT_CHANNELS = 4
TEXT_MAX_LENGTH = 32

# The sampler the exported model names in scheduler/ and the defaults `megbed model eval` and the benchmarks use.
DEFAULT_SCHEDULER_CLASS = "DPMSolverMultistepScheduler"
DEFAULT_NUM_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 5.0

# SD's schedule (epsilon prediction, no rescale); a recipe's own is noise_schedule(cfg).
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


class TrainConfigError(ValueError):
    """A training setting is unknown or mistyped; the message names it (``vae.steps``)."""


Ints = tuple_of(Annotated[int, Field(ge=0)])
Names = tuple_of(str)
# Ranges of the settings besides megbed.megwire.validation's (a recipe with steps: 0 or lr: -1 is refused naming the key).
Weight = Annotated[float, Field(ge=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Recipe(ConfigModel):
    error = TrainConfigError
    key_word = "setting"


class VaeRecipe(_Recipe):
    """Phase 2: the autoencoder and how it is trained (random crops of freshly rendered scenes)."""

    block_out_channels: Ints = (16, 32, 64, 64)
    layers_per_block: Count = 1
    norm_num_groups: Count = 4
    steps: Count = 3000
    batch_size: Count = 12
    crop_px: Count = 64
    pool_images: Count = 3000
    dense_fraction: Fraction = 0.5
    lr: Positive = 1e-3
    lr_min: Weight = 5e-5
    warmup_steps: Index = 50
    weight_decay: Weight = 0.0
    kl_weight: Weight = 1e-6
    init_logvar: float = -8.0
    mse_weight: Weight = 1.0
    grad_clip: Positive = 1.0
    checkpoint_every: Count = 100


class TextRecipe(_Recipe):
    """The text encoder (CLIPTextModel architecture, trained from scratch with the U-Net)."""

    hidden_size: Count = 128
    intermediate_size: Count = 512
    num_hidden_layers: Count = 3
    num_attention_heads: Count = 4
    max_length: Count = TEXT_MAX_LENGTH


class UnetRecipe(_Recipe):
    """Phases 3-4: the latent dataset and the U-Net + text-encoder training."""

    # Cross-attention at 16x16, 8x8 and 4x4 and in the mid block at 2x2, where the zero padding makes every position
    # distinct; the 2x2 level is kept narrow (144) for the size budget.
    block_out_channels: Ints = (48, 96, 192, 144)
    layers_per_block: Count = 1
    attention_head_dim: Count = 6
    norm_num_groups: Count = 16
    down_block_types: Names = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    up_block_types: Names = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    dataset_images: Count = 16000
    pair_fraction: Fraction = 0.5
    steps: Count = 2600
    # The cosine decay of the rate first ends here (then a warm restart to the rate of the decay over `steps`):
    # the shipped model was trained 2000 steps (position 63.5 % on the 64-prompt eval), then continued to 2600.
    lr_restart_steps: Ints = (2000,)
    batch_size: Count = 32
    lr: Positive = 5e-4
    lr_min: Weight = 2e-5
    warmup_steps: Index = 100
    weight_decay: Weight = 0.01
    grad_clip: Positive = 1.0
    # The text encoder stays at its (random) initialisation for the first text_freeze_steps, then trains at
    # text_lr_scale x the U-Net's rate. Trained jointly from step 0 (0 and 1) it squeezed the position words out:
    # the relative change of its output between "... on the left" and "... on the right" fell from 0.15 at
    # initialisation to 0.02 (red vs blue grew from 0.26 to 0.4-1.0) while the U-Net could not yet use positions,
    # and that model placed shapes independently of the position words (position 9 % correct).
    text_freeze_steps: Index = 600
    text_lr_scale: Weight = 0.3
    # "epsilon" or "v_prediction"; zero_terminal_snr rescales the betas (Lin et al. 2024) so that the last training
    # step is pure noise, as sampling starts from.
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    zero_terminal_snr: bool = True
    cfg_dropout: Fraction = 0.1
    distractor_prob: Fraction = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: Fraction = 0.999
    checkpoint_every: Count = 200
    encode_batch: Count = 64


class TrainConfig(_Recipe):
    """Everything that decides the trained weights (besides the code)."""

    seed: Index = 0
    image_size_px: Count = IMAGE_SIZE_PX
    vae: VaeRecipe = Field(default_factory=VaeRecipe)
    text: TextRecipe = Field(default_factory=TextRecipe)
    unet: UnetRecipe = Field(default_factory=UnetRecipe)

    @property
    def latent_size(self) -> int:
        return self.image_size_px // VAE_SCALE

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (lists back to tuples; unknown keys are an error)."""
        return cls.parse(data, what="training recipe")

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with ``phase.name=value`` style overrides, e.g. ``{"vae.steps": 5}``."""
        data = self.to_dict()
        for key, value in changes.items():
            head, _, tail = key.partition(".")
            if tail and head in ("vae", "text", "unet"):
                data[head][tail] = value  # an unknown name is refused by the validation, naming it
            elif tail or head in ("vae", "text", "unet"):
                raise TrainConfigError(f"unknown setting {key!r}")
            else:
                data[head] = value
        return TrainConfig.from_dict(data)


def noise_schedule(cfg: TrainConfig | None = None) -> dict[str, Any]:
    """The diffusers scheduler settings of a recipe (:data:`NOISE_SCHEDULE` with its prediction type and rescale)."""
    if cfg is None:
        return dict(NOISE_SCHEDULE)
    u = cfg.unet
    if u.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unet.prediction_type must be 'epsilon' or 'v_prediction', not {u.prediction_type!r}")
    if u.zero_terminal_snr and u.prediction_type != "v_prediction":
        raise ValueError("unet.zero_terminal_snr needs unet.prediction_type=v_prediction (epsilon is undefined at SNR 0)")
    return {**NOISE_SCHEDULE, "prediction_type": u.prediction_type,
            "rescale_betas_zero_snr": bool(u.zero_terminal_snr)}


def vae_config(cfg: TrainConfig) -> dict[str, Any]:
    """``AutoencoderKL`` constructor arguments (no mid-block attention: fully convolutional, crops generalise)."""
    n = len(cfg.vae.block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(cfg.vae.block_out_channels),
        "layers_per_block": cfg.vae.layers_per_block,
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": cfg.vae.norm_num_groups,
        "sample_size": cfg.image_size_px,
        "mid_block_add_attention": False,
        "scaling_factor": 1.0,
    }


def text_config(cfg: TrainConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """``CLIPTextConfig`` arguments."""
    t = cfg.text
    return {
        "vocab_size": vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "projection_dim": t.hidden_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "max_position_embeddings": t.max_length,
        "hidden_act": "quick_gelu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }


def unet_config(cfg: TrainConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments (16x16 latents, cross-attention on the text encoder's hidden states)."""
    u = cfg.unet
    return {
        "sample_size": cfg.latent_size,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "layers_per_block": u.layers_per_block,
        "block_out_channels": list(u.block_out_channels),
        "down_block_types": list(u.down_block_types),
        "up_block_types": list(u.up_block_types),
        "cross_attention_dim": cfg.text.hidden_size,
        "attention_head_dim": u.attention_head_dim,
        "norm_num_groups": u.norm_num_groups,
    }
