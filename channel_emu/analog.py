"""Analog transmission of float values: two values per complex symbol, power-normalised, equalised back.

Each ``values`` buffer x (any float dtype) is scaled by its RMS r (sent as side information, 32 bits per buffer).
All buffers' values, concatenated and padded to an even count 2S, ride on S complex symbols: value k on the real
part of symbol k, value S + k on its imaginary part, s_k = (v_k / r_a + j v_{S+k} / r_b) / sqrt(2), so E|s|^2 = 1.
The link returns s_hat = s + e with E|e|^2 = no_eff; the receiver forms the MMSE estimate s_hat / (1 + no_eff)
(``analog.equalizer = mmse``) or keeps the zero-forcing one (``zf``), rescales and casts back to the buffer's dtype
(clipped to its finite range).

Distortion is therefore the link's real analog noise: on AWGN the delivered NMSE is 1/SNR (ZF) or 1/(1 + SNR)
(MMSE). Airtime is the analog symbols' own: ceil(n / 2) symbols at the symbol rate -- no bits are counted for the
values. This is *not* the paper's accounting, which charges 16 digital bits per value for latency while adding
analog Gaussian noise for distortion; that mix is the emulator's ``shannon`` mode, which calls this module for
the distortion and charges the bits at capacity.

Speed: on an additive link (AWGN, flat and per-symbol Rayleigh with perfect CSI) the whole chain collapses to
y = c (v + r sqrt(no_eff) w) per value, with c the equaliser's shrinkage and w the link's standard normal draw
(:func:`megbed.channel_emu.links.standard_noise`, laid out as Sionna's ``complex_normal``: real parts then imaginary parts,
which is why value k and value S + k share a symbol). The fast path computes exactly that in a few numba loops with
no complex tensors (fp16 <-> fp32 by torch's F16C casts), noise from :mod:`megbed.channel_emu.noise`. fp16 buffers (the
latents) on AWGN and flat or per-symbol Rayleigh links take a fused kernel (:func:`_fused_half`), one call per
delivery: the values' fp16 bits in, then per block of symbols the draws, the Box-Muller noise, fades and
equaliser, the cast back and the squared error in a few vectorised loops over L1-resident scratch (issue 21: a
fixed cost per delivery was what kept SD-1.5 latents above RTF 0.01). The generic path (a
non-additive link such as TDL-OFDM) builds the complex symbols and runs the link's ``transmit``; from the same noise
state both give the same delivery to float rounding. ``impl="sionna"`` takes the generic path, where the AWGN link
runs Sionna's ``AWGN`` block (another random stream: same statistics, not the same numbers).
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numba import float32, float64, njit, uint64

from megbed.channel_emu.links import SymbolLink
from megbed.channel_emu.noise import (
    NoiseSource,
    box_muller,
    draw_words,
    log_one_minus_uniform_at,
    polar_inputs_at,
)
from megbed.channel_emu.scratch import pool
from megbed.channel_emu.vecmath import NATIVE_HALF, float_to_half, half_to_float

SCALE_BITS = 32  # one float32 RMS per buffer, carried as side information
F16 = np.dtype(np.float16)  # the wire dtype of latents: the dtype the fused kernel takes
_F16_MAX = float(np.finfo(np.float16).max)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class AnalogResult:
    """Delivered values and their distortion.

    Attributes
    ----------
    values : dict[str, numpy.ndarray]
        Delivered arrays (same dtype and shape as sent).
    sq_error : float
        Sum of squared errors over all delivered values (after the cast back; accumulated in float64).
    energy : float
        Sum of squares of the sent values.
    num_values : int
        Values carried.
    symbols : int
        Complex channel symbols used (incl. OFDM pilots / slot padding).
    airtime_s : float
        Airtime of the analog symbols (s).
    """

    values: dict[str, np.ndarray]
    sq_error: float
    energy: float
    num_values: int
    symbols: int
    airtime_s: float

    @property
    def nmse(self) -> float:
        """Sum of squared errors / sum of squares (NaN when a sent value was not finite)."""
        if math.isnan(self.sq_error) or not math.isfinite(self.energy):
            return math.nan
        return self.sq_error / self.energy if self.energy > 0 else (0.0 if self.sq_error == 0 else math.inf)


_torch_warned = False


def _torch_view(a: np.ndarray) -> torch.Tensor:
    """A torch view of a contiguous array. Frames from sockets are read-only; torch warns once per process that it
    would not enforce that (we only read from it), which is silenced here the first time."""
    global _torch_warned
    if a.flags.writeable or _torch_warned:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _torch_warned = True
        return torch.from_numpy(a)


def _as_f32(arr: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``arr`` flattened as float32 (no copy when it already is; else into ``out`` when given, float32 of
    ``arr.size``) and its sum of squares (float64).

    fp16 goes through torch's cast (F16C instructions): ~4x faster than a table in numba (gathers are slow on these
    cores) and ~10x faster than numpy's.
    """
    a = np.ascontiguousarray(arr).reshape(-1)
    if a.dtype == np.float32:
        x = a
    elif a.dtype == np.float16:
        x = _torch_view(a).float().numpy() if out is None else torch.from_numpy(out).copy_(_torch_view(a)).numpy()
    elif out is None:
        x = a.astype(np.float32)
    else:
        x = out
        np.copyto(x, a, casting="unsafe")
    return x, float(_sum_sq(x))


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sum_sq(x):
    """Sum of squares in float64 (non-finite iff some value is)."""
    s = 0.0
    for i in range(x.size):
        v = float64(x[i])
        s += v * v
    return s


