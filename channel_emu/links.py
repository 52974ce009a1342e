"""Small-scale link models: complex symbols in, equalised symbols and their effective noise out.

Every model returns the *unbiased* (zero-forcing) estimate of each transmitted unit-power symbol together with the
per-symbol effective noise variance ``no_eff`` (so that s_hat = s + e, E|e|^2 = no_eff). The analog mode turns this
into an MMSE estimate (shrinkage 1/(1 + no_eff)); the coded mode feeds both to the LLR demapper.

* ``awgn``: y = s + n (hand-written: one complex Gaussian per symbol, nothing else to do).
* ``rayleigh_block``: y = h s + n with the request's block-fading coefficient h (from the channel process), perfect
  CSI: s_hat = y / h, no_eff = N0 / |h|^2.
* ``rayleigh_symbol``: i.i.d. h_i ~ CN(0, 1) per symbol (fast fading), perfect CSI.
* ``tdl_a`` .. ``tdl_e``: Sionna's 3GPP TDL model over an OFDM resource grid (Sionna ``ResourceGrid`` with Kronecker
  pilots, ``OFDMChannel``), channel estimation by Sionna's ``LSChannelEstimator`` (nearest-neighbour interpolation)
  or perfect CSI, and Sionna's ``LMMSEEqualizer``. One TDL realisation per slot; airtime counts whole slots
  including pilots and cyclic prefix.

N0 = 1 / SNR with unit average symbol energy; SNR is the delivery's average SNR (Es/N0 per complex symbol).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from channel_emu.config import LinkConfig

_SIONNA_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def sionna_rng(generator: torch.Generator, device: str = "cpu"):
    """Make Sionna blocks draw from ``generator`` for the duration (Sionna 2.x uses one global generator per device).

    Seeded emulators must not share Sionna's global stream, or two emulators would perturb each other's sequences.
    """
    from sionna.phy import config as sionna_config

    with _SIONNA_RNG_LOCK:
        rngs = sionna_config._torch_rngs
        saved = rngs.get(device)
        rngs[device] = generator
        try:
            yield
        finally:
            if saved is None:
                rngs.pop(device, None)
            else:
                rngs[device] = saved


@dataclass
class LinkOutput:
    """What the receiver has after equalisation.

    Attributes
    ----------
    s_hat : numpy.ndarray, complex64 [N]
        Unbiased estimates of the N transmitted symbols.
    no_eff : numpy.ndarray, float32 [N]
        Effective noise variance of each estimate.
    channel_uses : int
        Complex channel symbols occupied on air (data, pilots; OFDM: whole slots).
    airtime_s : float
        Time on air (s).
    """

    s_hat: np.ndarray
    no_eff: np.ndarray
    channel_uses: int
    airtime_s: float


def complex_noise(rng: np.random.Generator, n: int, variance: float | np.ndarray) -> np.ndarray:
    """CN(0, variance) samples, complex64 [n]."""
    w = rng.standard_normal(2 * n, dtype=np.float32).view(np.complex64)
    w *= np.float32(math.sqrt(0.5)) * (np.sqrt(variance).astype(np.float32) if isinstance(variance, np.ndarray)
                                       else np.float32(math.sqrt(variance)))
    return w


class SymbolLink:
    """Base class: one small-scale model at a given symbol rate."""

    name = "base"
    flat = True  # every symbol sees the same SNR (the abstraction can skip the effective-SNR mapping)

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.symbol_rate = config.symbol_rate

    def channel_uses(self, n: int) -> int:
        """Channel symbols needed to carry ``n`` data symbols."""
        return int(n)

    def airtime_s(self, n: int) -> float:
        """Airtime (s) of ``n`` data symbols."""
        return self.channel_uses(n) / self.symbol_rate

    def transmit(self, s: np.ndarray, snr_db: float, rng: np.random.Generator,
                 fading: complex = 1.0 + 0.0j) -> LinkOutput:
        raise NotImplementedError

    def gains(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Post-equalisation SNR of ``n`` symbols relative to the delivery's SNR (for the abstraction)."""
        return np.ones(n, np.float32)


class AwgnLink(SymbolLink):
    name = "awgn"

    def transmit(self, s, snr_db, rng, fading=1.0 + 0.0j):
        n0 = 10.0 ** (-snr_db / 10.0)
        s_hat = s + complex_noise(rng, s.size, n0)
        return LinkOutput(s_hat, np.full(s.size, n0, np.float32), s.size, self.airtime_s(s.size))


class RayleighBlockLink(SymbolLink):
    """Flat block fading; ``snr_db`` is the realised SNR (average SNR x |h|^2), h the process's coefficient."""

    name = "rayleigh_block"

    def transmit(self, s, snr_db, rng, fading=1.0 + 0.0j):
        # snr_db already contains 10 log10 |h|^2: the post-equalisation noise is N0_avg / |h|^2 = 10^(-snr/10).
        no_eff = 10.0 ** (-snr_db / 10.0)
        s_hat = s + complex_noise(rng, s.size, no_eff)
        return LinkOutput(s_hat, np.full(s.size, no_eff, np.float32), s.size, self.airtime_s(s.size))


