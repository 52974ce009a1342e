"""The real engine: the split LDM runtime (``testbed.ldm``) run stage by stage under the node's meter.

The node's part of a request is the runtime's preset :func:`~testbed.ldm.plan.plan_for` plan; each stage runs inside
``rec.stage(name)`` and the device is synchronised before the window closes, so a GPU stage's energy and latency
cover its kernels, not just their launch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megwire import Frame
from testbed.nodes.engine import Engine
from testbed.nodes.protocol import ProtocolError, RequestSpec
from testbed.nodes.records import StageRecorder

log = logging.getLogger(__name__)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` float in [0, 1] -> ``uint8 [H, W, 3]`` (rounded to nearest, as the PNG path does; NaN -> 0)."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
    # A latent corrupted on the link can decode to NaN / inf pixels: they become 0 (black), never undefined bytes.
    pixels = (torch.nan_to_num(image[0].detach().float(), nan=0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())


class LdmEngine(Engine):
    """Runs the node's stages of the split LDM.

    Parameters
    ----------
    model_dir : str or Path
        A diffusers folder (``testbed.assets.default_model_dir()`` for the embedded model).
    device : str
        Torch device (``cpu``, ``cuda``, ``cuda:1``).
    dtype : torch.dtype, optional
        Default: float16 on CUDA, float32 on CPU.
    decoder : str, optional
        The UE's default decoder: ``base`` (the pipeline's VAE, also for None), ``distilled`` (``<model>/ue_decoder``)
        or a decoder folder. A request naming another decoder (``RequestSpec.decoder``) gets it, loaded once and kept.
    role : str, optional
        ``es`` or ``ue``: role-aware loading (each pipeline component when a stage first needs it,
        :mod:`testbed.ldm.components`); None: the whole pipeline now.
    plans : sequence of str, optional
        With ``role``: the plans this node serves; the folder must hold their components (checked now, the error
        naming the component and the plan).
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                 decoder: str | None = None, role: str | None = None,
                 plans: tuple[str, ...] | list[str] | None = None) -> None:
        from testbed.ldm.model import load_pipeline

        self.role = role
        self.model = load_pipeline(model_dir, device=device, dtype=dtype, decoder=decoder, role=role, plans=plans)
        self.device = self.model.device
        if self.device.type in ("cuda", "mps"):
            from testbed.ldm.model import device_sync

            self.sync = lambda: device_sync(self.device)
        self.info = {
            "engine": "ldm", "model": Path(model_dir).name, "model_dir": str(Path(model_dir).resolve()),
            "model_fingerprint": self.model.fingerprint(), "pipeline": type(self.model.pipe).__name__,
            "device": str(self.device), "dtype": str(self.model.dtype).replace("torch.", ""),
            "decoder": str(decoder or "base"), "torch": torch.__version__,
            "loading": "role-aware (lazy)" if role else "whole pipeline", "plans": list(plans or []),
        }
        # The default decoder is built when first used: an ES (or a CEG-only UE) never loads a VAE it does not run.
        self._decoders: dict[str, Any] = {}
        if decoder not in (None, "base"):
            self._decoders[self.info["decoder"]] = self.model.decoder

    def select_decoder(self, name: str, request_id: str | None = None) -> str:
        from testbed.ldm.model import ModelLoadError, named_decoder

        name = name or self.info["decoder"]
        if name == "base" and name not in self._decoders:
            self.model.decoder = None  # the base VAE, loaded by the decode stage when it first runs
            return name
        if name not in self._decoders:
            try:
                dec = named_decoder(self.model.model_dir, name, device=self.device, dtype=self.model.dtype,
                                    latent_channels=self.model.latent_channels,
                                    vae_scale_factor=self.model.vae_scale_factor,
                                    base=self.model.base_decoder if name == "auto" else None)
            except ModelLoadError as exc:
                raise ProtocolError(f"decoder {name!r}: {exc}", request_id=request_id) from exc
            self._decoders[name] = self.model.base_decoder if dec is None else dec
        self.model.decoder = self._decoders[name]
        return name

    def set_vae_tiling(self, enabled: bool) -> None:
        self.model.set_vae_tiling(bool(enabled))

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def _gen(self, req: RequestSpec, **kw: Any) -> Any:
        from testbed.ldm.request import RequestError

        try:
            return self.model.resolve(req.generation_request(**kw))
        except RequestError as exc:
            raise ProtocolError(f"request {req.request_id}: {exc}", request_id=req.request_id) from exc

    def _run(self, scheme: str, node: str, state: dict[str, Any], rec: StageRecorder | None,
             decoder: Any = None) -> dict[str, Any]:
        from testbed.ldm.components import MissingComponentError
        from testbed.ldm.plan import plan_for

        plan = plan_for(scheme, state["request"])
        try:
            return self._run_stages(plan, node, state, rec, decoder)
        except MissingComponentError as exc:
            # The ES renders references with the UE-local plan: name it as the ES's 'reference' plan.
            reference = self.role == "es" and node == "ue"
            name = "reference" if reference else ("hybrid" if plan.hybrid else plan.scheme)
            raise ProtocolError(f"plan '{name}' on the {(self.role or node).upper()}: {exc}",
                                request_id=getattr(state.get("request"), "request_id", None)) from exc

    def _run_stages(self, plan: Any, node: str, state: dict[str, Any], rec: StageRecorder | None,
                    decoder: Any) -> dict[str, Any]:
        from testbed.ldm.plan import build_stages

        for stage in build_stages(plan, node, self.model, decoder=decoder):
            if rec is None:
                state.update(stage(state))
                continue
            extra = {}
            if stage.name == "denoise":
                req = state["request"]
                start = state["sampler"].step if "sampler" in state else 0
                stop = req.k if (plan.scheme == "meg" and node == "es") else req.num_steps
                extra = {"steps": stop - start}
            with rec.stage(stage.name, **extra):
                state.update(stage(state))
        return state

    # --- ES ---------------------------------------------------------------------------------------------------------

    def es(self, req: RequestSpec, rec: StageRecorder) -> Frame:
        if req.scheme not in ("meg", "ceg"):
            raise ProtocolError(f"the ES serves meg and ceg requests, not {req.scheme!r}", request_id=req.request_id)
        state = self._run(req.scheme, "es", {"request": self._gen(req)}, rec)
        return state["handoff_frame"] if req.scheme == "meg" else state["image_frame"]

    def reference(self, req: RequestSpec, n_steps: int) -> np.ndarray:
        # The reference is the stock decoder's image whatever decoder the UEs use.
        from testbed.ldm.components import MissingComponentError

        try:
            base = self.model.base_decoder
        except MissingComponentError as exc:
            raise ProtocolError(f"plan 'reference' on the ES: {exc}", request_id=req.request_id) from exc
        state = self._run("ue_local", "ue", {"request": self._gen(req, reference_n_steps=n_steps)}, None,
                          decoder=base)
        return image_to_uint8(state["image"])

    # --- UE ---------------------------------------------------------------------------------------------------------

    def ue_receive(self, frame: Frame, rec: StageRecorder) -> np.ndarray:
        from testbed.ldm.handoff import HandoffError
        from testbed.ldm.request import LdmError
        from testbed.ldm.stages import IMAGE_KIND

        key = "image_frame" if frame.kind == IMAGE_KIND else "handoff_frame"
        try:
            request = self._request_of(frame)
            state = self._run("ceg" if key == "image_frame" else "meg", "ue", {key: frame, "request": request}, rec)
        except (HandoffError, LdmError) as exc:
            raise ProtocolError(f"bad {frame.kind} frame: {exc}", request_id=frame.meta.get("request_id")) from exc
        return image_to_uint8(state["image"])

    @staticmethod
    def _request_of(frame: Frame) -> Any:
        from testbed.ldm.request import GenerationRequest

        return GenerationRequest.from_meta(frame.meta.get("request"))

    def ue_local(self, req: RequestSpec, rec: StageRecorder) -> np.ndarray:
        state = self._run("ue_local", "ue", {"request": self._gen(req)}, rec)
        return image_to_uint8(state["image"])

    def close(self) -> None:
        del self.model
