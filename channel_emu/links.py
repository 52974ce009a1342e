"""Small-scale link models: complex symbols in, equalised symbols and their effective noise out.

Every model returns the *unbiased* (zero-forcing) estimate of each transmitted unit-power symbol together with the
per-symbol effective noise variance ``no_eff`` (so that s_hat = s + e, E|e|^2 = no_eff). The analog mode turns this
into an MMSE estimate (shrinkage 1/(1 + no_eff)); the coded mode feeds both to the LLR demapper.

* ``awgn``: y = s + n, Sionna's ``AWGN`` draw (:func:`standard_noise`) applied without the block's overhead.
* ``rayleigh_block``: y = h s + n with the request's block-fading coefficient h (from the channel process), perfect
  CSI: s_hat = y / h, no_eff = N0 / |h|^2.
* ``rayleigh_symbol``: i.i.d. h_i ~ CN(0, 1) per symbol (fast fading), perfect CSI.
* ``tdl_a`` .. ``tdl_e``: Sionna's 3GPP TDL model over an OFDM resource grid (Sionna ``ResourceGrid`` with Kronecker
  pilots, ``OFDMChannel``), channel estimation by Sionna's ``LSChannelEstimator`` (nearest-neighbour interpolation)
  or perfect CSI, and Sionna's ``LMMSEEqualizer``. One TDL realisation per slot; airtime counts whole slots
  including pilots and cyclic prefix.

N0 = 1 / SNR with unit average symbol energy; SNR is the delivery's average SNR (Es/N0 per complex symbol).
Symbols are torch tensors; all randomness comes from the :class:`~megbed.channel_emu.noise.NoiseSource` passed in (the
emulator's, seeded; Sionna blocks get torch generators seeded from it), so seeded emulators never share Sionna's
global stream.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from numba import float32, njit

from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.noise import NoiseSource

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
    s_hat : torch.Tensor, complex64 [N]
        Unbiased estimates of the N transmitted symbols.
    no_eff : torch.Tensor float32 [N], or float
        Effective noise variance of each estimate (a float when all symbols share it).
    channel_uses : int
        Complex channel symbols occupied on air (data, pilots; OFDM: whole slots).
    airtime_s : float
        Time on air (s).
    """

    s_hat: torch.Tensor
    no_eff: torch.Tensor | float
    channel_uses: int
    airtime_s: float

    def no_eff_per_symbol(self) -> torch.Tensor:
        """``no_eff`` as a float32 tensor [N]."""
        if isinstance(self.no_eff, torch.Tensor):
            return self.no_eff
        return torch.full((self.s_hat.numel(),), float(self.no_eff), dtype=torch.float32)


def standard_noise(n: int, noise: NoiseSource) -> torch.Tensor:
    """Real and imaginary parts of ``n`` CN(0, 2) samples, float32 [2, n] (row 0 real, row 1 imaginary).

    Laid out as Sionna's ``complex_normal`` (and so its ``AWGN`` block) draws them: all real parts, then all imaginary
    parts. Scaled by sqrt(no / 2) it is CN(0, no).
    """
    return noise.standard_normal_tensor(2, n)