@njit(inline="always")
def _squared_error(got, ref, nonfinite_as_zero):
    """Sum of (got - ref)^2 in float64; with ``nonfinite_as_zero`` a non-finite received value counts as 0.

    Called with a constant flag by the two kernels below: inlined, the flag's branch folds away, so the plain one
    keeps its vectorised loop (the finiteness test costs ~2x, measured).
    """
    s = 0.0
    for i in range(got.size):
        g = float64(got[i])
        if nonfinite_as_zero and not np.isfinite(g):
            g = 0.0
        d = g - float64(ref[i])
        s += d * d
    return s


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sq_err(got, ref):
    return _squared_error(got, ref, False)


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sq_err_finite(got, ref):
    """As :func:`_sq_err`, a non-finite received value counting as 0 (a corrupted exponent may give inf/NaN)."""
    return _squared_error(got, ref, True)


def digital_distortion(received: np.ndarray, sent: np.ndarray) -> tuple[float, float]:
    """(sum of squared errors, sum of squares of ``sent``) of float values that went digitally and may carry bit
    errors; a non-finite received value counts as 0. Accumulated in float64 without BLAS (whose thread pool costs
    milliseconds to wake on busy cores)."""
    got, _ = _as_f32(received) if received.dtype != np.float64 else (received.reshape(-1), 0.0)
    ref, energy = _as_f32(sent) if sent.dtype != np.float64 else (sent.reshape(-1), 0.0)
    if sent.dtype == np.float64:
        energy = float(_sum_sq(ref))
    return float(_sq_err_finite(got, ref)), energy


@njit(cache=True, boundscheck=False)
def _apply_flat(x, w, c, a, clip, y):
    """y = clip(c x + a w): one buffer over a flat additive link (c: shrinkage, a: c r sqrt(no))."""
    c32, a32, hi = float32(c), float32(a), float32(clip)
    for i in range(x.size):
        v = c32 * x[i] + a32 * w[i]
        y[i] = min(max(v, -hi), hi)


# error_model="numpy": a float division by zero gives inf instead of raising, which is what lets LLVM vectorise
# the loop (with Python's error model it stayed scalar, ~5x slower; g >= 1e-12 here anyway).
@njit(cache=True, boundscheck=False, error_model="numpy")
def _equaliser(g, no, mmse, c_sym, a_sym):
    """Per-symbol shrinkage c and noise gain a (without the RMS) for fades of power gain ``g`` (float32 [S]):
    no_eff = no / g; MMSE: c = 1 / (1 + no_eff) = g / (g + no), a = c sqrt(no_eff) = sqrt(g no) / (g + no);
    ZF: c = 1, a = sqrt(no / g). One division and one square root per symbol, shared by its two values."""
    no32 = float32(no)
    for k in range(g.size):
        gk = g[k]
        if mmse:
            inv = float32(1.0) / (gk + no32)
            c_sym[k] = gk * inv
            a_sym[k] = float32(math.sqrt(gk * no32)) * inv
        else:
            c_sym[k] = float32(1.0)
            a_sym[k] = float32(math.sqrt(no32 / gk))


@njit(inline="always")
def _faded(x, w, c, a, r, hi):
    v = c * x + r * a * w
    return min(max(v, -hi), hi)


