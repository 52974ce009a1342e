"""The emulator's seeded noise source: standard normals at ~1.5 ns each instead of torch's / numpy's 4-6 ns.

Channel noise *is* the work of the analog mode (a 128x128x4 latent needs 65,536 normals; the RTF goal leaves
~430 us for the whole delivery), and ``torch.randn`` / ``Generator.standard_normal`` take 250-400 us for that on
these cores. This source keeps the textbook algorithms and makes them vectorise:

* **Bits**: SplitMix64 (Steele, Lea & Flood 2014; the generator Java's ``SplittableRandom`` uses, passes BigCrush):
  output j is a fixed 64-bit mix of ``key + (j + 1) * 0x9E3779B97F4A7C15``. Being counter-based, a block of outputs
  is one loop with no carried state, which LLVM vectorises; the state is the key and a counter.
* **Normals**: the 256-layer Marsaglia-Tsang ziggurat on 32-bit words with numpy's own float32 tables (numpy's
  ``random_standard_normal_f``): 8 bits pick the layer, 1 the sign, 23 the abscissa. About 1% of draws fall outside
  their layer's rectangle; the fast pass flags them and a second pass finishes them exactly as numpy does (wedge
  test, or the tail from exponentials), with words from a second SplitMix64 stream.

Every draw is a deterministic function of (seed, how much was drawn before), so seeded emulators repeat exactly.
Sionna blocks that need a ``torch.Generator`` get one seeded from this stream (:meth:`NoiseSource.torch_generator`).
The statistics are tested against the normal law (moments, Kolmogorov-Smirnov, tail counts) in the tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import float32, float64, int32, njit, uint8, uint32, uint64

try:  # numpy's ziggurat tables, as numba ships them for its own np.random.Generator support
    from numba.np.random._constants import (
        fi_float,
        ki_float,
        wi_float,
        ziggurat_nor_inv_r_f,
        ziggurat_nor_r_f,
    )

    _KI = np.asarray(ki_float, np.int32)
    _WI = np.asarray(wi_float, np.float32)
    _FI = np.asarray(fi_float, np.float32)
    _R, _INV_R = np.float32(ziggurat_nor_r_f), np.float32(ziggurat_nor_inv_r_f)
except ImportError:  # pragma: no cover - the same tables from their defining recursion (ki may differ by 1 ulp)
    def _tables():
        m, dn, vn = float(1 << 23), 3.6541528853610088, 4.92867323399e-3
        tn, q = dn, vn / math.exp(-0.5 * dn * dn)
        ki, wi, fi = np.zeros(256, np.int32), np.zeros(256, np.float32), np.zeros(256, np.float32)
        ki[0], wi[0], wi[255], fi[0], fi[255] = int(dn / q * m), q / m, dn / m, 1.0, math.exp(-0.5 * dn * dn)
        for i in range(254, 0, -1):
            dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
            ki[i + 1], tn = int(dn / tn * m), dn
            fi[i], wi[i] = math.exp(-0.5 * dn * dn), dn / m
        return ki, wi, fi

    _KI, _WI, _FI = _tables()
    _R = np.float32(3.6541528853610088)
    _INV_R = np.float32(1.0 / 3.6541528853610088)

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_FIX_SALT = uint64(0x5851F42D4C957F2D)  # the fix-up stream's key offset


@njit(inline="always")
def _mix(z):
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(inline="always")
def _fix_word(key, state):
    state[1] += uint64(1)
    return _mix((key ^ _FIX_SALT) + state[1] * _GOLDEN)


@njit(inline="always")
def _fix_uniform(key, state):
    """Uniform float32 in [0, 1) with 24 random bits."""
    return float32(float32(_fix_word(key, state) >> uint64(40)) * float32(1.0 / 16777216.0))


@njit(cache=True, boundscheck=False)
def _fill_words(key, state, words):
    """``words`` (uint64) <- the next outputs of the main stream."""
    base = state[0]
    for j in range(words.size):
        words[j] = _mix(key + (base + uint64(j) + uint64(1)) * _GOLDEN)
    state[0] = base + uint64(words.size)


@njit(inline="always")
def _zig_value(rr, wi):
    """The ziggurat's candidate from one 32-bit word: 8 bits pick the layer, 1 the sign, 23 the abscissa."""
    rabs = (rr >> int32(9)) & int32(0x7FFFFF)
    return float32(rabs) * wi[rr & int32(0xFF)] * (float32(1.0) - float32(2.0) * float32((rr >> int32(8)) & int32(1)))


