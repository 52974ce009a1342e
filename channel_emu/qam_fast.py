"""QAM mapping and exact APP demapping in numba: the fast equivalents of Sionna's ``Mapper("qam", m)`` and
``Demapper("app", "qam", m)``.

The constellation is Sionna's own (``Constellation("qam", m).points``, the 38.211 Gray labelling, unit energy), and
the bit label of point p is p's binary representation, first bit most significant -- as Sionna's mapper uses it.

Demapping computes the same exact APP logits log Pr(b = 1 | y) / Pr(b = 0 | y), with p(y | c) ~ exp(-|y - c|^2 / N0)
(N0 clamped below at float32 ``tiny`` as Sionna does), but per dimension: in 5G square QAM every bit is carried
either by the real or by the imaginary part, so the sum over the 2-D points factors and the other dimension's sum
cancels from the ratio. That is an identity, not an approximation; it turns 2^m distances per symbol into two sums
over sqrt(2^m) levels (a closed form for QPSK). :class:`Qam` checks the factorisation on the constellation it is
given and refuses one that does not factor. Agreement with Sionna's demapper is tested to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float32, njit

_NO_MIN = float(np.finfo(np.float32).tiny)


@njit(cache=True, boundscheck=False)
def _map(bits, m, points, out):
    """``out[i]`` <- the point labelled by bits[i*m : (i+1)*m] (first bit most significant)."""
    for i in range(out.size):
        idx = 0
        for j in range(m):
            idx = (idx << 1) | bits[i * m + j]
        out[i] = points[idx]


@njit(inline="always")
def _lse_diff(d, lab, bit):
    """log sum_{l: lab[l] has bit} exp(d[l]) - log sum_{l: not} exp(d[l]), each sum shifted by its own maximum."""
    m1 = -np.inf
    m0 = -np.inf
    for li in range(d.size):
        if (lab[li] >> bit) & 1:
            m1 = max(m1, d[li])
        else:
            m0 = max(m0, d[li])
    s1 = 0.0
    s0 = 0.0
    for li in range(d.size):
        if (lab[li] >> bit) & 1:
            s1 += math.exp(d[li] - m1)
        else:
            s0 += math.exp(d[li] - m0)
    return (m1 + math.log(s1)) - (m0 + math.log(s0))


@njit(inline="always")
def _dim_logits(d, e, lab, n_bits, bit_pos_of, out, base, m, bit_dim_of, dim):
    """Logits of the bits one dimension carries: exp of each level's metric once (shifted by the common maximum),
    then a log-ratio of subset sums per bit; a bit whose subset sum underflows is redone exactly."""
    dmax = -np.inf
    for li in range(d.size):
        dmax = max(dmax, d[li])
    for li in range(d.size):
        e[li] = math.exp(d[li] - dmax)
    for j in range(m):
        if bit_dim_of[j] != dim:
            continue
        bit = bit_pos_of[j]
        s1 = 0.0
        s0 = 0.0
        for li in range(d.size):
            if (lab[li] >> bit) & 1:
                s1 += e[li]
            else:
                s0 += e[li]
        if s1 > 1e-280 and s0 > 1e-280:
            out[base + j] = float32(math.log(s1 / s0))
        else:
            out[base + j] = float32(_lse_diff(d, lab, bit))


@njit(cache=True, boundscheck=False)
def _demap_qpsk(y, no, no_scalar, a_re, a_im, llr):
    """QPSK: each bit has one level per value, so its logit is the metric difference, linear in y:
    ((y - a0)^2 - (y - a1)^2) / N0 with a1 = -a0 = ``a`` for the bit's value 1."""
    for i in range(y.size):
        n0 = no_scalar if no_scalar >= 0.0 else float(no[i])
        inv = 4.0 / max(n0, _NO_MIN)
        llr[2 * i] = float32(float(y[i].real) * a_re * inv)
        llr[2 * i + 1] = float32(float(y[i].imag) * a_im * inv)


