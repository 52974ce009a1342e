"""What a node computes, behind one interface: the split LDM runtime, or a model-free stand-in.

The ES and UE nodes speak the protocol; an :class:`Engine` does the stages. Each method receives the request and a
:class:`~megbed.testbed.nodes.records.StageRecorder` and wraps every stage it runs in ``rec.stage(name)`` so the node's meter
measures it. Stage names are the dataset's (``megbed.measurements.schema.STAGES``).

* :class:`~megbed.testbed.nodes.ldm_engine.LdmEngine` runs the real model through ``megbed.testbed.ldm``.
* :class:`~megbed.testbed.nodes.synthetic_engine.SyntheticEngine` runs no model (harness-overhead measurements, protocol
  tests): real merging and real handoff serialisation on a seeded random latent, no denoising.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from megbed.megwire import Frame
from megbed.testbed.nodes.protocol import ProtocolError, RequestBounds
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request


class Engine(ABC):
    """The compute of one node.

    Attributes
    ----------
    info : dict
        What the node reports in ``hello`` (model folder, device, dtype, engine name) and the manifest records.
    """

    info: dict[str, Any]
    sync: Callable[[], Any] | None = None  # device synchronisation before each stage stamp (CUDA); None on CPU
    native_px: int = 128  # the model's native image side (px): a request without a size gets it; bounds derive

    def default_bounds(self, max_steps: int = 200) -> RequestBounds:
        """Safe request bounds for this engine: sides up to 2x the native resolution, at most ``max_steps``."""
        return RequestBounds.for_native(self.native_px, max_steps=max_steps)

    @abstractmethod
    def es(self, req: Request, rec: StageRecorder) -> Frame:
        """The ES's part. MEG: text_encode, denoise (steps 0..k), merge, serialize -> the ``handoff`` frame.
        CEG: text_encode, denoise (all N), decode, image_encode -> the ``image`` frame."""

    @abstractmethod
    def ue_receive(self, frame: Frame, rec: StageRecorder) -> np.ndarray:
        """The UE's part after the link. Handoff: deserialize, unmerge, [text_encode, denoise k..N], decode.
        Image: image_decode. Returns ``uint8 [H, W, 3]``."""

    @abstractmethod
    def ue_local(self, req: Request, rec: StageRecorder) -> np.ndarray:
        """UE-local: text_encode, denoise (all N steps), decode. Returns ``uint8 [H, W, 3]``."""

    @abstractmethod
    def reference(self, req: Request, n_steps: int) -> np.ndarray:
        """The quality reference for ``req``'s prompt and seed: ``n_steps`` (N_max) steps, beta = 0, no tomesd,
        no link, one node. Returns ``uint8 [H, W, 3]``."""

    def select_decoder(self, name: str, request_id: str | None = None) -> str:
        """Put the UE decoder ``name`` in force for the next UE stages and return its name ("" = this node's
        default, ``info["decoder"]``). This engine has only its default; asking for another is a
        :class:`ProtocolError`."""
        default = str(self.info.get("decoder", "base"))
        if name and name != default:
            raise ProtocolError(f"this UE has only the {default!r} decoder, not {name[:64]!r}",
                                request_id=request_id)
        return default

    def set_vae_tiling(self, enabled: bool) -> None:  # noqa: B027 - optional
        """Decode the next requests with VAE tiling (bounded decoder memory) or not; engines without a VAE ignore it."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the model."""
