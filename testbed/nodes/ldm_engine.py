"""The real engine: the split LDM runtime (``megbed.testbed.ldm``) run stage by stage under the node's meter.

The node's part of a request is the runtime's preset :func:`~megbed.testbed.ldm.plan.plan_for` plan; each stage runs inside
``rec.stage(name)`` and the device is synchronised before the window closes, so a GPU stage's energy and latency
cover its kernels, not just their launch.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megbed.megwire import Frame
from megbed.testbed.nodes.engine import Engine
from megbed.testbed.nodes.protocol import ProtocolError
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request

log = logging.getLogger(__name__)

BUILTIN_DECODERS = ("base", "distilled", "auto")
MAX_CACHED_DECODERS = 4  # decoders kept loaded besides the node's default (least recently used evicted)
_DECODER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _pixels(state: dict[str, Any]) -> np.ndarray:
    """The decoded image of a stage run as ``uint8 [H, W, 3]`` (what the UE shows and the orchestrator scores)."""
    from megbed.testbed.ldm.stages import image_to_uint8  # deferred: importing the stages imports diffusers

    return image_to_uint8(state["image"])


class LdmEngine(Engine):
    """Runs the node's stages of the split LDM.

    Parameters
    ----------
    model_dir : str or Path
        A diffusers folder (``megbed.testbed.assets.default_model_dir()`` for the embedded model).
    device : str
        Torch device (``cpu``, ``cuda``, ``cuda:1``).
    dtype : torch.dtype, optional
        Default: float16 on CUDA, float32 on CPU.
    decoder : str, optional
        The UE's default decoder: ``base`` (the pipeline's VAE, also for None), ``distilled`` (``<model>/ue_decoder``)
        or a decoder folder (the operator's choice at start-up). A request may name another decoder only by name:
        ``base``, ``distilled``, ``auto`` or a decoder folder listed inside the model folder (:meth:`decoder_names`);
        never by a path. Requested decoders are kept loaded, at most :data:`MAX_CACHED_DECODERS` besides the default.
    role : str, optional
        ``es`` or ``ue``: role-aware loading (each pipeline component when a stage first needs it,
        :mod:`megbed.testbed.ldm.components`); None: the whole pipeline now.
    plans : sequence of str, optional
        With ``role``: the plans this node serves; the folder must hold their components (checked now, the error
        naming the component and the plan).
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                 decoder: str | None = None, role: str | None = None,
                 plans: tuple[str, ...] | list[str] | None = None) -> None:
        from megbed.testbed.ldm.model import load_pipeline

        self.role = role
        self.model = load_pipeline(model_dir, device=device, dtype=dtype, decoder=decoder, role=role, plans=plans)
        self.device = self.model.device
        if self.device.type in ("cuda", "mps"):
            from megbed.testbed.ldm.model import device_sync

            self.sync = lambda: device_sync(self.device)
        self.info = {
            "engine": "ldm", "model": Path(model_dir).name, "model_dir": str(Path(model_dir).resolve()),
            "model_fingerprint": self.model.fingerprint(), "pipeline": type(self.model.pipe).__name__,
            "device": str(self.device), "dtype": str(self.model.dtype).replace("torch.", ""),
            "decoder": str(decoder or "base"), "torch": torch.__version__,
            "loading": "role-aware (lazy)" if role else "whole pipeline", "plans": list(plans or []),
        }
        self.native_px = int(self.model.default_size()[0])
        # A base default decoder is None here: the decode stage loads the VAE when it first runs, so an ES (or a
        # CEG-only UE) never loads a VAE it does not run.
        self._default_decoder = (self.info["decoder"], None if self.info["decoder"] == "base" else self.model.decoder)
        self._decoders: OrderedDict[str, Any] = OrderedDict()

    def decoder_names(self) -> list[str]:
        """The decoders a request may name: the built-in names and every AutoencoderKL folder directly inside
        the model folder (``ue_decoder`` is offered as ``distilled``)."""
        names = list(BUILTIN_DECODERS)
        root = Path(self.model.model_dir)
        try:
            entries = sorted(root.iterdir())
        except OSError:
            return names
        for entry in entries:
            if entry.name in ("vae", "ue_decoder") or not _DECODER_NAME.fullmatch(entry.name) or entry.is_symlink():
                continue
            try:
                config = json.loads((entry / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL":
                names.append(entry.name)
        return names

    def select_decoder(self, name: str, request_id: str | None = None) -> str:
        from megbed.testbed.ldm.model import ModelLoadError, named_decoder

        default_name, default_decoder = self._default_decoder
        name = name or default_name
        if name == default_name:
            self.model.decoder = default_decoder
            return name
        if name not in self._decoders:
            offered = self.decoder_names()
            if name not in offered:
                # Echo only what looks like a name: an answer never repeats a path (the peer's or this host's).
                shown = repr(name) if _DECODER_NAME.fullmatch(name) else "(a path, or not a decoder name)"
                raise ProtocolError(f"decoder {shown} is not one this UE offers ({', '.join(offered)}); a request "
                                    "names a decoder, never a path", request_id=request_id)
            try:
                dec = named_decoder(self.model.model_dir, name, device=self.device, dtype=self.model.dtype,
                                    latent_channels=self.model.latent_channels,
                                    vae_scale_factor=self.model.vae_scale_factor,
                                    base=self.model.base_decoder if name == "auto" else None)
            except ModelLoadError as exc:
                # The full reason (with this host's paths) stays in the node's log.
                log.warning("decoder %r could not be loaded: %s", name, exc)
                raise ProtocolError(f"decoder {name!r} is not available on this UE (see its log)",
                                    request_id=request_id) from None
            self._decoders[name] = self.model.base_decoder if dec is None else dec
            while len(self._decoders) > MAX_CACHED_DECODERS:
                self._decoders.popitem(last=False)
        self._decoders.move_to_end(name)
        self.model.decoder = self._decoders[name]
        return name

    def set_vae_tiling(self, enabled: bool) -> None:
        self.model.set_vae_tiling(bool(enabled))

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def _gen(self, req: Request, reference_n_steps: int | None = None) -> Request:
        """The request resolved for this model (size, scheduler), or its quality reference of N_max steps."""
        from megbed.testbed.request import RequestError

        try:
            return self.model.resolve(req if reference_n_steps is None else req.reference(reference_n_steps))
        except RequestError as exc:
            raise ProtocolError(f"request {req.request_id}: {exc}", request_id=req.request_id) from exc

    def _run(self, scheme: str, node: str, state: dict[str, Any], rec: StageRecorder | None,
             decoder: Any = None) -> dict[str, Any]:
        from megbed.testbed.ldm.components import MissingComponentError
        from megbed.testbed.ldm.plan import plan_for

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
        from megbed.testbed.ldm.plan import build_stages

        for stage in build_stages(plan, node, self.model, decoder=decoder):
            if rec is None:
                state.update(stage(state))
                continue
            extra = {}
            if stage.name == "denoise":
                req = state["request"]
                start = state["sampler"].step if "sampler" in state else 0
                stop = req.es_steps if (plan.scheme == "meg" and node == "es") else req.n_steps
                extra = {"steps": stop - start}
            with rec.stage(stage.name, **extra):
                state.update(stage(state))
        return state

    # --- ES ---------------------------------------------------------------------------------------------------------

    def es(self, req: Request, rec: StageRecorder) -> Frame:
        if req.scheme not in ("meg", "ceg"):
            raise ProtocolError(f"the ES serves meg and ceg requests, not {req.scheme!r}", request_id=req.request_id)
        state = self._run(req.scheme, "es", {"request": self._gen(req)}, rec)
        return state["handoff_frame"] if req.scheme == "meg" else state["image_frame"]

    def reference(self, req: Request, n_steps: int) -> np.ndarray:
        # The reference is the stock decoder's image whatever decoder the UEs use.
        from megbed.testbed.ldm.components import MissingComponentError

        try:
            base = self.model.base_decoder
        except MissingComponentError as exc:
            raise ProtocolError(f"plan 'reference' on the ES: {exc}", request_id=req.request_id) from exc
        state = self._run("ue_local", "ue", {"request": self._gen(req, reference_n_steps=n_steps)}, None,
                          decoder=base)
        return _pixels(state)

    # --- UE ---------------------------------------------------------------------------------------------------------

    def ue_receive(self, frame: Frame, rec: StageRecorder) -> np.ndarray:
        from megbed.testbed.ldm.errors import LdmError
        from megbed.testbed.ldm.handoff import HandoffError
        from megbed.testbed.ldm.stages import IMAGE_KIND

        key = "image_frame" if frame.kind == IMAGE_KIND else "handoff_frame"
        try:
            request = self._request_of(frame)
            state = self._run("ceg" if key == "image_frame" else "meg", "ue", {key: frame, "request": request}, rec)
        except (HandoffError, LdmError) as exc:
            raise ProtocolError(f"bad {frame.kind} frame: {exc}", request_id=frame.meta.get("request_id")) from exc
        return _pixels(state)

    @staticmethod
    def _request_of(frame: Frame) -> Request:
        return Request.from_meta(frame.meta.get("request"), runtime=True)

    def ue_local(self, req: Request, rec: StageRecorder) -> np.ndarray:
        state = self._run("ue_local", "ue", {"request": self._gen(req)}, rec)
        return _pixels(state)

    def close(self) -> None:
        del self.model
