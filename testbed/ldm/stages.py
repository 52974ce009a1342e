"""Stages: pure compute steps that declare what they read and write (diffusers' modular-pipeline idea).

A stage is called with a *state* (a mapping of named values) and returns a dict of its outputs; it holds no
sockets, takes no timestamps and keeps nothing between calls except the model it was built with. Node code and the
in-process runner wrap each call with their own probes.

State names used by the stages:

=================  =====================================================================================
``request``        :class:`~megbed.testbed.request.Request` (resolved by ``LdmModel.resolve``)
``text``           :class:`~megbed.testbed.ldm.model.TextConditioning`
``latents``        ``torch.Tensor [1, C, h, w]``, U-Net latent space, on the node's device
``sampler``        :class:`~megbed.testbed.ldm.schedulers.SamplerState` (scheduler + generator at some step)
``merged``         :class:`~megbed.testbed.ldm.merging.MergedLatent`
``handoff``        :class:`~megbed.testbed.ldm.handoff.Handoff`
``handoff_frame``  ``megwire.Frame`` of kind ``"handoff"`` (what travels ES -> UE in MEG)
``image``          ``torch.Tensor [1, 3, H, W]`` float32 in [0, 1]
``image_frame``    ``megwire.Frame`` of kind ``"image"``: PNG bytes (what travels in CEG)
=================  =====================================================================================

Stage names are the dataset's: ``text_encode``, ``denoise``, ``merge``, ``serialize``, ``deserialize``,
``unmerge``, ``decode``, ``image_encode``, ``image_decode``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from megbed.megwire import Frame
from megbed.testbed.ldm.errors import StageError
from megbed.testbed.ldm.handoff import Handoff, HandoffError
from megbed.testbed.ldm.merging import merge, unmerge
from megbed.testbed.ldm.model import LatentDecoder, LdmModel
from megbed.testbed.request import Request, RequestError

IMAGE_KIND = "image"
IMAGE_VERSION = 1


class Stage:
    """Base class: ``inputs`` must be in the state, ``optional_inputs`` may be, ``outputs`` are returned.

    Outputs listed in ``optional_outputs`` may be absent from the returned dict.
    """

    name: ClassVar[str] = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional_outputs: tuple[str, ...] = ()

    def __call__(self, state: Mapping[str, Any]) -> dict[str, Any]:
        missing = [name for name in self.inputs if name not in state]
        if missing:
            raise StageError(f"stage {self.name!r} needs {missing} in the state, which holds {sorted(state)}")
        out = self.run(state)
        absent = [name for name in self.outputs if name not in out and name not in self.optional_outputs]
        if absent:
            raise StageError(f"stage {self.name!r} did not produce {absent}")
        return out

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {list(self.inputs)} -> {list(self.outputs)})"


class TextEncodeStage(Stage):
    """Prompt -> text conditioning (both CFG halves computed on this node; they never travel)."""

    name = "text_encode"
    inputs = ("request",)
    outputs = ("text",)

    def __init__(self, model: LdmModel) -> None:
        self.model = model

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": self.model.encode_text(self.model.resolve(state["request"]))}


class DenoiseStage(Stage):
    """Denoising steps ``[sampler.step, stop)`` of the request's N-step schedule.

    Without ``latents`` in the state it starts the schedule: a fresh sampler seeded with the request's seed and
    the initial noise (as ``pipe(...)`` draws it). With ``latents`` it continues from the ``sampler`` there (the
    UE's resumed one in a hybrid split).

    Parameters
    ----------
    model : LdmModel
    stop : str
        ``"split"``: stop at k (the ES in MEG); ``"end"``: run to N.
    tome_node : str
        Which request field sets the tomesd ratio: ``"es"`` (``tome_ratio_es``) or ``"ue"``.
    """

    name = "denoise"
    inputs = ("request",)
    optional_inputs = ("text", "latents", "sampler")
    outputs = ("latents", "sampler")

    def __init__(self, model: LdmModel, *, stop: str = "end", tome_node: str = "es") -> None:
        if stop not in ("split", "end") or tome_node not in ("es", "ue"):
            raise ValueError(f"DenoiseStage(stop={stop!r}, tome_node={tome_node!r}): stop is 'split' or 'end', "
                             "tome_node is 'es' or 'ue'")
        self.model, self.stop, self.tome_node = model, stop, tome_node

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        model = self.model
        request = model.resolve(state["request"])
        stop = request.es_steps if self.stop == "split" else request.n_steps
        if "latents" in state:
            sampler = state.get("sampler")
            if sampler is None:
                raise StageError("denoise got latents but no sampler to continue from")
            latents = state["latents"].to(model.device, model.dtype)
        else:
            sampler = model.new_sampler(request)
            latents = sampler.initial_noise(model.latent_shape(request), model.device, model.dtype)
        if sampler.num_steps != request.n_steps or not 0 <= sampler.step <= stop:
            raise StageError(f"denoise to step {stop} of N={request.n_steps} cannot continue a sampler at step "
                             f"{sampler.step} of {sampler.num_steps}")
        if sampler.step < stop:
            text = state.get("text")
            if text is None:
                raise StageError(f"denoise steps {sampler.step}..{stop} need 'text' (run text_encode first)")
            ratio = request.tome_ratio_es if self.tome_node == "es" else request.tome_ratio_ue
            with model.tome(ratio):
                while sampler.step < stop:
                    latents = model.denoise_step(latents, sampler, text)
        return {"latents": latents, "sampler": sampler}


class MergeStage(Stage):
    """Latents -> merged tokens + side information at the request's beta and method (seeded by the request's seed)."""

    name = "merge"
    inputs = ("request", "latents")
    outputs = ("merged",)

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        request: Request = state["request"]
        return {"merged": merge(state["latents"], request.merge_ratio, request.seed, request.merge_method)}


class SerializeStage(Stage):
    """Merged latent (+ sampler state when the UE must finish the steps) -> handoff frame."""

    name = "serialize"
    inputs = ("request", "merged")
    optional_inputs = ("sampler",)
    outputs = ("handoff", "handoff_frame")

    def __init__(self, model: LdmModel) -> None:
        self.model = model

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        request = self.model.resolve(state["request"])
        handoff = Handoff.build(request, state["merged"], state.get("sampler"))
        return {"handoff": handoff, "handoff_frame": handoff.to_frame()}


class DeserializeStage(Stage):
    """Handoff frame -> request, merged latent and (k < N) the resumed sampler, on this node's device."""

    name = "deserialize"
    inputs = ("handoff_frame",)
    outputs = ("request", "handoff", "merged", "sampler")
    optional_outputs = ("sampler",)

    def __init__(self, model: LdmModel) -> None:
        self.model = model

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        handoff = Handoff.from_frame(state["handoff_frame"], device=self.model.device, dtype=self.model.dtype)
        out = {"request": handoff.request, "handoff": handoff, "merged": handoff.merged}
        if handoff.request.ue_denoises:
            out["sampler"] = handoff.resume_sampler(self.model.device, self.model.dtype)
        return out