_CHUNK = 4096  # symbols per scratch allocation
_SIMD_MIN_SYMBOLS = 2048  # below this the numba kernel's fixed cost is lower than numpy's per-call overhead
_SIMD_CHUNK = 16384  # symbols per numpy pass: the [levels, chunk] float32 metrics stay in L2


def _lse(d: np.ndarray) -> np.ndarray:
    """log sum_l exp(d[l]) over axis 0 of float32 [L, S], shifted by the per-column maximum."""
    mx = d.max(axis=0)
    return mx + np.log(np.exp(d - mx).sum(axis=0))


@njit(cache=True, boundscheck=False)
def _demap(y, no, no_scalar, levels, labels, bit_dim, bit_pos, llr):
    """Exact APP logits per bit.

    y: complex64 [S]; no: float32 [S] (unused when ``no_scalar`` >= 0); levels: float64 [2, L] (in-phase /
    quadrature amplitudes); labels: int64 [2, L] (each level's bits of its dimension, bit q at position q);
    bit_dim / bit_pos: int64 [m] (dimension and position of each of the symbol's bits); llr: float32 [S * m] out.
    """
    m = bit_dim.size
    n_lev = levels.shape[1]
    for c in range((y.size + _CHUNK - 1) // _CHUNK):
        d_re = np.empty(n_lev)
        d_im = np.empty(n_lev)
        e = np.empty(n_lev)
        for i in range(c * _CHUNK, min((c + 1) * _CHUNK, y.size)):
            n0 = no_scalar if no_scalar >= 0.0 else float(no[i])
            inv = 1.0 / max(n0, _NO_MIN)
            yr = float(y[i].real)
            yi = float(y[i].imag)
            for li in range(n_lev):
                a = yr - levels[0, li]
                b = yi - levels[1, li]
                d_re[li] = -a * a * inv
                d_im[li] = -b * b * inv
            if n_lev == 2:  # one level per bit value: the logit is the metric difference (QPSK)
                for j in range(m):
                    d = d_re if bit_dim[j] == 0 else d_im
                    one = (labels[bit_dim[j], 1] >> bit_pos[j]) & 1
                    llr[i * m + j] = float32(d[1] - d[0] if one else d[0] - d[1])
            else:
                _dim_logits(d_re, e, labels[0], m, bit_pos, llr, i * m, m, bit_dim, 0)
                _dim_logits(d_im, e, labels[1], m, bit_pos, llr, i * m, m, bit_dim, 1)


class Qam:
    """Sionna's square QAM of ``m`` bits per symbol, with the fast mapper and APP demapper.

    Parameters
    ----------
    m : int
        Bits per symbol (2, 4, 6, 8).
    """

    def __init__(self, m: int) -> None:
        from sionna.phy.mapping import Constellation

        self.m = int(m)
        self.points = np.ascontiguousarray(Constellation("qam", self.m).points.numpy().astype(np.complex64))
        self._factor()

    def _factor(self) -> None:
        """Split the labelling into an in-phase and a quadrature PAM; raise if a bit moves both dimensions."""
        m, p = self.m, self.points.astype(np.complex128)
        idx = np.arange(2 ** m)
        dims = []
        for j in range(m):
            other = p[idx ^ (1 << (m - 1 - j))]
            re, im = np.abs(p.real - other.real).max() > 1e-6, np.abs(p.imag - other.imag).max() > 1e-6
            if re == im:
                raise ValueError(f"{2 ** m}-QAM bit {j} is not carried by one dimension: cannot factor the demapper")
            dims.append(0 if re else 1)
        bit_dim, bit_pos = np.array(dims, np.int64), np.zeros(m, np.int64)
        levels, labels = [], []
        for dim in (0, 1):
            bits = [j for j in range(m) if dims[j] == dim]
            bit_pos[bits] = np.arange(len(bits))
            amp: dict[int, float] = {}
            for point in range(2 ** m):
                code = sum(((point >> (m - 1 - j)) & 1) << q for q, j in enumerate(bits))
                value = p[point].real if dim == 0 else p[point].imag
                if code in amp and abs(amp[code] - value) > 1e-6:
                    raise ValueError(f"{2 ** m}-QAM dimension {dim} is not a function of its own bits")
                amp[code] = value
            labels.append(sorted(amp))
            levels.append([amp[c] for c in sorted(amp)])
        if len(levels[0]) != len(levels[1]):
            raise ValueError("the in-phase and quadrature PAMs differ in size")
        self._levels = np.array(levels, np.float64)
        self._labels = np.array(labels, np.int64)
        self._bit_dim, self._bit_pos = bit_dim, bit_pos
        # QPSK with bit 0 on the real and bit 1 on the imaginary part: the amplitude that means "1" per dimension.
        self._qpsk = None
        if m == 2 and list(bit_dim) == [0, 1]:
            self._qpsk = (float(self._levels[0][self._labels[0].tolist().index(1)]),
                          float(self._levels[1][self._labels[1].tolist().index(1)]))

    def map(self, bits: np.ndarray) -> np.ndarray:
        """uint8 0/1 bits (any shape, total a multiple of m) -> complex64 symbols [bits.size / m]."""
        b = np.ascontiguousarray(bits, dtype=np.uint8).reshape(-1)
        if b.size % self.m:
            raise ValueError(f"{b.size} bits are not a whole number of {self.m}-bit symbols")
        out = np.empty(b.size // self.m, np.complex64)
        _map(b, self.m, self.points, out)
        return out

    def demap(self, y: np.ndarray, no: np.ndarray | float) -> np.ndarray:
        """Exact APP logits log Pr(b=1|y)/Pr(b=0|y), float32 [y.size * m], for complex64 ``y`` and the effective
        noise variance ``no`` (a float, or float32 per symbol)."""
        y = np.ascontiguousarray(y, dtype=np.complex64).reshape(-1)
        llr = np.empty(y.size * self.m, np.float32)
        scalar = np.ndim(no) == 0
        no_arr = np.zeros(1, np.float32) if scalar else np.ascontiguousarray(no, dtype=np.float32).reshape(-1)
        if self._qpsk is not None:
            _demap_qpsk(y, no_arr, float(no) if scalar else -1.0, self._qpsk[0], self._qpsk[1], llr)
            return llr
        if y.size < _SIMD_MIN_SYMBOLS:
            if scalar:
                _demap(y, np.zeros(1, np.float32), float(no), self._levels, self._labels, self._bit_dim,
                       self._bit_pos, llr)
            else:
                _demap(y, no_arr, -1.0, self._levels, self._labels, self._bit_dim, self._bit_pos, llr)
            return llr
        out = llr.reshape(y.size, self.m)
        yf = y.view(np.float32).reshape(-1, 2)
        for lo in range(0, y.size, _SIMD_CHUNK):
            hi = min(lo + _SIMD_CHUNK, y.size)
            inv = (np.float32(1.0 / max(float(no), _NO_MIN)) if scalar
                   else np.float32(1.0) / np.maximum(no_arr[lo:hi], np.float32(_NO_MIN)))
            for dim in (0, 1):
                self._dim_logits_simd(yf[lo:hi, dim], inv, dim, out[lo:hi])
        return llr

    def _dim_logits_simd(self, v: np.ndarray, inv, dim: int, out: np.ndarray) -> None:
        """The logits of the bits dimension ``dim`` carries, for values ``v`` (float32 [S]) and 1/N0 ``inv``.

        The same per-dimension identity as the numba kernel, in float32 (as Sionna's demapper computes) with
        numpy's SIMD ``exp``/``log`` (numba has no vector transcendental functions here without SVML, and the scalar
        libm calls made the demapper as slow as the LDPC decoder): each bit value's subset is log-sum-exp'ed around
        its own maximum, so nothing underflows.
        """
        levels = self._levels[dim].astype(np.float32)
        d = v[None, :] - levels[:, None]  # [L, S]
        np.square(d, out=d)
        d *= -inv
        labels = self._labels[dim]
        for j in np.nonzero(self._bit_dim == dim)[0]:
            ones = ((labels >> self._bit_pos[j]) & 1).astype(bool)
            out[:, j] = _lse(d[ones]) - _lse(d[~ones])
