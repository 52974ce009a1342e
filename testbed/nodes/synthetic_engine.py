"""A model-free engine: every stage of the protocol except the model's compute.

Used to measure the harness itself (sockets, framing, broker, scheduling: the time per generation that is neither
model compute nor emulated airtime) and to test the protocol in milliseconds. Its latent is seeded Gaussian noise of
the shape the request's image size implies (4 x H/8 x W/8), merged and serialised with the real runtime code
(:mod:`megbed.testbed.ldm.merging`, :class:`megbed.testbed.ldm.handoff.Handoff`), so the payload on the wire has exactly the bytes
a model's would. Its "images" are a fixed function of the latent -- pictures of nothing; never use them as results.

``compute_s_per_step`` optionally sleeps per denoising step to emulate a model's compute time (in the records it
shows up as compute, as it would with a model).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from megbed.megwire import Frame
from megbed.testbed.nodes.engine import Engine
from megbed.testbed.nodes.protocol import ProtocolError
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request

DEFAULT_SIZE_PX = 128


class SyntheticEngine(Engine):
    """See the module docstring.

    Parameters
    ----------
    compute_s_per_step : float
        Seconds slept per denoising step (0: none).
    decode_s : float
        Seconds slept in decode.
    """

    def __init__(self, compute_s_per_step: float = 0.0, decode_s: float = 0.0) -> None:
        self.compute_s_per_step, self.decode_s = float(compute_s_per_step), float(decode_s)
        # Import the runtime now (seconds), not inside the first measured request.
        import megbed.testbed.ldm.handoff  # noqa: F401
        import megbed.testbed.ldm.stages  # noqa: F401
        self.native_px = DEFAULT_SIZE_PX
        self.info = {"engine": "synthetic", "model": "synthetic", "device": "cpu",
                     "compute_s_per_step": self.compute_s_per_step, "decode_s": self.decode_s}

    # --- helpers ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _size(req: Request) -> tuple[int, int]:
        return req.height_px or DEFAULT_SIZE_PX, req.width_px or DEFAULT_SIZE_PX

    def _latent(self, req: Request) -> torch.Tensor:
        h, w = self._size(req)
        gen = torch.Generator().manual_seed(req.seed)
        return torch.randn(1, 4, h // 8, w // 8, generator=gen)

    def _denoise(self, steps: int) -> None:
        if self.compute_s_per_step > 0 and steps > 0:
            time.sleep(self.compute_s_per_step * steps)

    def _decode(self, latent: torch.Tensor) -> np.ndarray:
        if self.decode_s > 0:
            time.sleep(self.decode_s)
        rgb = torch.nan_to_num(torch.sigmoid(latent[0, :3].float()), nan=0.0)
        rgb = rgb.repeat_interleave(8, 1).repeat_interleave(8, 2)
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    # --- ES ---------------------------------------------------------------------------------------------------------

    def es(self, req: Request, rec: StageRecorder) -> Frame:
        from megbed.testbed.ldm.errors import LdmError
        from megbed.testbed.ldm.handoff import Handoff
        from megbed.testbed.ldm.merging import merge
        from megbed.testbed.ldm.stages import ImageEncodeStage

        h, w = self._size(req)
        try:
            gen_req = req.replace(height_px=h, width_px=w, scheduler=req.scheduler or "ddim")
        except (LdmError, ValueError) as exc:  # an unknown scheduler, a bad size: the request's fault
            raise ProtocolError(f"request {req.request_id}: {exc}", request_id=req.request_id) from exc
        with rec.stage("text_encode"):
            pass
        if req.scheme == "meg":
            if gen_req.ue_denoises:
                raise ProtocolError("the synthetic engine has no sampler: it serves k = N only",
                                    request_id=req.request_id)
            with rec.stage("denoise", steps=req.es_steps):
                latent = self._latent(req)
                self._denoise(req.es_steps)
            with rec.stage("merge"):
                merged = merge(latent, req.merge_ratio, req.seed, req.merge_method)
            with rec.stage("serialize"):
                return Handoff.build(gen_req, merged, None).to_frame()
        if req.scheme != "ceg":
            raise ProtocolError(f"the ES serves meg and ceg requests, not {req.scheme!r}", request_id=req.request_id)
        with rec.stage("denoise", steps=req.n_steps):
            latent = self._latent(req)
            self._denoise(req.n_steps)
        with rec.stage("decode"):
            image = self._decode(latent)
        with rec.stage("image_encode"):
            tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
            return ImageEncodeStage()({"request": gen_req, "image": tensor})["image_frame"]

    def reference(self, req: Request, n_steps: int) -> np.ndarray:
        return self._decode(self._latent(req))

    # --- UE ---------------------------------------------------------------------------------------------------------

    def ue_receive(self, frame: Frame, rec: StageRecorder) -> np.ndarray:
        from megbed.testbed.ldm.errors import LdmError
        from megbed.testbed.ldm.handoff import Handoff
        from megbed.testbed.ldm.merging import unmerge
        from megbed.testbed.ldm.stages import IMAGE_KIND, ImageDecodeStage

        try:
            if frame.kind == IMAGE_KIND:
                with rec.stage("image_decode"):
                    image = ImageDecodeStage()({"image_frame": frame})["image"]
                return (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            with rec.stage("deserialize"):
                handoff = Handoff.from_frame(frame)
        except (LdmError, ValueError) as exc:
            raise ProtocolError(f"bad {frame.kind} frame: {exc}", request_id=frame.meta.get("request_id")) from exc
        with rec.stage("unmerge"):
            latent = unmerge(handoff.merged)
        with rec.stage("decode"):
            return self._decode(latent)

    def ue_local(self, req: Request, rec: StageRecorder) -> np.ndarray:
        with rec.stage("text_encode"):
            pass
        with rec.stage("denoise", steps=req.n_steps):
            latent = self._latent(req)
            self._denoise(req.n_steps)
        with rec.stage("decode"):
            return self._decode(latent)