class RayleighSymbolLink(SymbolLink):
    """i.i.d. Rayleigh per symbol around the average SNR, perfect CSI, zero-forcing."""

    name = "rayleigh_symbol"
    flat = False

    def gains(self, n, rng):
        return rng.standard_exponential(n, dtype=np.float32)

    def transmit(self, s, snr_db, rng, fading=1.0 + 0.0j):
        n0 = 10.0 ** (-snr_db / 10.0)
        g = rng.standard_exponential(s.size, dtype=np.float32)  # |h|^2 of CN(0, 1)
        g = np.maximum(g, np.float32(1e-12))
        no_eff = (n0 / g).astype(np.float32)
        # y/h = s + n/h: the phase of h does not change the statistics of n/h (n is circular), so draw n/h directly.
        s_hat = s + complex_noise(rng, s.size, no_eff)
        return LinkOutput(s_hat, no_eff, s.size, self.airtime_s(s.size))


class TdlOfdmLink(SymbolLink):
    """3GPP TDL over OFDM with Sionna (resource grid, OFDM channel, LS estimation or perfect CSI, LMMSE)."""

    def __init__(self, config: LinkConfig) -> None:
        super().__init__(config)
        from sionna.phy.channel import OFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.mimo import StreamManagement
        from sionna.phy.ofdm import LMMSEEqualizer, LSChannelEstimator, ResourceGrid, ResourceGridMapper

        o = config.ofdm
        self.name = config.model
        self.subcarrier_spacing_hz = config.bandwidth_hz / o.fft_size
        self.rg = ResourceGrid(num_ofdm_symbols=o.num_ofdm_symbols, fft_size=o.fft_size,
                               subcarrier_spacing=self.subcarrier_spacing_hz, num_tx=1, num_streams_per_tx=1,
                               cyclic_prefix_length=o.cp_length, pilot_pattern="kronecker",
                               pilot_ofdm_symbol_indices=list(o.pilot_ofdm_symbols), device="cpu")
        self.data_per_slot = int(self.rg.num_data_symbols)
        self.res_per_slot = o.num_ofdm_symbols * o.fft_size
        # One OFDM symbol lasts (fft + cp) / B (sampling rate = bandwidth).
        self.slot_s = o.num_ofdm_symbols * (o.fft_size + o.cp_length) / config.bandwidth_hz
        # Speed for the TDL Doppler: the process's Doppler at the carrier, v = f_D c / f_c.
        speed = config.process.doppler_hz * 299_792_458.0 / o.carrier_hz
        self.tdl = TDL(config.model[-1].upper(), delay_spread=o.delay_spread_s, carrier_frequency=o.carrier_hz,
                       min_speed=speed, max_speed=speed, device="cpu")
        self.channel = OFDMChannel(self.tdl, self.rg, normalize_channel=True, return_channel=True, device="cpu")
        self.mapper = ResourceGridMapper(self.rg, device="cpu")
        self.estimator = LSChannelEstimator(self.rg, interpolation_type="nn", device="cpu")
        self.equalizer = LMMSEEqualizer(self.rg, StreamManagement(np.array([[1]]), 1), device="cpu")
        self.perfect_csi = o.csi == "perfect"

    flat = False

    def gains(self, n, rng):
        """|h|^2 of the data resource elements of fresh TDL realisations (perfect CSI)."""
        slots = self.slots(n)
        x = torch.zeros(slots, 1, 1, self.data_per_slot, dtype=torch.complex64)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad(), sionna_rng(gen):
            _, h = self.channel(self.mapper(x), torch.tensor(1.0))
        g = h.reshape(slots, -1).abs().square().numpy()
        data = self.rg.pilot_pattern.mask.reshape(-1).numpy() == 0
        return np.ascontiguousarray(g[:, data].reshape(-1)[:n], dtype=np.float32)

    def slots(self, n: int) -> int:
        return max(1, -(-int(n) // self.data_per_slot))

    def channel_uses(self, n: int) -> int:
        return self.slots(n) * self.res_per_slot

    def airtime_s(self, n: int) -> float:
        return self.slots(n) * self.slot_s

    def transmit(self, s, snr_db, rng, fading=1.0 + 0.0j):
        n = s.size
        slots = self.slots(n)
        padded = np.zeros(slots * self.data_per_slot, np.complex64)
        padded[:n] = s
        if n < padded.size:  # fill with unit-power symbols so the pilots' neighbours look like data
            padded[n:] = np.exp(1j * rng.uniform(0, 2 * np.pi, padded.size - n)).astype(np.complex64)
        x = torch.from_numpy(padded).reshape(slots, 1, 1, self.data_per_slot)
        no = torch.tensor(10.0 ** (-snr_db / 10.0), dtype=torch.float32)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad(), sionna_rng(gen):
            y, h = self.channel(self.mapper(x), no)
            if self.perfect_csi:
                h_hat, err_var = h, torch.zeros((), dtype=torch.float32)
            else:
                h_hat, err_var = self.estimator(y, no)
            x_hat, no_eff = self.equalizer(y, h_hat, err_var, no)
        s_hat = x_hat.reshape(-1).numpy().astype(np.complex64)[:n]
        ne = no_eff.reshape(-1).numpy().astype(np.float32)[:n]
        return LinkOutput(s_hat, np.maximum(ne, np.float32(1e-12)), self.channel_uses(n), self.airtime_s(n))


def make_link(config: LinkConfig) -> SymbolLink:
    """The small-scale model named by ``config.model``."""
    if config.model == "awgn":
        return AwgnLink(config)
    if config.model == "rayleigh_block":
        return RayleighBlockLink(config)
    if config.model == "rayleigh_symbol":
        return RayleighSymbolLink(config)
    return TdlOfdmLink(config)
