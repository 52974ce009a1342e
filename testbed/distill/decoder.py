"""The trainable UE decoder (``post_quant_conv`` + VAE decoder), its export as a decoder folder, and installing it.

The decoder being distilled is a copy of the base ``AutoencoderKL`` in float32: only ``post_quant_conv`` and
``decoder`` train, the encoder stays frozen and unused. Its forward pass unscales U-Net latents exactly as
:class:`megbed.testbed.ldm.model.VaeDecoder` does, so that the untrained copy reproduces the base decoder.

The export is a complete ``AutoencoderKL`` folder (config.json + safetensors; the encoder is the base one, unchanged)
so that the runtime loads it through the same path as any VAE (:func:`megbed.testbed.ldm.model.load_decoder`), plus
``distill.json`` (recipe, training summary, base model fingerprint). A decoder-only file would be half the size but
``from_pretrained`` would then initialise the encoder at random and warn on every load.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from megbed.testbed.ldm.model import (
    UE_DECODER_SUBFOLDER,
    DecoderMismatchError,
    LdmModel,
    ModelLoadError,
    check_decoder_fits,
    decoder_geometry,
    load_decoder,
)

TRAINABLE_PREFIXES = ("post_quant_conv.", "decoder.")
DISTILL_META = "distill.json"


def unscale(latents: torch.Tensor, config: Any) -> torch.Tensor:
    """U-Net latents -> the VAE's own latent space (``latents_mean`` / ``latents_std`` or ``1 / scaling_factor``),
    as :class:`~megbed.testbed.ldm.model.VaeDecoder` and the stock pipelines do it."""
    scaling = float(config.scaling_factor)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        m = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        return latents * s / scaling + m
    return latents / scaling


class TrainableDecoder(torch.nn.Module):
    """``post_quant_conv`` + decoder of an ``AutoencoderKL`` copy, trainable.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        Taken over (not copied): cast to float32, encoder frozen.
    """

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae.float()
        self.vae.requires_grad_(False)
        for name, p in self.vae.named_parameters():
            if name.startswith(TRAINABLE_PREFIXES):
                p.requires_grad_(True)
        self.vae.eval()

    def train(self, mode: bool = True) -> TrainableDecoder:
        # No layer of the VAE decoder trains differently (GroupNorm, dropout p = 0), but train mode switches the
        # mid-block attention to another kernel (1e-6 apart): eval mode keeps training numerics equal to the runtime's.
        super().train(mode)
        self.vae.eval()
        return self

    @classmethod
    def from_model(cls, model: LdmModel, device: torch.device | str = "cpu") -> TrainableDecoder:
        """A trainable copy of ``model``'s base VAE on ``device``."""
        return cls(copy.deepcopy(model.pipe.vae).to(device))

    @classmethod
    def from_folder(cls, folder: str | Path, model: LdmModel, device: torch.device | str = "cpu") -> TrainableDecoder:
        """Continue from a decoder folder (checked against ``model``'s latent geometry)."""
        dec = load_decoder(folder, device=device, dtype=torch.float32)
        check_decoder_fits(dec, latent_channels=model.latent_channels, vae_scale_factor=model.vae_scale_factor,
                           where=f"decoder folder {folder}")
        return cls(dec.vae)

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of ``post_quant_conv`` and the decoder, in a fixed order."""
        return [(n, p) for n, p in self.vae.named_parameters() if n.startswith(TRAINABLE_PREFIXES)]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights, detached, contiguous, on the CPU (what a checkpoint stores)."""
        return {n: p.detach().to("cpu").contiguous() for n, p in self.named_trainable()}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Set the trainable weights from :meth:`trainable_state` output (names and shapes must match)."""
        params = dict(self.named_trainable())
        if set(params) != set(state):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise DecoderMismatchError(f"checkpoint weights do not fit this decoder (missing {missing[:3]}, "
                                       f"unexpected {extra[:3]})")
        with torch.no_grad():
            for name, p in params.items():
                if tuple(state[name].shape) != tuple(p.shape):
                    raise DecoderMismatchError(f"checkpoint weight {name} has shape {list(state[name].shape)}, "
                                               f"the decoder's is {list(p.shape)}")
                p.copy_(state[name].to(p.device, p.dtype))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """U-Net latents ``[B, C, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [0, 1] *before* clamping (for the loss)."""
        z = unscale(latents.to(self.device, torch.float32), self.vae.config)
        return self.vae.decode(z, return_dict=False)[0] / 2 + 0.5

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The runtime's :class:`~megbed.testbed.ldm.model.LatentDecoder` interface: clamped images, no gradients."""
        return self.forward(latents).float().clamp(0, 1)


def stored_dtype(vae_folder: str | Path) -> torch.dtype:
    """dtype of the first tensor in a VAE folder's safetensors file (float32 when none is found)."""
    from safetensors import safe_open

    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    files = sorted(Path(vae_folder).glob("*.safetensors"))
    if not files:
        return torch.float32
    with safe_open(str(files[0]), framework="pt") as fh:
        keys = list(fh.keys())
        return dtypes.get(fh.get_slice(keys[0]).get_dtype(), torch.float32) if keys else torch.float32


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``, replacing an existing folder (never leaves ``target`` half-written)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_decoder(decoder: TrainableDecoder, out_dir: str | Path, *, dtype: torch.dtype = torch.float16,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write ``decoder`` as an ``AutoencoderKL`` folder (weights in ``dtype``) with ``distill.json``; atomic."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # Module.type casts parameters and buffers; diffusers' own .to(dtype) would warn about fp32-kept modules.
        vae = copy.deepcopy(decoder.vae).to("cpu").type(dtype).eval()
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / DISTILL_META).write_text(json.dumps(meta or {}, indent=1, sort_keys=True), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def model_geometry(model_dir: str | Path) -> tuple[int, int]:
    """``(latent channels, VAE upsampling)`` of a diffusers model folder, from its configs (nothing loaded)."""
    model_dir = Path(model_dir)
    try:
        unet = json.loads((model_dir / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((model_dir / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{model_dir} is not a diffusers model folder with unet/ and vae/ configs: {exc}") from exc
    return int(unet.get("in_channels", 4)), decoder_geometry(vae)[1]


def check_folder_fits(decoder_dir: str | Path, model_dir: str | Path) -> None:
    """Raise :class:`~megbed.testbed.ldm.model.DecoderMismatchError` when a decoder folder cannot decode the model's latents
    (read from the configs; :class:`~megbed.testbed.ldm.model.ModelLoadError` when the folder holds no decoder)."""
    decoder_dir = Path(decoder_dir)
    try:
        config = json.loads((decoder_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"decoder folder {decoder_dir} has no readable config.json: {exc}") from exc
    channels, factor = model_geometry(model_dir)
    check_decoder_fits(config, latent_channels=channels, vae_scale_factor=factor, where=f"decoder folder {decoder_dir}")


def install_decoder(decoder_dir: str | Path, model_dir: str | Path) -> Path:
    """Copy an exported decoder into ``<model_dir>/ue_decoder`` (after the geometry check), replacing the old one."""
    decoder_dir, model_dir = Path(decoder_dir), Path(model_dir)
    check_folder_fits(decoder_dir, model_dir)
    target = model_dir / UE_DECODER_SUBFOLDER
    if decoder_dir.resolve() == target.resolve():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{UE_DECODER_SUBFOLDER}.", dir=model_dir))
    try:
        for item in sorted(decoder_dir.iterdir()):
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
