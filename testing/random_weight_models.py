"""SD-1.5- and SDXL-shaped diffusers models with random weights, built from hand-written configs (no downloads).

Used by the tests (tiny: a few channels, 32-64 px, seconds on a CPU), by the benchmarks (the real SD-1.5 U-Net and
VAE configs at full size) and by anyone who needs a model folder that loads through exactly the path a real one
does: ``save_pretrained`` into a folder, then ``from_pretrained`` back.

The tokenizer is a CLIP-format byte-level BPE written by hand (vocab.json + merges.txt): every byte is a token,
with a handful of merges so that the BPE path runs. ``CLIPTokenizer.from_pretrained(<hub name>)`` would need the
network.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

# SD-1.5's U-Net and VAE (runwayml/stable-diffusion-v1-5 unet/config.json, vae/config.json), written out.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
# SD-1.5's noise schedule (scheduler/scheduler_config.json), shared by every sampler built from it.
SD_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

_MERGES = ["t h", "th e</w>", "a n", "i n", "c a", "ca t</w>", "o n", "r e", "e r", "s t"]
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points >= 256.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write a loadable CLIP byte-level BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json).

    Returns
    -------
    pathlib.Path
        The folder; ``CLIPTokenizer.from_pretrained(folder)`` loads it offline.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in _MERGES] + _SPECIAL
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length)
    tok.save_pretrained(folder)
    return folder


def tokenizer_vocab_size() -> int:
    """Number of tokens :func:`write_clip_tokenizer` writes (the text encoders' ``vocab_size``)."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in _MERGES] + _SPECIAL
    return len(dict.fromkeys(tokens))


def _text_config(hidden: int, layers: int, heads: int, projection: int, intermediate: int | None = None,
                 **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=tokenizer_vocab_size(), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        projection_dim=projection, bos_token_id=tokenizer_vocab_size() - 2, eos_token_id=tokenizer_vocab_size() - 1,
        pad_token_id=tokenizer_vocab_size() - 1, **extra,
    )


def _tiny_vae(scaling_factor: float, force_upcast: bool) -> Any:
    from diffusers import AutoencoderKL

    # Four levels, as in SD: the VAE scale factor is 8.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


def _scheduler(name: str) -> Any:
    from megbed.testbed.ldm.schedulers import build_scheduler

    return build_scheduler(name, SD_NOISE_SCHEDULE)


def build_tiny_model(folder: str | Path, family: str = "sd15", *, scheduler: str = "ddim", seed: int = 0,
                     sample_size: int = 8) -> Path:
    """Save a tiny random-weight pipeline of ``family`` (``"sd15"`` or ``"sdxl"``) to ``folder``.

    Parameters
    ----------
    folder : str or Path
        Target folder (created); holds model_index.json and one subfolder per component, weights as safetensors.
    family : str
        ``"sd15"``: StableDiffusionPipeline (one CLIP text encoder, cross-attention in the first block).
        ``"sdxl"``: StableDiffusionXLPipeline (two text encoders, pooled text + time-id conditioning, no attention
        in the first block).
    scheduler : str
        Sampler saved with the model (a key of :data:`megbed.testbed.ldm.schedulers.SCHEDULERS`).
    seed : int
        Seed of the random weights.
    sample_size : int
        Latent side; the image side is ``8 * sample_size`` pixels.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    torch.manual_seed(seed)
    common = {"sample_size": sample_size, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
              "norm_num_groups": 8}
    if family == "sd15":
        unet = UNet2DConditionModel(
            **common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
            cross_attention_dim=32, attention_head_dim=4,
        )
        pipe = StableDiffusionPipeline(
            vae=_tiny_vae(0.18215, False), text_encoder=CLIPTextModel(_text_config(32, 2, 4, 32)),
            tokenizer=tokenizer, unet=unet, scheduler=_scheduler(scheduler), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    elif family == "sdxl":
        unet = UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_tiny_vae(0.13025, True), text_encoder=CLIPTextModel(_text_config(32, 2, 4, 32)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(32, 2, 4, 32)), tokenizer=tokenizer,
            tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(scheduler), force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        raise ValueError(f"unknown model family {family!r}; use 'sd15' or 'sdxl'")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def add_stand_in_decoder(model_dir: str | Path, bias_shift: float = 0.5) -> Path:
    """Give a model a "distilled" UE decoder for tests: its VAE with the output bias shifted by ``bias_shift``, so the
    decoder loads like a real one but its images differ from the base decoder's. Returns ``<model>/ue_decoder``."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(model_dir) / "ue_decoder"
    shutil.copytree(Path(model_dir) / "vae", folder)
    for f in folder.glob("*.safetensors"):
        weights = load_file(f)
        weights["decoder.conv_out.bias"] = weights["decoder.conv_out.bias"] + bias_shift
        save_file(weights, f)
    return folder


def _cast(module: Any, dtype: torch.dtype) -> Any:
    # Casting an fp32 module to fp32 is a no-op that diffusers still warns about; skip it.
    return module if dtype == torch.float32 else module.to(dtype)


def sd15_unet(dtype: torch.dtype = torch.float32) -> Any:
    """A full-size SD-1.5 U-Net (860 M parameters) with random weights."""
    from diffusers import UNet2DConditionModel

    return _cast(UNet2DConditionModel(**SD15_UNET_CONFIG), dtype).eval()


def sd15_vae(dtype: torch.dtype = torch.float32) -> Any:
    """A full-size SD-1.5 VAE (84 M parameters) with random weights."""
    from diffusers import AutoencoderKL

    return _cast(AutoencoderKL(**SD15_VAE_CONFIG), dtype).eval()


def sd15_text_encoder(dtype: torch.dtype = torch.float32) -> Any:
    """A full-size SD-1.5 CLIP ViT-L/14 text encoder (123 M parameters) with random weights; its vocabulary is
    the hand-written tokenizer's (embeddings shrink accordingly, compute per token is unchanged)."""
    from transformers import CLIPTextModel

    c = SD15_TEXT_CONFIG
    config = _text_config(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["projection_dim"],
                          c["intermediate_size"], hidden_act=c["hidden_act"])
    return _cast(CLIPTextModel(config), dtype).eval()