@njit(cache=True, boundscheck=False)
def _apply_per_symbol(x, w, c_sym, a_sym, r, first, clip, y):
    """As :func:`_apply_flat` with per-symbol c and a: value i of this buffer is value first + i of the stream and
    rides on symbol (first + i) mod S. The loop is split where the stream wraps (the real parts' half ends) so
    that no modulo runs per value and both halves vectorise."""
    n_sym = c_sym.size
    r32, hi = float32(r), float32(clip)
    split = min(x.size, max(0, n_sym - first))
    # Slices indexed by the loop counter: a computed index would get numba's negative-index check per access,
    # which keeps the loop scalar.
    c1, a1 = c_sym[first:first + split], a_sym[first:first + split]
    for i in range(split):
        y[i] = _faded(x[i], w[i], c1[i], a1[i], r32, hi)
    rest = x.size - split
    lo2 = max(0, first - n_sym)
    c2, a2, x2, w2, y2 = c_sym[lo2:lo2 + rest], a_sym[lo2:lo2 + rest], x[split:], w[split:], y[split:]
    for i in range(rest):
        y2[i] = _faded(x2[i], w2[i], c2[i], a2[i], r32, hi)


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sum_sq_half(h):
    """Sum of squares (float64) of the fp16 values whose bit patterns are ``h`` (uint16)."""
    s = 0.0
    for i in range(h.size):
        v = float64(half_to_float(h[i]))
        s += v * v
    return s


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sum64(x):
    """Sum in float64 (reassociated, so the loop vectorises)."""
    s = 0.0
    for i in range(x.size):
        s += float64(x[i])
    return s


@njit(inline="always")
def _to_half(v, hi, sent):
    """(fp16 bits of v clipped to +-hi, float32 error of that fp16 value against ``sent``)."""
    b = float_to_half(min(max(v, -hi), hi))
    return b, half_to_float(b) - sent


_BLOCK = 1024  # symbols a block of :func:`_fused_half` draws and delivers at a time: its scratch stays in L1