class SymbolLink:
    """Base class: one small-scale model at a given symbol rate.

    ``additive`` links deliver s_hat = s + e, e ~ CN(0, no_eff) independent of s (zero forcing with perfect CSI on
    AWGN and flat fading). Their noise can then be applied to real-valued data directly: :meth:`noise_variance`
    (on a fast-fading link, :meth:`symbol_gains`, from which it is computed) followed by :func:`standard_noise`,
    which is what the analog fast path does. :meth:`transmit` draws the same two things in the same order, so both
    give the same realisation from the same noise state.
    """

    name = "base"
    flat = True  # every symbol sees the same SNR (the abstraction can skip the effective-SNR mapping)
    additive = True
    iid_exp_gains = False  # symbol gains |h_i|^2 i.i.d. Exp(1) (fast paths draw them in their own kernels)

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.symbol_rate = config.symbol_rate

    def channel_uses(self, n: int) -> int:
        """Channel symbols needed to carry ``n`` data symbols."""
        return int(n)

    def airtime_s(self, n: int) -> float:
        """Airtime (s) of ``n`` data symbols."""
        return self.channel_uses(n) / self.symbol_rate

    def noise_variance(self, n: int, snr_db: float, noise: NoiseSource) -> torch.Tensor | float:
        """Effective noise variance of ``n`` symbols: a float when they share it, else float32 [n] (fading drawn
        from ``noise``)."""
        return 10.0 ** (-snr_db / 10.0)

    def transmit(self, s: torch.Tensor, snr_db: float, noise: NoiseSource,
                 fading: complex = 1.0 + 0.0j) -> LinkOutput:
        """Send unit-power symbols ``s`` (complex64 [N]); the randomness comes from ``noise``."""
        n = s.numel()
        no_eff = self.noise_variance(n, snr_db, noise)
        w = standard_noise(n, noise)
        if isinstance(no_eff, torch.Tensor):
            w.mul_(torch.sqrt(no_eff * 0.5))
        else:
            w.mul_(math.sqrt(no_eff * 0.5))
        return LinkOutput(s + torch.complex(w[0], w[1]), no_eff, self.channel_uses(n), self.airtime_s(n))

    def transmit_array(self, x: np.ndarray, snr_db: float, noise: NoiseSource, fading: complex = 1.0 + 0.0j
                       ) -> tuple[np.ndarray, float | np.ndarray, int, float]:
        """:meth:`transmit` on numpy complex64 symbols: (s_hat, no_eff as a float or float32 [N], channel uses,
        airtime). Additive links add the noise in one numba loop (same draws as :meth:`transmit`), with no torch
        tensor; the others go through :meth:`transmit`."""
        x = np.ascontiguousarray(x, dtype=np.complex64).reshape(-1)
        if not self.additive:
            return self._transmit_via_torch(x, snr_db, noise, fading)
        n = x.size
        no_eff = self.noise_variance(n, snr_db, noise)
        w = noise.standard_normal(2 * n)
        y = np.empty(n, np.complex64)
        if isinstance(no_eff, torch.Tensor):
            no_eff = no_eff.numpy()
            _add_noise(x, w, -1.0, np.sqrt(no_eff * np.float32(0.5)), y)
        else:
            _add_noise(x, w, math.sqrt(no_eff * 0.5), np.zeros(1, np.float32), y)
        return y, no_eff, self.channel_uses(n), self.airtime_s(n)

    def _transmit_via_torch(self, x, snr_db, noise, fading):
        out = self.transmit(torch.from_numpy(x), snr_db, noise, fading)
        no = out.no_eff if isinstance(out.no_eff, float) else out.no_eff.numpy()
        return out.s_hat.numpy(), no, out.channel_uses, out.airtime_s

    def gains(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Post-equalisation SNR of ``n`` symbols relative to the delivery's SNR (for the abstraction)."""
        return np.ones(n, np.float32)

    def symbol_gains(self, n: int, noise: NoiseSource, out: np.ndarray | None = None) -> np.ndarray | None:
        """Per-symbol power gains |h_i|^2 of ``n`` symbols drawn from ``noise`` (float32 [n], into ``out`` when
        given), so that no_eff_i = 10^(-snr_db/10) / |h_i|^2; None on a flat link (nothing drawn)."""
        return None


@njit(cache=True, boundscheck=False)
def _add_noise(x, w, std, std_per_symbol, y):
    """y = x + std (w[:n] + j w[n:]) with ``std`` (or, when negative, ``std_per_symbol[i]``) = sqrt(no_eff / 2)."""
    n = x.size
    for i in range(n):
        s = std if std >= 0.0 else float(std_per_symbol[i])
        y[i] = complex(x[i].real + float32(s) * w[i], x[i].imag + float32(s) * w[n + i])


class AwgnLink(SymbolLink):
    """y = s + n with N0 = 10^(-SNR/10), laid out as Sionna's ``AWGN`` draws it (:func:`standard_noise`), or
    (``impl = "sionna"``) Sionna's ``AWGN`` block itself on a torch generator seeded from the noise source."""

    name = "awgn"

    def __init__(self, config: LinkConfig) -> None:
        super().__init__(config)
        self._sionna_awgn = None
        if config.impl == "sionna":
            from sionna.phy.channel import AWGN

            self._sionna_awgn = AWGN(device="cpu")

    def transmit(self, s, snr_db, noise, fading=1.0 + 0.0j):
        if self._sionna_awgn is None:
            return super().transmit(s, snr_db, noise, fading)
        no = 10.0 ** (-snr_db / 10.0)
        with torch.no_grad(), sionna_rng(noise.torch_generator()):
            y = self._sionna_awgn(s, no)
        return LinkOutput(y, no, self.channel_uses(s.numel()), self.airtime_s(s.numel()))

    def transmit_array(self, x, snr_db, noise, fading=1.0 + 0.0j):
        if self._sionna_awgn is None:
            return super().transmit_array(x, snr_db, noise, fading)
        return self._transmit_via_torch(np.ascontiguousarray(x, dtype=np.complex64).reshape(-1), snr_db, noise,
                                        fading)


class RayleighBlockLink(SymbolLink):
    """Flat block fading; ``snr_db`` is the realised SNR (average SNR x |h|^2), h the process's coefficient.

    With perfect CSI the zero-forced estimate is y / h = s + n / h, whose noise variance N0_avg / |h|^2 is
    10^(-snr_db/10) (``snr_db`` already contains 10 log10 |h|^2) and n / h is as circular as n.
    """

    name = "rayleigh_block"


class RayleighSymbolLink(SymbolLink):
    """i.i.d. Rayleigh per symbol around the average SNR, perfect CSI, zero forcing."""

    name = "rayleigh_symbol"
    flat = False
    iid_exp_gains = True

    def gains(self, n, rng):
        # Exp(1) by inversion, -log(1 - u), in place with numpy's SIMD float32 log: ~4x faster than
        # rng.standard_exponential(dtype=float32) (the side block of every analog delivery draws thousands). u has
        # 24 bits, so a gain never exceeds 24 ln 2 = 16.6 (P = 6e-8 a symbol): nothing a block's EESM can show.
        g = rng.random(int(n), dtype=np.float32)
        np.subtract(np.float32(1.0), g, out=g)
        np.log(g, out=g)
        return np.subtract(np.float32(0.0), g, out=g)

    def symbol_gains(self, n, noise, out=None):
        # |h|^2 of CN(0, 1) is Exp(1); y/h = s + n/h, and n/h is circular whatever the phase of h. Clamped so that
        # no_eff stays finite.
        g = noise.exponential(n, out)
        return np.maximum(g, np.float32(1e-12), out=g)

    def noise_variance(self, n, snr_db, noise):
        g = torch.from_numpy(self.symbol_gains(n, noise))
        return torch.reciprocal(g).mul_(10.0 ** (-snr_db / 10.0))


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
        self._data_mask = self.rg.pilot_pattern.mask.reshape(-1).numpy() == 0

    flat = False
    additive = False  # estimation error and inter-carrier structure: only transmit() is exact

    def gains(self, n, rng):
        """|h|^2 of the data resource elements of fresh TDL realisations (perfect CSI)."""
        slots = self.slots(n)
        x = torch.zeros(slots, 1, 1, self.data_per_slot, dtype=torch.complex64)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad(), sionna_rng(gen):
            _, h = self.channel(self.mapper(x), torch.tensor(1.0))
        g = h.reshape(slots, -1).abs().square().numpy()
        return np.ascontiguousarray(g[:, self._data_mask].reshape(-1)[:n], dtype=np.float32)

    def slots(self, n: int) -> int:
        return max(1, -(-int(n) // self.data_per_slot))

    def channel_uses(self, n: int) -> int:
        return self.slots(n) * self.res_per_slot

    def airtime_s(self, n: int) -> float:
        return self.slots(n) * self.slot_s

    def noise_variance(self, n, snr_db, noise):
        raise TypeError("a TDL-OFDM link is not additive: use transmit()")

    def transmit(self, s, snr_db, noise, fading=1.0 + 0.0j):
        gen = noise.torch_generator()
        n = s.numel()
        slots = self.slots(n)
        padded = torch.zeros(slots * self.data_per_slot, dtype=torch.complex64)
        padded[:n] = s
        if n < padded.numel():  # fill with unit-power symbols so the pilots' neighbours look like data
            phase = torch.rand(padded.numel() - n, generator=gen, dtype=torch.float64) * (2 * math.pi)
            padded[n:] = torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
        x = padded.reshape(slots, 1, 1, self.data_per_slot)
        no = torch.tensor(10.0 ** (-snr_db / 10.0), dtype=torch.float32)
        with torch.no_grad(), sionna_rng(gen):
            y, h = self.channel(self.mapper(x), no)
            if self.perfect_csi:
                h_hat, err_var = h, torch.zeros((), dtype=torch.float32)
            else:
                h_hat, err_var = self.estimator(y, no)
            x_hat, no_eff = self.equalizer(y, h_hat, err_var, no)
        s_hat = x_hat.reshape(-1)[:n].to(torch.complex64)
        ne = no_eff.reshape(-1)[:n].to(torch.float32).clamp(min=1e-12)
        return LinkOutput(s_hat, ne, self.channel_uses(n), self.airtime_s(n))


def make_link(config: LinkConfig) -> SymbolLink:
    """The small-scale model named by ``config.model``."""
    if config.model == "awgn":
        return AwgnLink(config)
    if config.model == "rayleigh_block":
        return RayleighBlockLink(config)
    if config.model == "rayleigh_symbol":
        return RayleighSymbolLink(config)
    return TdlOfdmLink(config)