@njit(inline="always")
def _zig_reject(rr, ki):
    """1 when the candidate lies outside its layer's rectangle (the slow path decides), else 0."""
    return uint8(((rr >> int32(9)) & int32(0x7FFFFF)) >= ki[rr & int32(0xFF)])


@njit(inline="always")
def _zig_slow(rr, ki, wi, fi, r, inv_r, key, state):
    """numpy's ``random_standard_normal_f`` after its first test failed on word ``rr``."""
    while True:
        idx = rr & int32(0xFF)
        rabs = (rr >> int32(9)) & int32(0x7FFFFF)
        x = float32(rabs) * wi[idx]
        if (rr >> int32(8)) & int32(1):
            x = -x
        if rabs < ki[idx]:
            return x
        if idx == 0:
            while True:
                xx = -inv_r * float32(math.log1p(-_fix_uniform(key, state)))
                yy = -float32(math.log1p(-_fix_uniform(key, state)))
                if yy + yy > xx * xx:
                    return -(r + xx) if (rabs >> int32(8)) & int32(1) else r + xx
        if (fi[idx - 1] - fi[idx]) * _fix_uniform(key, state) + fi[idx] < math.exp(float32(-0.5) * x * x):
            return x
        rr = int32(uint32(_fix_word(key, state) >> uint64(32)))