class UnmergeStage(Stage):
    """Merged tokens -> full latent (merged sources copied from their destinations)."""

    name = "unmerge"
    inputs = ("merged",)
    outputs = ("latents",)

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {"latents": unmerge(state["merged"])}


class DecodeStage(Stage):
    """Latents -> image through a decoder object (the model's VAE unless another is given).

    A decoder that sets ``accepts_merge_ratio`` (the ``auto`` gate) also gets the request's beta."""

    name = "decode"
    inputs = ("latents",)
    optional_inputs = ("request",)
    outputs = ("image",)

    def __init__(self, decoder: LatentDecoder) -> None:
        if not isinstance(decoder, LatentDecoder):
            raise TypeError(f"decoder {type(decoder).__name__} has no decode(latents) method")
        self.decoder = decoder

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        if getattr(self.decoder, "accepts_merge_ratio", False) and state.get("request") is not None:
            return {"image": self.decoder.decode(state["latents"], merge_ratio=state["request"].merge_ratio)}
        return {"image": self.decoder.decode(state["latents"])}


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` float in [0, 1] -> ``uint8 [H, W, 3]`` (rounded to nearest; NaN -> 0)."""
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise StageError(f"image must be [1, 3, H, W], got {list(image.shape)}")
    # A latent corrupted on the link can decode to NaN / inf pixels: they become 0 (black), never undefined bytes.
    pixels = (torch.nan_to_num(image[0].detach().float(), nan=0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())


def uint8_to_image(pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse of :func:`image_to_uint8`: ``uint8 [H, W, 3]`` -> ``[1, 3, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float().div(255).to(device)


def image_to_png(image: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` float in [0, 1] -> PNG file bytes as a uint8 array (8-bit RGB, :func:`image_to_uint8`)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_to_uint8(image), mode="RGB").save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def png_to_image(data: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse of :func:`image_to_png`: ``[1, 3, H, W]`` float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as img:
            pixels = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StageError(f"image payload is not a readable PNG: {exc}") from exc
    return uint8_to_image(pixels, device)


class ImageEncodeStage(Stage):
    """CEG: the ES's decoded image -> an ``"image"`` frame holding PNG bytes (exact, channel role ``side``)."""

    name = "image_encode"
    inputs = ("request", "image")
    outputs = ("image_frame",)

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        request: Request = state["request"]
        meta = {"image_version": IMAGE_VERSION, "request_id": request.request_id, "request": request.runtime_meta(),
                "channel_roles": {"png": "side"}}
        return {"image_frame": Frame(kind=IMAGE_KIND, meta=meta, buffers={"png": image_to_png(state["image"])})}


class ImageDecodeStage(Stage):
    """CEG: ``"image"`` frame -> request and image on this node."""

    name = "image_decode"
    inputs = ("image_frame",)
    outputs = ("request", "image")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        frame: Frame = state["image_frame"]
        if frame.kind != IMAGE_KIND:
            raise HandoffError(f"expected an {IMAGE_KIND!r} frame, got {frame.kind!r}")
        if frame.meta.get("image_version") != IMAGE_VERSION:
            raise HandoffError(f"image frame version mismatch: frame has v{frame.meta.get('image_version')}, "
                               f"this node speaks v{IMAGE_VERSION}")
        if "png" not in frame.buffers:
            raise HandoffError("image frame has no 'png' buffer")
        try:
            request = Request.from_meta(frame.meta.get("request"), runtime=True)
        except RequestError as exc:
            raise HandoffError(f"image frame request: {exc}") from exc
        return {"request": request, "image": png_to_image(frame.buffers["png"], self.device)}
