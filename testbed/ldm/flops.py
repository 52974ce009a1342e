"""FLOP counts of the model's stages, counted with ``torch.utils.flop_counter.FlopCounterMode``.

The networks are built from the model folder's ``config.json`` files on the ``meta`` device: no weights are read
and no memory is allocated, so even SDXL counts in seconds on a CPU. FLOPs follow PyTorch's convention (a
multiply-add is 2 FLOPs), the same as calflops' FLOPs used by the paper.

Counting builds networks, so it lives with the runtime; the report's cost model (:mod:`megbed.analysis.costfit`) is handed
this module by ``megbed report`` and never imports it (analysis reads data).

Counted per request configuration:

* ``unet_step``: one U-Net forward at the latent size, batch 2 under classifier-free guidance, with tomesd applied
  at the node's ratio;
* ``vae_decode``: ``post_quant_conv`` + VAE decoder at the image size;
* ``text_encode``: every text encoder of the folder on a 77-token prompt (and the negative prompt under CFG).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from megbed.testbed.ldm.errors import FlopCountError

log = logging.getLogger(__name__)

TEXT_TOKENS = 77


@dataclass(frozen=True)
class StageFlops:
    """FLOPs of one request's stages for one configuration.

    Attributes
    ----------
    unet_step : float
        One denoising step (FLOPs), CFG batch included.
    vae_decode : float
        Latent -> image (FLOPs).
    text_encode : float
        All text encoders (FLOPs), CFG batch included; 0 when the folder has none.
    """

    unet_step: float
    vae_decode: float
    text_encode: float


def _config(folder: Path, sub: str) -> dict | None:
    path = folder / sub / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def first_attention_downsample(unet_config: dict) -> int:
    """tomesd's ``max_downsample`` as the runtime sets it by default: the downsampling of the first U-Net block with
    attention (1 for SD 1.x/2.x, 2 for SDXL), i.e. merging in the highest-resolution attention layers."""
    for i, block in enumerate(unet_config.get("down_block_types", [])):
        if "CrossAttn" in block:
            return 2**i
    return 1


@lru_cache(maxsize=64)
def unet_step_flops(model_dir: str, height_px: int, width_px: int, cfg: bool, tome_ratio: float = 0.0,
                    tome_max_downsample: int | None = None) -> float:
    """FLOPs of one U-Net forward (batch 2 when ``cfg``), tomesd applied at ``tome_ratio`` when > 0
    (``tome_max_downsample`` None: the runtime's default, :func:`first_attention_downsample`)."""
    import torch
    from diffusers import UNet2DConditionModel

    folder = Path(model_dir)
    cfg_unet = _config(folder, "unet")
    cfg_vae = _config(folder, "vae")
    if cfg_unet is None or cfg_vae is None:
        raise FlopCountError(f"{folder} has no unet/config.json or vae/config.json")
    scale = 2 ** (len(cfg_vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    batch = 2 if cfg else 1
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg_unet)
            if tome_ratio > 0:
                import tomesd

                downsample = tome_max_downsample or first_attention_downsample(cfg_unet)
                tomesd.apply_patch(unet, ratio=float(tome_ratio), max_downsample=int(downsample), use_rand=False)
            x = torch.zeros(batch, unet.config.in_channels, height_px // scale, width_px // scale)
            t = torch.full((batch,), 10, dtype=torch.long)
            ctx = torch.zeros(batch, TEXT_TOKENS, unet.config.cross_attention_dim)
            kwargs = {}
            if unet.config.addition_embed_type == "text_time":
                time_dim = unet.config.addition_time_embed_dim
                text_dim = unet.config.projection_class_embeddings_input_dim - 6 * time_dim
                kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, text_dim),
                                               "time_ids": torch.zeros(batch, 6)}
            return _count(lambda: unet(x, t, encoder_hidden_states=ctx, **kwargs))
    except FlopCountError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model-building failure: say which folder and why
        raise FlopCountError(f"cannot count U-Net FLOPs of {folder}: {type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=32)
def vae_decode_flops(model_dir: str, height_px: int, width_px: int) -> float:
    """FLOPs of ``vae.decode`` (post_quant_conv + decoder) for one image."""
    import torch
    from diffusers import AutoencoderKL

    folder = Path(model_dir)
    cfg_vae = _config(folder, "vae")
    if cfg_vae is None:
        raise FlopCountError(f"{folder} has no vae/config.json")
    scale = 2 ** (len(cfg_vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    try:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(cfg_vae)
            z = torch.zeros(1, vae.config.latent_channels, height_px // scale, width_px // scale)
            return _count(lambda: vae.decode(z))
    except Exception as exc:  # noqa: BLE001
        raise FlopCountError(f"cannot count VAE FLOPs of {folder}: {type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=16)
def text_encode_flops(model_dir: str, cfg: bool) -> float:
    """FLOPs of every text encoder in the folder on one 77-token prompt (two under CFG); 0 without encoders."""
    import torch
    import transformers

    folder = Path(model_dir)
    total = 0.0
    batch = 2 if cfg else 1
    for sub in ("text_encoder", "text_encoder_2"):
        conf = _config(folder, sub)
        if conf is None:
            continue
        try:
            arch = (conf.get("architectures") or ["CLIPTextModel"])[0]
            cls = getattr(transformers, arch)
            config_cls = getattr(transformers, arch.replace("WithProjection", "").replace("Model", "Config"),
                                 transformers.CLIPTextConfig)
            with torch.device("meta"):
                model = cls(config_cls.from_dict(conf))
                ids = torch.zeros(batch, min(TEXT_TOKENS, model.config.max_position_embeddings), dtype=torch.long)
                total += _count(lambda m=model, i=ids: m(i, output_hidden_states=True))
        except Exception as exc:  # noqa: BLE001
            raise FlopCountError(f"cannot count {sub} FLOPs of {folder}: {type(exc).__name__}: {exc}") from exc
    return total


def _config_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        path = Path(model_dir) / sub / "config.json"
        if path.is_file():
            h.update(sub.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def stage_flops(model_dir: Path, height_px: int, width_px: int, cfg: bool, tome_ratio: float = 0.0,
                tome_max_downsample: int | None = None, disk_cache: Path | None = None) -> StageFlops:
    """All stage FLOPs of one configuration (cached per configuration in memory, and in ``disk_cache`` when given).

    The disk cache is a JSON file keyed by a digest of the model's config files and the configuration, so a
    changed model is recounted and a repeated report of a large model (SDXL counts in tens of seconds) is not.
    """
    key = (f"{_config_digest(model_dir)}:{int(height_px)}x{int(width_px)}:cfg{int(bool(cfg))}:"
           f"tome{round(float(tome_ratio), 4)}:{tome_max_downsample or 'default'}")
    stored: dict = {}
    if disk_cache is not None and disk_cache.is_file():
        try:
            stored = json.loads(disk_cache.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = {}  # a damaged cache is recounted, never trusted
        if isinstance(stored.get(key), dict):
            try:
                return StageFlops(**{k: float(stored[key][k]) for k in ("unet_step", "vae_decode", "text_encode")})
            except (KeyError, TypeError, ValueError):
                pass
    result = _stage_flops(model_dir, height_px, width_px, cfg, tome_ratio, tome_max_downsample)
    if disk_cache is not None:
        stored[key] = asdict(result)
        try:
            disk_cache.parent.mkdir(parents=True, exist_ok=True)
            disk_cache.write_text(json.dumps(stored, indent=1), encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the FLOP cache %s: %s", disk_cache, exc)
    return result


def _stage_flops(model_dir: Path, height_px: int, width_px: int, cfg: bool, tome_ratio: float,
                 tome_max_downsample: int | None) -> StageFlops:
    return StageFlops(
        unet_step=unet_step_flops(str(model_dir), int(height_px), int(width_px), bool(cfg), round(float(tome_ratio), 4),
                                  None if tome_max_downsample is None else int(tome_max_downsample)),
        vae_decode=vae_decode_flops(str(model_dir), int(height_px), int(width_px)),
        text_encode=text_encode_flops(str(model_dir), bool(cfg)),
    )


def native_size_px(model_dir: Path) -> int:
    """The model's native image side (U-Net sample size x VAE scale), for rows without ``height_px``."""
    cfg_unet = _config(model_dir, "unet") or {}
    cfg_vae = _config(model_dir, "vae") or {}
    scale = 2 ** (len(cfg_vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    size = cfg_unet.get("sample_size", 64)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) * scale