@njit(cache=True, boundscheck=False)
def _ziggurat(out, flags, ki, wi, fi, r, inv_r, key, state):
    """``out`` <- standard normals: sample 2j from the low and 2j+1 from the high half of main-stream word j.

    The first loop (generate, rectangle test) vectorises and leaves one flag byte per word for the ~1% of draws
    outside their rectangle; the flags are scanned eight at a time and those draws finished exactly as numpy does.
    ``flags`` is uint8 scratch of at least ceil(words / 8) * 8 bytes.
    """
    n = out.size
    words = (n + 1) // 2
    base = state[0]
    for j in range(n // 2):
        z = _mix(key + (base + uint64(j) + uint64(1)) * _GOLDEN)
        lo, hi = int32(z & uint64(0xFFFFFFFF)), int32(z >> uint64(32))
        out[2 * j] = _zig_value(lo, wi)
        out[2 * j + 1] = _zig_value(hi, wi)
        flags[j] = _zig_reject(lo, ki) + uint8(2) * _zig_reject(hi, ki)
    if n % 2:
        lo = int32(_mix(key + (base + uint64(words)) * _GOLDEN) & uint64(0xFFFFFFFF))
        out[n - 1] = _zig_value(lo, wi)
        flags[words - 1] = _zig_reject(lo, ki)
    padded = (words + 7) // 8 * 8
    for j in range(words, padded):
        flags[j] = 0
    state[0] = base + uint64(words)
    blocks = flags[:padded].view(np.uint64)
    for q in range(blocks.size):
        if blocks[q] == 0:
            continue
        for j in range(8 * q, 8 * q + 8):
            f = flags[j]
            if f == 0:
                continue
            z = _mix(key + (base + uint64(j) + uint64(1)) * _GOLDEN)
            if f & 1:
                out[2 * j] = _zig_slow(int32(z & uint64(0xFFFFFFFF)), ki, wi, fi, r, inv_r, key, state)
            if f & 2:
                out[2 * j + 1] = _zig_slow(int32(z >> uint64(32)), ki, wi, fi, r, inv_r, key, state)


@njit(cache=True, boundscheck=False)
def _one_minus_uniform(key, state, out):
    """``out`` <- float32(1 - u) for 53-bit uniforms u from the next main-stream words, one word each.

    1 - u is exact in float64 and lies in (0, 1]; the cast to float32 keeps 24 bits of relative precision, so
    -log of it is -log1p(-u) to ~6e-8 absolute, down to the smallest 1 - u = 2^-53 (tail up to 36.7 as before).
    """
    base = state[0]
    for j in range(out.size):
        z = _mix(key + (base + uint64(j) + uint64(1)) * _GOLDEN)
        out[j] = float32(1.0 - float64(z >> uint64(11)) * (1.0 / 9007199254740992.0))
    state[0] = base + uint64(out.size)


class NoiseSource:
    """Seeded source of the channel's randomness (see the module docstring).

    Parameters
    ----------
    seed : int, optional
        Any integer; None draws one from the OS.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        # The key is itself mixed so that nearby seeds give unrelated streams.
        self._key = np.uint64(int(np.random.SeedSequence(int(seed) & (2**128 - 1)).generate_state(1, np.uint64)[0]))
        self._state = np.zeros(2, np.uint64)  # [main counter, fix-up counter]
        self._words = np.empty(0, np.uint64)
        self._flags = np.empty(0, np.uint8)

    def _next_words(self, n: int) -> np.ndarray:
        if self._words.size < n:
            self._words = np.empty(max(n, 2 * self._words.size), np.uint64)
        w = self._words[:n]
        _fill_words(self._key, self._state, w)
        return w

    def standard_normal(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``n`` i.i.d. N(0, 1) float32 values (into ``out`` when given: float32, contiguous, size n)."""
        n = int(n)
        if out is None:
            out = np.empty(n, np.float32)
        need = (-(-n // 2) + 7) // 8 * 8
        if self._flags.size < need:
            self._flags = np.empty(max(need, 2 * self._flags.size), np.uint8)
        _ziggurat(out.reshape(-1), self._flags, _KI, _WI, _FI, _R, _INV_R, self._key, self._state)
        return out

    def standard_normal_tensor(self, *shape: int) -> torch.Tensor:
        """:meth:`standard_normal` as a float32 tensor of ``shape`` (shares the numpy buffer)."""
        n = int(np.prod(shape)) if shape else 1
        return torch.from_numpy(self.standard_normal(n)).reshape(shape)

    def exponential(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``n`` i.i.d. Exp(1) float32 values (|h|^2 of a CN(0, 1) gain), into ``out`` when given (float32,
        contiguous, size n).

        -log(1 - u) from one 53-bit uniform per value: the words in a numba loop, the logarithm by numpy's SIMD
        float32 ``log`` (libm's scalar ``log1p`` in numba, without SVML, took ~14 ns a value, 10x longer).
        """
        n = int(n)
        if out is None:
            out = np.empty(n, np.float32)
        flat = out.reshape(-1)
        _one_minus_uniform(self._key, self._state, flat)
        np.log(flat, out=flat)
        np.subtract(np.float32(0.0), flat, out=flat)  # not np.negative: log(1) = 0 must give +0, not -0
        return out

    def uniform(self, n: int) -> np.ndarray:
        """``n`` i.i.d. U[0, 1) float64 values."""
        return (self._next_words(int(n)) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

    def integer(self) -> int:
        """One uniform 63-bit integer (seeds for generators of Sionna's blocks)."""
        return int(self._next_words(1)[0] >> np.uint64(1))

    def torch_generator(self) -> torch.Generator:
        """A ``torch.Generator`` seeded from this stream, for Sionna blocks (one per use: Sionna draws from it)."""
        return torch.Generator().manual_seed(self.integer())
