"""Loading an SD-family diffusers pipeline from a local folder, and the model-side compute the stages call.

One code path serves StableDiffusionPipeline (SD 1.x / 2.x, few-step distilled variants) and
StableDiffusionXLPipeline: the family only changes how the prompt becomes conditioning (one text encoder, or two
plus pooled text and time ids). Text encoding reuses the pipeline's own ``encode_prompt`` so that embeddings are
exactly those of ``pipe(...)``.

The decoder is an object with ``decode(latents) -> image`` (:class:`LatentDecoder`); :class:`VaeDecoder` wraps an
``AutoencoderKL`` (its ``post_quant_conv`` + decoder). A distilled UE decoder stored in a subfolder of the model
(``<model>/ue_decoder/``) loads with :func:`load_decoder` and replaces the default without touching any stage;
``load_pipeline(..., decoder="base" | "distilled" | "auto")`` names the choices a UE has (:data:`DECODER_CHOICES`;
``auto`` gates between the two per latent, :mod:`megbed.testbed.ldm.gate`), and
every decoder folder is checked against the model's latent geometry (:func:`check_decoder_fits`).

``load_pipeline(..., role="es" | "ue", plans=[...])`` is the node's *role-aware* load: nothing but configs is read
at start-up (after checking that the folder holds every component the plans need,
:func:`megbed.testbed.ldm.components.check_components`), and each component loads when a stage first uses it (a decode-only
UE loads only the VAE; see :mod:`megbed.testbed.ldm.components`). Without ``role`` the whole pipeline loads eagerly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from megbed.testbed.ldm.components import dtype_kwarg
from megbed.testbed.ldm.errors import DecoderMismatchError, ModelLoadError
from megbed.testbed.ldm.schedulers import SamplerState, new_sampler, resolve_scheduler_name
from megbed.testbed.request import Request, RequestError

log = logging.getLogger(__name__)

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
UE_DECODER_SUBFOLDER = "ue_decoder"
# A UE's decoder by name: the pipeline's own VAE, the distilled one shipped in <model>/ue_decoder, or the gate
# between them calibrated with the distilled one (megbed.testbed.ldm.gate).
DECODER_CHOICES = ("base", "distilled", "auto")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def device_sync(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (CUDA / MPS) so that a timestamp taken next covers them; no-op on CPU."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


@runtime_checkable
class LatentDecoder(Protocol):
    """Anything that turns U-Net-space latents ``[B, 4, h, w]`` into images ``[B, 3, 8h, 8w]`` float32 in [0, 1]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class VaeDecoder:
    """Decode with an ``AutoencoderKL`` exactly as the stock SD / SDXL pipelines do.

    Unscaling uses the VAE config (``latents_mean`` / ``latents_std`` when present, else ``1 / scaling_factor``).
    A float16 VAE whose config sets ``force_upcast`` (SDXL's) is moved to float32 once, here, as the pipelines do
    for every call.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The autoencoder; only ``post_quant_conv`` and ``decoder`` run.
    """

    def __init__(self, vae: Any) -> None:
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae = vae.to(torch.float32)
        self.vae = vae.eval()
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        self.latents_mean = None if mean is None or std is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.latents_std = None if mean is None or std is None else torch.tensor(std).view(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` in U-Net space -> image ``[B, 3, H, W]`` float32 in [0, 1]."""
        latents = latents.to(self.device, self.dtype)
        if self.latents_mean is not None:
            mean = self.latents_mean.to(latents.device, latents.dtype)
            std = self.latents_std.to(latents.device, latents.dtype)
            latents = latents * std / self.scaling_factor + mean
        else:
            latents = latents / self.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)


# Tiles no larger than SD-1.5's native side. diffusers sizes a VAE's tiles from its config's sample_size, which is
# SDXL's whole 1024 px output: "tiling" an SDXL latent would then decode it in one piece and bound nothing.
VAE_TILE_PX = 512


def set_vae_tiling(vae: Any, enabled: bool, tile_px: int = VAE_TILE_PX) -> None:
    """Turn an ``AutoencoderKL``'s tiled decoding on (tiles of at most ``tile_px`` pixels a side) or off.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
    enabled : bool
    tile_px : int
        Largest tile side in image pixels; a VAE whose own tile (its config's ``sample_size``) is smaller keeps it.
    """
    if not enabled:
        vae.disable_tiling()
        return
    vae.enable_tiling()
    own = getattr(vae, "tile_sample_min_size", None)
    if isinstance(own, int) and own > tile_px:
        downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = int(tile_px)
        vae.tile_latent_min_size = int(tile_px) // downsample


def load_decoder(folder: str | Path, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> VaeDecoder:
    """Load a decoder saved as an ``AutoencoderKL`` folder (config.json + safetensors), e.g. ``<model>/ue_decoder``.

    Raises
    ------
    ModelLoadError
        The folder is missing or holds no AutoencoderKL.
    """
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"decoder folder {folder} has no config.json")
    dtype = dtype or default_dtype(device)
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                            **dtype_kwarg(dtype))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a decoder from {folder}: {exc}") from exc
    return VaeDecoder(vae.to(device))


def decoder_geometry(vae_config: Any) -> tuple[int, int]:
    """``(latent_channels, upsampling factor)`` of an ``AutoencoderKL`` config (a mapping or a diffusers config)."""
    get = vae_config.get if isinstance(vae_config, dict) else (lambda k, d=None: getattr(vae_config, k, d))
    blocks = get("block_out_channels") or ()
    return int(get("latent_channels", 4)), 2 ** max(len(blocks) - 1, 0)


def check_decoder_fits(decoder: VaeDecoder | Any, *, latent_channels: int, vae_scale_factor: int,
                       where: str = "decoder") -> None:
    """Raise :class:`DecoderMismatchError` when ``decoder`` cannot decode this model's latents.

    Parameters
    ----------
    decoder : VaeDecoder, AutoencoderKL or its config
        What to check (only its config is read).
    latent_channels : int
        C of the model's latents ``[B, C, h, w]`` (the U-Net's ``in_channels``).
    vae_scale_factor : int
        Pixels per latent cell along each side (8 for SD-family VAEs).
    where : str
        Named in the message (e.g. the folder).
    """
    vae = getattr(decoder, "vae", decoder)
    config = getattr(vae, "config", vae)
    channels, factor = decoder_geometry(config)
    if (channels, factor) != (int(latent_channels), int(vae_scale_factor)):
        raise DecoderMismatchError(
            f"{where} does not fit this model: it decodes {channels}-channel latents upsampled x{factor}, the model's "
            f"latents have {latent_channels} channels and its VAE upsamples x{vae_scale_factor} (a decoder trained "
            "for another model?)")


@dataclass
class TextConditioning:
    """Everything the U-Net needs from the prompt, CFG halves already stacked (negative first).

    Attributes
    ----------
    prompt_embeds : torch.Tensor
        ``[B * (2 if do_cfg else 1), L, D]`` encoder hidden states.
    added_cond : dict or None
        SDXL: ``{"text_embeds": [B', D_pool], "time_ids": [B', 6]}``.
    timestep_cond : torch.Tensor or None
        Guidance embedding for U-Nets with ``time_cond_proj_dim`` (LCM-distilled).
    do_cfg : bool
        Whether classifier-free guidance runs (two U-Net halves per step).
    guidance_scale : float
        CFG scale.
    """

    prompt_embeds: torch.Tensor
    added_cond: dict[str, torch.Tensor] | None
    timestep_cond: torch.Tensor | None
    do_cfg: bool
    guidance_scale: float


def _read_model_index(model_dir: Path) -> dict[str, Any]:
    if not model_dir.exists():
        raise ModelLoadError(f"model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ModelLoadError(f"model path {model_dir} is not a folder")
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{model_dir} is not a diffusers model folder (no model_index.json)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("_class_name") not in SUPPORTED_PIPELINES:
        found = data.get("_class_name") if isinstance(data, dict) else None
        raise ModelLoadError(f"{model_dir} holds a {found!r} pipeline; supported: {', '.join(SUPPORTED_PIPELINES)}")
    return data


def _first_attention_downsample(unet_config: dict[str, Any]) -> int:
    for i, block in enumerate(unet_config.get("down_block_types", ())):
        if "CrossAttn" in block:
            return 2**i
    return 1


class LdmModel:
    """A loaded SD-family pipeline plus the pieces the stages call.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        StableDiffusionPipeline or StableDiffusionXLPipeline, already on ``device`` in ``dtype``.
    device, dtype :
        Where and in which precision the U-Net and text encoders run.
    decoder : LatentDecoder, optional
        Decoder for the decode stage; default: the pipeline's VAE.
    tome_max_downsample : int, optional
        tomesd's ``max_downsample``; default: the downsampling of the first U-Net block with attention (1 for SD
        1.x/2.x, 2 for SDXL), i.e. merging in the highest-resolution attention layers as tomesd recommends.
    model_dir : Path, optional
        Where the model came from (for fingerprints and messages).
    lazy_index : dict, optional
        The folder's model_index.json when components load lazily (``pipe`` then starts with None components and
        :meth:`ensure` loads each from ``model_dir`` on first use).
    """

    def __init__(self, pipe: Any, *, device: torch.device, dtype: torch.dtype,
                 decoder: LatentDecoder | None = None, tome_max_downsample: int | None = None,
                 model_dir: Path | None = None, lazy_index: dict[str, Any] | None = None) -> None:
        name = type(pipe).__name__
        if name not in SUPPORTED_PIPELINES:
            raise ModelLoadError(f"unsupported pipeline {name}; supported: {', '.join(SUPPORTED_PIPELINES)}")
        self.pipe = pipe
        self.family = "sdxl" if name == "StableDiffusionXLPipeline" else "sd"
        self.device, self.dtype = torch.device(device), dtype
        self.model_dir = model_dir
        self.lazy_index = lazy_index
        self.loaded_components: list[str] = []
        self._base_decoder: VaeDecoder | None = None
        self._decoder: LatentDecoder | None = decoder
        self.vae_tiling = False
        self.tome_max_downsample = tome_max_downsample or _first_attention_downsample(self._config("unet"))
        pipe.set_progress_bar_config(disable=True)

    # --- lazily loaded components ----------------------------------------------------------------------------

    def ensure(self, *names: str) -> None:
        """Load the named pipeline components not loaded yet (lazy models only; a whole pipeline has them all).

        Raises
        ------
        megbed.testbed.ldm.components.MissingComponentError
            A component the folder does not hold (a partial folder).
        """
        if self.lazy_index is None:
            return
        from megbed.testbed.ldm.components import load_component

        for name in names:
            if getattr(self.pipe, name, None) is not None:
                continue
            log.info("loading component %s from %s", name, self.model_dir)
            module = load_component(self.model_dir, self.lazy_index, name, device=self.device, dtype=self.dtype)
            self.pipe.register_modules(**{name: module})
            self.loaded_components.append(name)

    def has_component(self, name: str) -> bool:
        """Whether ``name`` is loaded or can be (listed in the folder)."""
        if getattr(self.pipe, name, None) is not None:
            return True
        if self.lazy_index is None:
            return False
        from megbed.testbed.ldm.components import present_components

        return name in present_components(self.model_dir, self.lazy_index)

    def _config(self, name: str) -> dict[str, Any]:
        """``unet`` / ``vae`` config without loading the weights: the loaded module's, else its config.json, else the
        geometry a sliced folder recorded (``megbed_slice.json``)."""
        module = getattr(self.pipe, name, None)
        if module is not None:
            return dict(module.config)
        if self.model_dir is not None:
            path = self.model_dir / name / "config.json"
            if path.is_file():
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
            from megbed.testbed.ldm.components import read_slice

            recorded = read_slice(self.model_dir).get(f"{name}_config")
            if isinstance(recorded, dict):
                return recorded
        raise ModelLoadError(f"{self.model_dir} holds no {name} config (a partial folder without its geometry)")

    @property
    def decoder(self) -> LatentDecoder:
        """The decode stage's decoder (default: the pipeline's VAE, loaded when first asked for)."""
        return self._decoder if self._decoder is not None else self.base_decoder

    @decoder.setter
    def decoder(self, value: LatentDecoder | None) -> None:
        self._decoder = value

    @property
    def base_decoder(self) -> VaeDecoder:
        """The pipeline's own VAE as a decoder (what reference images are decoded with), whatever ``decoder`` is."""
        if self._base_decoder is None:
            self.ensure("vae")
            self._base_decoder = VaeDecoder(self.pipe.vae)
            self._apply_tiling(self._base_decoder)
        return self._base_decoder

    def set_vae_tiling(self, enabled: bool) -> None:
        """Decode with the VAE's tiled decoder (bounded activation memory on memory-bound UEs) or not.

        Applies to the base VAE and any AutoencoderKL-backed decoder (the distilled one) already built.
        """
        self.vae_tiling = bool(enabled)
        for dec in (self._base_decoder, self._decoder, getattr(self._decoder, "distilled", None),
                    getattr(self._decoder, "base", None)):
            if dec is not None:
                self._apply_tiling(dec)

    def _apply_tiling(self, decoder: Any) -> None:
        vae = getattr(decoder, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return
        set_vae_tiling(vae, self.vae_tiling)

    # --- geometry and defaults -------------------------------------------------------------------------------

    @property
    def unet(self) -> Any:
        self.ensure("unet")
        return self.pipe.unet

    @property
    def vae_scale_factor(self) -> int:
        if self.lazy_index is None:
            return int(self.pipe.vae_scale_factor)
        return decoder_geometry(self._config("vae"))[1]

    @property
    def latent_channels(self) -> int:
        try:
            return int(self._config("unet")["in_channels"])
        except ModelLoadError:
            # A U-Net-less partial folder (decode-only UE): the latents it gets are the VAE's.
            return decoder_geometry(self._config("vae"))[0]

    def default_size(self) -> tuple[int, int]:
        """Native image size ``(height, width)`` in pixels."""
        side = int(self._config("unet")["sample_size"]) * self.vae_scale_factor
        return side, side

    def resolve(self, request: Request) -> Request:
        """Fill in the model-dependent defaults (size, scheduler) and check the size fits the model.

        Raises
        ------
        RequestError
            Size not a multiple of ``2 * vae_scale_factor`` (tokens are 2x2 latent patches), or no usable scheduler.
        """
        h, w = self.default_size()
        height, width = request.height_px or h, request.width_px or w
        step = 2 * self.vae_scale_factor
        if height % step or width % step:
            raise RequestError(f"image size {height}x{width} must be a multiple of {step} px for this model "
                               f"(VAE factor {self.vae_scale_factor}, 2x2 latent tokens)")
        if request.scheduler and not self.has_component("scheduler"):
            # A decode-only node (no scheduler in its partial folder) takes the name the ES resolved.
            return request.replace(height_px=height, width_px=width)
        self.ensure("scheduler")
        name = resolve_scheduler_name(request.scheduler or None, self.pipe.scheduler)
        return request.replace(height_px=height, width_px=width, scheduler=name)

    def latent_shape(self, request: Request) -> tuple[int, int, int, int]:
        """``(1, C, H/f, W/f)`` for a resolved request."""
        f = self.vae_scale_factor
        return (1, self.latent_channels, int(request.height_px) // f, int(request.width_px) // f)

    def new_sampler(self, request: Request) -> SamplerState:
        """A fresh sampler at step 0 for a resolved request."""
        self.ensure("scheduler")
        return new_sampler(request.scheduler, self.pipe.scheduler.config, request.n_steps, request.seed,
                           device=self.device)

    # --- compute ---------------------------------------------------------------------------------------------

    def do_cfg(self, request: Request) -> bool:
        """CFG runs when guidance > 1 and the U-Net has no guidance embedding (as in the stock pipelines)."""
        return request.guidance_scale > 1.0 and self._config("unet").get("time_cond_proj_dim") is None

    @torch.no_grad()
    def encode_text(self, request: Request) -> TextConditioning:
        """Prompt (and negative prompt) -> conditioning, through the pipeline's own ``encode_prompt``."""
        from megbed.testbed.ldm.components import text_components

        self.ensure(*text_components(self.family), *(("unet",) if self.family == "sdxl" else ()))
        do_cfg = self.do_cfg(request)
        pipe = self.pipe
        added = None
        if self.family == "sdxl":
            pe, npe, pooled, npooled = pipe.encode_prompt(
                prompt=request.prompt, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=do_cfg, negative_prompt=request.negative_prompt or None,
            )
            proj = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                    else pipe.text_encoder_2.config.projection_dim)
            size = (int(request.height_px), int(request.width_px))
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype, text_encoder_projection_dim=proj)
            if do_cfg:
                pe, pooled, time_ids = torch.cat([npe, pe]), torch.cat([npooled, pooled]), torch.cat([time_ids, time_ids])
            added = {"text_embeds": pooled.to(self.device), "time_ids": time_ids.to(self.device)}
        else:
            pe, npe = pipe.encode_prompt(request.prompt, self.device, 1, do_cfg, request.negative_prompt or None)
            if do_cfg:
                pe = torch.cat([npe, pe])
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            g = torch.tensor(request.guidance_scale - 1).repeat(1)
            timestep_cond = pipe.get_guidance_scale_embedding(
                g, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=self.device, dtype=self.dtype)
        return TextConditioning(pe.to(self.device), added, timestep_cond, do_cfg, request.guidance_scale)

    @torch.no_grad()
    def denoise_step(self, latents: torch.Tensor, sampler: SamplerState, text: TextConditioning) -> torch.Tensor:
        """Run step ``sampler.step`` of the schedule on ``latents`` (CFG as the pipelines do) and advance it."""
        t = sampler.timesteps[sampler.step]
        model_input = torch.cat([latents] * 2) if text.do_cfg else latents
        model_input = sampler.scheduler.scale_model_input(model_input, t)
        noise = self.unet(model_input, t, encoder_hidden_states=text.prompt_embeds,
                          timestep_cond=text.timestep_cond, added_cond_kwargs=text.added_cond, return_dict=False)[0]
        if text.do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + text.guidance_scale * (cond - uncond)
        latents = sampler.scheduler.step(noise, t, latents, **sampler.step_kwargs, return_dict=False)[0]
        sampler.step += 1
        return latents

    @contextlib.contextmanager
    def tome(self, ratio: float) -> Iterator[None]:
        """tomesd inside the U-Net at ``ratio`` for the duration of the block (``use_rand=False``: reproducible)."""
        if ratio <= 0:
            yield
            return
        import tomesd

        tomesd.apply_patch(self.unet, ratio=float(ratio), max_downsample=self.tome_max_downsample, use_rand=False)
        try:
            yield
        finally:
            tomesd.remove_patch(self.unet)

    def fingerprint(self) -> str:
        """A short hash identifying the weights and configs (for reference caches).

        Covers every config / index JSON and, for each weight file, its size and the SHA-256 of its first MiB
        (the safetensors header and the first tensors): retrained weights of the same shapes change it. The
        distilled UE decoder (``ue_decoder/``) is left out: the pipeline and its reference images do not depend on
        it, and which decoder a UE used is recorded on its own.
        """
        h = hashlib.sha256(type(self.pipe).__name__.encode())
        if self.model_dir is not None:
            for path in sorted(self.model_dir.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(self.model_dir).as_posix()
                if rel.split("/", 1)[0] == UE_DECODER_SUBFOLDER:
                    continue
                if path.suffix == ".json":
                    h.update(rel.encode() + b"\0" + path.read_bytes())
                elif path.suffix in (".safetensors", ".bin"):
                    with path.open("rb") as fh:
                        h.update(rel.encode() + b"\0" + str(path.stat().st_size).encode() + fh.read(1 << 20))
        else:
            for name in ("unet", "vae"):
                module = getattr(self.pipe, name)
                h.update(json.dumps(dict(module.config), sort_keys=True, default=str).encode())
                for p in list(module.parameters())[:4]:
                    h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]


def load_pipeline(model_dir: str | Path, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, decoder: LatentDecoder | str | Path | None = None,
                  tome_max_downsample: int | None = None, role: str | None = None,
                  plans: tuple[str, ...] | list[str] | None = None) -> LdmModel:
    """Load an SD-family diffusers pipeline from a local folder (never the network).

    Parameters
    ----------
    model_dir : str or Path
        A diffusers folder (model_index.json + component subfolders) of a StableDiffusionPipeline or
        StableDiffusionXLPipeline.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype, optional
        Default: float16 on CUDA, float32 on CPU.
    decoder : LatentDecoder, str, path, or None
        The decode stage's decoder: an object; ``"base"`` or None for the pipeline's VAE; ``"distilled"`` for the
        distilled UE decoder in ``model_dir/ue_decoder``; ``"auto"`` for the gate between the two
        (:class:`~megbed.testbed.ldm.gate.GatedDecoder`); or a folder loaded with :func:`load_decoder` (relative
        paths are tried inside ``model_dir`` first). A folder must fit the model's latents
        (:func:`check_decoder_fits`).
    tome_max_downsample : int, optional
        Override tomesd's ``max_downsample`` (see :class:`LdmModel`).
    role : str, optional
        ``"es"`` or ``"ue"``: load role-aware and lazily (each component when first used); None: the whole
        pipeline now.
    plans : sequence of str, optional
        With ``role``: the plans this node will serve (``meg``, ``hybrid``, ``ceg``, ``ue_local``, ``reference``);
        the folder must hold every component they need (checked now, before anything loads).

    Raises
    ------
    ModelLoadError
        Missing folder, no/invalid model_index.json, unsupported pipeline class, unreadable components, a
        ``"distilled"`` request on a model without ``ue_decoder/``, or a decoder folder that does not fit
        (:class:`DecoderMismatchError`).
    megbed.testbed.ldm.components.MissingComponentError
        With ``plans``: a component a plan needs is not in the folder (named with the plan).
    """
    from diffusers import DiffusionPipeline

    model_dir = Path(model_dir).expanduser()
    index = _read_model_index(model_dir)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    if role is not None:
        return _load_role_aware(model_dir, index, device=device, dtype=dtype, decoder=decoder,
                                tome_max_downsample=tome_max_downsample, role=role, plans=plans)
    extra: dict[str, Any] = {}
    if "safety_checker" in index:
        extra.update(safety_checker=None, requires_safety_checker=False)
    if "feature_extractor" in index:
        extra["feature_extractor"] = None
    if "image_encoder" in index:
        extra["image_encoder"] = None
    for name, entry in index.items():
        # A partial folder (`megbed model slice`): its left-out components load as None.
        if not name.startswith("_") and isinstance(entry, list) and entry and entry[0] is None:
            extra.setdefault(name, None)
    try:
        pipe = DiffusionPipeline.from_pretrained(model_dir, local_files_only=True, **dtype_kwarg(dtype), **extra)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"cannot load the pipeline in {model_dir}: {exc}") from exc
    pipe = pipe.to(device)
    if isinstance(decoder, str | Path):
        decoder = named_decoder(model_dir, decoder, device=device, dtype=dtype,
                                latent_channels=int(pipe.unet.config.in_channels),
                                vae_scale_factor=int(pipe.vae_scale_factor), base=VaeDecoder(pipe.vae))
    return LdmModel(pipe, device=device, dtype=dtype, decoder=decoder, tome_max_downsample=tome_max_downsample,
                    model_dir=model_dir.resolve())


def _load_role_aware(model_dir: Path, index: dict[str, Any], *, device: torch.device, dtype: torch.dtype,
                     decoder: LatentDecoder | str | Path | None, tome_max_downsample: int | None, role: str,
                     plans: tuple[str, ...] | list[str] | None) -> LdmModel:
    """An :class:`LdmModel` whose pipeline starts empty; components load on first use (:meth:`LdmModel.ensure`)."""
    import inspect

    import diffusers

    from megbed.testbed.ldm.components import check_components

    decoder_name = decoder if isinstance(decoder, str) else None
    if plans:
        check_components(model_dir, index, role, plans, decoder_name)
    cls = getattr(diffusers, index["_class_name"])
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {name: None for name in params if name != "self"}
    for name in params:
        value = index.get(name)
        if name != "self" and not name.startswith("_") and not isinstance(value, list) and value is not None:
            kwargs[name] = value  # config entries (requires_safety_checker, force_zeros_for_empty_prompt, ...)
    if "requires_safety_checker" in kwargs:
        kwargs["requires_safety_checker"] = False
    if "add_watermarker" in kwargs:
        kwargs["add_watermarker"] = False
    try:
        pipe = cls(**kwargs)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot set up the {index['_class_name']} of {model_dir}: {exc}") from exc
    model = LdmModel(pipe, device=device, dtype=dtype, tome_max_downsample=tome_max_downsample,
                     model_dir=model_dir.resolve(), lazy_index=index)
    if isinstance(decoder, str | Path):
        model.decoder = named_decoder(model_dir, decoder, device=device, dtype=dtype,
                                      latent_channels=model.latent_channels,
                                      vae_scale_factor=model.vae_scale_factor,
                                      base=model.base_decoder if decoder == "auto" else None)
    elif decoder is not None:
        model.decoder = decoder
    return model


def decoder_folder(model_dir: str | Path, name: str | Path) -> Path:
    """The folder of the decoder a UE names: ``<model>/ue_decoder`` for ``"distilled"``, else ``name`` tried inside
    ``model_dir`` first."""
    model_dir = Path(model_dir)
    if name == "distilled":
        return model_dir / UE_DECODER_SUBFOLDER
    candidate = model_dir / name
    return candidate if candidate.is_dir() else Path(name)


def named_decoder(model_dir: str | Path, name: str | Path, *, device: torch.device | str, dtype: torch.dtype,
                  latent_channels: int, vae_scale_factor: int, base: LatentDecoder | None = None) -> Any:
    """The decoder a UE names: None for ``"base"`` (the pipeline's VAE), ``<model>/ue_decoder`` for
    ``"distilled"``, the gate between ``base`` and that one for ``"auto"``, else a decoder folder (tried inside
    ``model_dir`` first); checked against the latent geometry.

    Raises
    ------
    ModelLoadError
        ``"distilled"`` / ``"auto"`` on a model without ``ue_decoder/``, ``"auto"`` with a decoder that has no
        calibrated gate (or without ``base``), an unreadable folder, or one that does not fit
        (:class:`DecoderMismatchError`).
    """
    model_dir = Path(model_dir)
    if name == "base":
        return None
    if name == "auto":
        from megbed.testbed.ldm.gate import gated_decoder

        if base is None:
            raise ModelLoadError("the 'auto' decoder needs the base decoder to gate with")
        distilled = named_decoder(model_dir, "distilled", device=device, dtype=dtype, latent_channels=latent_channels,
                                  vae_scale_factor=vae_scale_factor)
        folder = decoder_folder(model_dir, "distilled")
        try:
            gated = gated_decoder(base, distilled, folder)
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"{folder}/distill.json: bad gate: {exc}") from exc
        if gated is None:
            raise ModelLoadError(f"{folder} has no calibrated gate (distill.json 'gate'); "
                                 "run `megbed distill calibrate` or use 'distilled'")
        return gated
    folder = decoder_folder(model_dir, name)
    if name == "distilled" and not folder.is_dir():
        raise ModelLoadError(f"{model_dir} has no distilled UE decoder ({UE_DECODER_SUBFOLDER}/); train one "
                             "with `megbed distill train` or use the base decoder")
    decoder = load_decoder(folder, device=device, dtype=dtype)
    check_decoder_fits(decoder, latent_channels=latent_channels, vae_scale_factor=vae_scale_factor,
                       where=f"decoder folder {folder}")
    return decoder