# fastmath "contract": the Box-Muller polynomials compile as in NoiseSource.standard_normal (same noise values). The
# draws' own loops (polar_inputs_at, log_one_minus_uniform_at) are compiled apart, without it.
@njit(cache=True, boundscheck=False, error_model="numpy", fastmath={"contract"})
def _fused_half(x, ends, key, state, fading, no, mmse, segs, y):
    """The whole additive-link chain for fp16 values in one call: the buffers' energies, then block by block of
    symbols the draws (fades, then the noise pairs, as :meth:`NoiseSource.exponential` and
    :meth:`NoiseSource.standard_normal` would give them), the noise pairs by Box-Muller, (on a fading link) the
    equaliser's c and a, scale, clip, the cast back to fp16 and the squared error, the values' fp16 bits read and
    written directly (F16C casts).

    Returns (sum of squared errors, sum of squares of the values; both float64). When a value is not finite
    nothing is drawn or written (the energy says so): the general path sends such a buffer, not this kernel.

    One Python call for the whole delivery: the energies, RMS and counter step in Python and the noise drawn in
    separate calls cost ~20 us more per SD-1.5 delivery on the 2-core box (each numpy call and numba dispatch ~2-4
    us there, and the draws left L1 before they were used). One pass over everything vectorised badly (2x
    slower); a separate pass for the equaliser cost 18 % more.

    Symbol k (of S = ``x.size // 2``) carries stream values k (real part) and S + k (imaginary part). Words come
    from the stream of ``key`` from counter ``state[0]`` (advanced past them): on a fading link the gains first
    (draw k of :func:`log_one_minus_uniform_at`, two a word, gives g_k = max(-log(1 - u), 1e-12), Exp(1)), then the
    noise (word ceil(S / 2) + k gives pair k); on a flat link the noise from word k. MMSE: c = g / (g + no),
    a = sqrt(g no) / (g + no); ZF: c = 1, a = sqrt(no / g); flat links take g = 1. y = clip(c x + r a w) with the
    buffer's RMS r.

    Parameters
    ----------
    x, y : numpy.ndarray, uint16 [2S]
        The values stream (fp16 bits; an odd total padded with a zero) and the delivered stream.
    ends : numpy.ndarray, int64 [buffers]
        Where each buffer ends in the stream (the last end is the values' count).
    key, state : uint64, numpy.ndarray uint64 [1]
        The noise source's stream (:meth:`NoiseSource.stream`).
    segs : numpy.ndarray, int64 [4, m]
        Rows k0, k1, re, im: symbol ranges [k0, k1) over which the real parts stay in buffer ``re`` and the
        imaginary parts in buffer ``im`` (index ``ends.size``: the padding) (:func:`_symbol_segments`).
    """
    s_n = x.size // 2
    nb = ends.size
    rms = np.ones(nb + 1)  # the padding's RMS is 1 (its value is 0)
    energy = 0.0
    lo_b = 0
    for b in range(nb):
        e_b = _sum_sq_half(x[lo_b:ends[b]])
        energy += e_b
        if ends[b] > lo_b and e_b > 0:
            rms[b] = math.sqrt(e_b / (ends[b] - lo_b))
        lo_b = ends[b]
    if not np.isfinite(energy):
        return math.nan, energy
    start = state[0]
    fade_words = draw_words(s_n) if fading else 0
    state[0] = start + uint64(fade_words + s_n)
    noise_start = start + uint64(fade_words)
    n_im = ends[nb - 1] - s_n  # imaginary-part values that exist: the padding's error is not counted
    c_flat = float32(1.0 / (1.0 + no)) if mmse else float32(1.0)
    a_flat = float64(c_flat) * math.sqrt(no)
    hi = float32(_F16_MAX)
    no32 = float32(no)
    scratch = np.empty((6, _BLOCK), np.float32)  # 24 KB: allocated here it costs less than a pool in Python
    log_v, angle, log_g = scratch[0], scratch[1].view(np.int32), scratch[2]
    wr, wi, er = scratch[3], scratch[4], scratch[5]
    total = 0.0
    for m in range(segs.shape[1]):
        r_re, r_im = rms[segs[2, m]], rms[segs[3, m]]
        rr, ri = float32(r_re), float32(r_im)
        ar, ai = float32(a_flat * r_re), float32(a_flat * r_im)
        for lo in range(segs[0, m], segs[1, m], _BLOCK):
            n = min(_BLOCK, segs[1, m] - lo)
            xr, xi, yr, yi = x[lo:lo + n], x[s_n + lo:s_n + lo + n], y[lo:lo + n], y[s_n + lo:s_n + lo + n]
            lim = n_im - lo
            if fading:
                lg = log_g[:n]
                log_one_minus_uniform_at(key, start, lo, lg)
            lv, an = log_v[:n], angle[:n]
            polar_inputs_at(key, noise_start + uint64(lo), lv, an)
            for i in range(n):
                wr[i], wi[i] = box_muller(lv[i], an[i])
            if fading:
                for i in range(n):
                    g = max(float32(0.0) - lg[i], float32(1e-12))
                    if mmse:
                        inv = float32(1.0) / (g + no32)
                        c = g * inv
                        a = float32(math.sqrt(g * no32)) * inv
                    else:
                        c = float32(1.0)
                        a = float32(math.sqrt(no32 / g))
                    vr, vi = half_to_float(xr[i]), half_to_float(xi[i])
                    yr[i], dr = _to_half(c * vr + rr * a * wr[i], hi, vr)
                    yi[i], di = _to_half(c * vi + ri * a * wi[i], hi, vi)
                    er[i] = dr * dr + (di * di if i < lim else float32(0.0))
            else:
                for i in range(n):
                    vr, vi = half_to_float(xr[i]), half_to_float(xi[i])
                    yr[i], dr = _to_half(c_flat * vr + ar * wr[i], hi, vr)
                    yi[i], di = _to_half(c_flat * vi + ai * wi[i], hi, vi)
                    er[i] = dr * dr + (di * di if i < lim else float32(0.0))
            total += _sum64(er[:n])
    return total, energy


