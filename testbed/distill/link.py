"""What the UE receives: an ES latent merged at beta, sent as a real handoff frame through the link, un-merged.

Each sample follows the runtime's path: :func:`~megbed.testbed.ldm.merging.merge` with the request's seed, a
:class:`~megbed.testbed.ldm.handoff.Handoff` frame (merged tokens in the wire dtype, exact merge map as side information),
the link, :meth:`Handoff.from_frame` and :func:`~megbed.testbed.ldm.merging.unmerge`. The link is one of
(:mod:`megbed.testbed.distill.config` explains the kinds):

* the channel emulator (:class:`channel_emu.ChannelEmulator`) in its configured mode -- analog transmission by
  default: RMS power normalisation, two values per complex symbol, the small-scale model, MMSE/ZF equalisation --
  at a state built for the drawn SNR (``snr``) or drawn by the emulator's own channel process (``link``);
* the paper's additive Gaussian noise of std sigma on the merged values (``sigma``);
* nothing (``none``, and the ``clean_fraction`` of samples).

Every draw is a pure function of a numpy Generator the caller seeds, so a training step can be replayed exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from megbed.testbed.distill.config import NoiseConfig
from megbed.testbed.ldm.handoff import MERGE_PREFIX, Handoff
from megbed.testbed.ldm.merging import DEFAULT_MERGE_METHOD, merge, unmerge
from megbed.testbed.request import Request

_TOKENS = f"{MERGE_PREFIX}tokens"


@dataclass(frozen=True)
class NoiseDraw:
    """The link condition of one sample.

    Attributes
    ----------
    kind : str
        ``none`` | ``sigma`` | ``snr`` | ``link``.
    seed : int
        Seeds the noise realisation (and, for ``link``, the channel process's draw).
    sigma : float
        Gaussian std (``sigma``), else NaN.
    snr_db : float
        Average SNR (dB) asked for (``snr``), else NaN (``link``: the process draws it).
    """

    kind: str
    seed: int
    sigma: float = math.nan
    snr_db: float = math.nan


@dataclass(frozen=True)
class Received:
    """A delivered latent and what the link did.

    Attributes
    ----------
    latent : torch.Tensor
        ``[C, h, w]`` float32 on the CPU, as the UE's unmerge stage outputs it.
    snr_db : float
        Realised SNR of the delivery (dB; NaN without the emulator).
    nmse : float
        Normalised squared error the link added to the merged values (0 noiseless; NaN if unknown).
    """

    latent: torch.Tensor
    snr_db: float = math.nan
    nmse: float = math.nan


class TrainingLink:
    """Draws link conditions and delivers merged latents through them.

    Parameters
    ----------
    noise : NoiseConfig
    wire_dtype : str
        dtype of the merged values on the wire.
    """

    def __init__(self, noise: NoiseConfig, wire_dtype: str = "float16") -> None:
        from megbed.channel_emu.config import LinkConfig
        from megbed.channel_emu.emulator import ChannelEmulator

        self.noise = noise
        self.wire_dtype = wire_dtype
        self.config = LinkConfig.from_dict(noise.link or None)
        ChannelEmulator(self.config, seed=0)  # fail here, not at the first sample, on a link that cannot be built

    # --- draws -------------------------------------------------------------------------------------------------------

    def draw(self, rng: np.random.Generator) -> NoiseDraw:
        """One sample's link condition (consumes a fixed number of values from ``rng`` whatever the outcome)."""
        n = self.noise
        clean = rng.random() < n.clean_fraction
        u = float(rng.random())
        seed = int(rng.integers(0, 2**62))
        if clean or n.kind == "none":
            return NoiseDraw("none", seed)
        if n.kind == "sigma":
            return NoiseDraw("sigma", seed, sigma=n.sigma_min + u * (n.sigma_max - n.sigma_min))
        if n.kind == "snr":
            return NoiseDraw("snr", seed, snr_db=n.snr_min_db + u * (n.snr_max_db - n.snr_min_db))
        return NoiseDraw("link", seed)

    # --- delivery ----------------------------------------------------------------------------------------------------

    def _fixed_snr_state(self, snr_db: float, rng: np.random.Generator) -> Any:
        """The channel state of a fixed average SNR (block fading drawn on top when the link model has it)."""
        from megbed.channel_emu.process import ChannelProcess

        h = 1.0 + 0.0j
        if self.config.block_fading:
            re, im = rng.standard_normal(2) * math.sqrt(0.5)
            h = complex(re, im)
        return ChannelProcess(self.config.replace(snr_db=float(snr_db))).state_at(None, h)

    def deliver_frame(self, frame: Any, draw: NoiseDraw) -> tuple[Any, float, float]:
        """``(received frame, realised snr_db, nmse)`` of one handoff frame under ``draw``."""
        if draw.kind == "none":
            return frame, math.nan, 0.0
        rng = np.random.default_rng(draw.seed)
        if draw.kind == "sigma":
            from megbed.megwire import Frame

            sent = np.asarray(frame.buffers[_TOKENS])
            x = sent.astype(np.float32)
            y = (x + np.float32(draw.sigma) * rng.standard_normal(x.shape, dtype=np.float32)).astype(sent.dtype)
            energy = float(np.square(x, dtype=np.float64).sum())
            err = float(np.square(y.astype(np.float64) - x).sum())
            buffers = {**frame.buffers, _TOKENS: y}
            received = Frame(kind=frame.kind, meta=dict(frame.meta), buffers=buffers, version=frame.version)
            return received, math.nan, (err / energy if energy > 0 else 0.0)
        from megbed.channel_emu.emulator import ChannelEmulator

        # A fresh emulator seeded by the draw: "identical seeds give identical deliveries" is the emulator's contract,
        # so each sample depends on its own seed only (0.2 ms to build; TDL models rebuild their Sionna chain).
        emulator = ChannelEmulator(self.config, seed=draw.seed)
        # ``link``: the emulator's own process takes its first step -- a seeded draw of distance and block fading
        # (i.i.d. per sample: training needs the marginal distribution, not the correlation between requests).
        state = None if draw.kind == "link" else self._fixed_snr_state(draw.snr_db, rng)
        received, record = emulator.deliver(frame, state)
        return received, float(record.snr_db), float(record.nmse)

    def receive(self, latent: torch.Tensor, beta: float, merge_seed: int, draw: NoiseDraw,
                method: str = DEFAULT_MERGE_METHOD) -> Received:
        """Merge ``latent`` (``[C, h, w]``) at ``beta`` with ``method``, send it as a handoff under ``draw``,
        un-merge it."""
        request = Request("", n_steps=1, merge_ratio=float(beta), seed=int(merge_seed), merge_method=method,
                          wire_dtype=self.wire_dtype)
        merged = merge(latent.detach().float().cpu().unsqueeze(0), float(beta), int(merge_seed), method)
        frame = Handoff.build(request, merged, None).to_frame()
        received, snr_db, nmse = self.deliver_frame(frame, draw)
        back = Handoff.from_frame(received, device="cpu", dtype=torch.float32)
        return Received(unmerge(back.merged)[0], snr_db, nmse)