@functools.lru_cache(maxsize=256)
def _symbol_segments(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(ends, segs) of :func:`_fused_half` for buffers of ``sizes`` values sharing one stream: where each buffer
    ends, and the symbol ranges over which value k and value S + k stay in one buffer each (rows k0, k1, re, im;
    index len(sizes): the padding)."""
    ends = list(np.cumsum(sizes).tolist())
    s_n = -(-ends[-1] // 2)
    cuts = sorted({0, s_n} | {e for e in ends if e < s_n} | {e - s_n for e in ends if s_n < e < 2 * s_n})
    k0, k1, re, im = [], [], [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        k0.append(a)
        k1.append(b)
        re.append(bisect.bisect_right(ends, a))
        im.append(bisect.bisect_right(ends, s_n + a))
    return np.array(ends, np.int64), np.array([k0, k1, re, im], np.int64)


def _transmit_half(buffers: dict[str, np.ndarray], sizes: list[int], link: SymbolLink, snr_db: float,
                   noise: NoiseSource, mmse: bool) -> AnalogResult | None:
    """:func:`transmit_values`' fast path for fp16 buffers on an additive link with flat or i.i.d. Exp(1) gains,
    in one call of :func:`_fused_half`: the same draws in the same order, the same arithmetic in float32, so the
    same delivery as the general fast path to float rounding. None when a value is not finite (nothing drawn: the
    general path sends it as 0)."""
    total = sum(sizes)
    n_sym = -(-total // 2)
    if len(buffers) == 1 and total == 2 * n_sym:
        (name, arr), = buffers.items()
        x = np.ascontiguousarray(arr).reshape(-1).view(np.uint16)
        got = np.empty(arr.shape, np.float16)  # the caller keeps it: never pooled
        y = got.reshape(-1).view(np.uint16)
    else:
        name = None
        x = pool("x16", 2 * n_sym, np.uint16)
        pos = 0
        for a in buffers.values():
            x[pos:pos + a.size] = np.ascontiguousarray(a).reshape(-1).view(np.uint16)
            pos += a.size
        x[pos:] = 0
        y = pool("y16", 2 * n_sym, np.uint16)
    # Draws in the order link.transmit makes them (fades, then noise), from the same source.
    fading = not link.flat
    no = 10.0 ** (-snr_db / 10.0) if fading else link.noise_variance(n_sym, snr_db, noise)
    key, state = noise.stream()
    ends, segs = _symbol_segments(tuple(sizes))
    sq_err, energy = _fused_half(x, ends, key, state, fading, no, mmse, segs, y)
    if not math.isfinite(energy):
        return None
    if name is not None:
        delivered = {name: got}
    else:
        delivered, pos = {}, 0
        for (name, arr), size in zip(buffers.items(), sizes, strict=True):
            delivered[name] = y[pos:pos + size].copy().view(np.float16).reshape(arr.shape)
            pos += size
    return AnalogResult(delivered, sq_err, energy, total, link.channel_uses(n_sym), link.airtime_s(n_sym))


def _clip_of(dtype: np.dtype) -> float:
    return _F16_MAX if dtype == np.float16 else _F32_MAX


def _deliver_as(y: np.ndarray, arr: np.ndarray, sent: np.ndarray) -> tuple[np.ndarray, float]:
    """The received float32 values ``y`` in the buffer's dtype and shape, with their float64 squared error.

    fp16: ``y`` may be scratch; it is overwritten with the rounded values, whose error is measured. float32:
    ``y`` itself is delivered (it must not be scratch).
    """
    if arr.dtype == np.float16:
        got = np.empty(arr.shape, np.float16)  # the caller keeps it: never pooled
        g = torch.from_numpy(got.reshape(-1))
        g.copy_(torch.from_numpy(y))  # round to nearest even, as numpy's cast
        torch.from_numpy(y).copy_(g)
        return got, float(_sq_err(y, sent))
    if arr.dtype == np.float32:
        return y.reshape(arr.shape), float(_sq_err(y, sent))
    got = y.astype(arr.dtype)  # float64 and wider: the analog value came back in float32
    return got.reshape(arr.shape), float(_sq_err(got, np.ascontiguousarray(arr).reshape(-1)))


def fused_path(link: SymbolLink, impl: str) -> bool:
    """Whether :func:`transmit_values` sends fp16 buffers (:data:`F16`; the callers check the dtypes) over ``link``
    by the fused fp16 kernel: ``impl="fast"``, an additive link with flat or i.i.d. Exp(1) gains, a CPU with native
    half casts (:data:`megbed.channel_emu.vecmath.NATIVE_HALF`). That path runs no torch op (only its rare fallback
    for non-finite values does, on one thread below torch's 32768-element grain)."""
    return NATIVE_HALF and impl == "fast" and link.additive and (link.flat or link.iid_exp_gains)


def transmit_values(buffers: dict[str, np.ndarray], link: SymbolLink, snr_db: float, noise: NoiseSource,
                    fading: complex = 1.0 + 0.0j, equalizer: str = "mmse", impl: str = "fast") -> AnalogResult:
    """Send float buffers as analog symbols through ``link`` (all buffers share one symbol stream).

    Parameters
    ----------
    buffers : dict[str, numpy.ndarray]
        Float arrays of any shape.
    link : SymbolLink
        The small-scale model.
    snr_db : float
        Es/N0 of this delivery (dB).
    noise : NoiseSource
        Source of the noise (and of per-symbol fading).
    equalizer : {"mmse", "zf"}
    impl : {"fast", "sionna"}
        ``fast``: the real-valued shortcut on additive links (see the module docstring); ``sionna``: complex symbols
        through ``link.transmit``.
    """
    sizes = []
    all_half = True
    for name, arr in buffers.items():
        dt = arr.dtype
        if dt.kind != "f":
            raise TypeError(f"analog buffer {name!r} must be floating point, got {dt}")
        all_half = all_half and (dt is F16 or dt == F16)
        sizes.append(arr.size)
    total = sum(sizes)
    n_sym = -(-total // 2)
    if n_sym == 0:
        return AnalogResult({k: v.copy() for k, v in buffers.items()}, 0.0, 0.0, 0, 0, 0.0)
    mmse = equalizer == "mmse"
    if all_half and fused_path(link, impl):
        res = _transmit_half(buffers, sizes, link, snr_db, noise, mmse)
        if res is not None:
            return res
    stream = pool("x", 2 * n_sym)  # the buffers' float32 values, one after the other
    sent, clean, energies, rms, segs = [], [], [], [], []
    pos = 0
    for arr, size in zip(buffers.values(), sizes, strict=True):
        x, e = _as_f32(arr, stream[pos:pos + size])
        energies.append(e)  # of the values as sent (NaN/inf stay: the NMSE then says so)
        sent.append(x)
        if not math.isfinite(e):  # a non-finite value cannot be sent as a voltage: it goes as 0
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            e = float(_sum_sq(x))
        clean.append(x)
        rms.append(math.sqrt(e / x.size) if x.size and e > 0 else 1.0)
        segs.append((pos, pos + size))
        pos += size
    ys = []
    if impl == "fast" and link.additive:
        # Draws in the order link.transmit makes them (fades, then noise), from the same source.
        g = None if link.flat else link.symbol_gains(n_sym, noise, pool("g", n_sym))
        no = 10.0 ** (-snr_db / 10.0) if g is not None else link.noise_variance(n_sym, snr_db, noise)
        w = noise.standard_normal(2 * n_sym, pool("w", 2 * n_sym))
        y_all = pool("y", 2 * n_sym)
        if g is None:
            c = 1.0 / (1.0 + no) if mmse else 1.0
            a = c * math.sqrt(no)
        else:
            c_sym, a_sym = pool("c", n_sym), pool("a", n_sym)
            _equaliser(g, no, mmse, c_sym, a_sym)
        for (lo, hi), x, r, arr in zip(segs, clean, rms, buffers.values(), strict=True):
            # fp16 (the latents) goes through scratch and is rounded into a fresh array; other dtypes keep y.
            y = y_all[lo:hi] if arr.dtype == np.float16 else np.empty(hi - lo, np.float32)
            if g is not None:
                _apply_per_symbol(x, w[lo:hi], c_sym, a_sym, r, lo, _clip_of(arr.dtype), y)
            else:
                _apply_flat(x, w[lo:hi], c, a * r, _clip_of(arr.dtype), y)
            ys.append(y)
        symbols, airtime = link.channel_uses(n_sym), link.airtime_s(n_sym)
    else:
        u = np.zeros(2 * n_sym, np.float32)
        for (lo, hi), x, r in zip(segs, clean, rms, strict=True):
            u[lo:hi] = x * np.float32(1.0 / (math.sqrt(2.0) * r))
        ut = torch.from_numpy(u)
        out = link.transmit(torch.complex(ut[:n_sym], ut[n_sym:]), snr_db, noise, fading)
        s_hat = out.s_hat
        if mmse:
            s_hat = s_hat / (1.0 + out.no_eff)
        y_all = torch.cat([s_hat.real, s_hat.imag]).numpy()
        for (lo, hi), r, arr in zip(segs, rms, buffers.values(), strict=True):
            clip = np.float32(_clip_of(arr.dtype))
            ys.append(np.clip(y_all[lo:hi] * np.float32(math.sqrt(2.0) * r), -clip, clip))
        symbols, airtime = out.channel_uses, out.airtime_s
    delivered, sq_err = {}, 0.0
    for (name, arr), x, y in zip(buffers.items(), sent, ys, strict=True):
        delivered[name], err = _deliver_as(y, arr, x)
        sq_err += err
    return AnalogResult(delivered, sq_err, float(sum(energies)), total, symbols, airtime)
