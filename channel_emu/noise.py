"""The emulator's seeded noise source: standard normals at ~1.1 ns each, Exp(1) at ~0.6 ns, all reproducible.

Channel noise *is* the work of the analog mode (a 128x128x4 latent needs 65,536 normals; the RTF goal of 0.01
leaves ~430 us for the whole SDXL delivery, ~120 us for an SD-1.5 one), and ``torch.randn`` /
``Generator.standard_normal`` take 250-650 us for 65,536 on these cores. This source keeps textbook algorithms and
makes every pass vectorise:

* **Bits**: SplitMix64 (Steele, Lea & Flood 2014; the generator Java's ``SplittableRandom`` uses, passes BigCrush):
  output j is a fixed 64-bit mix of ``key + (j + 1) * 0x9E3779B97F4A7C15``. Being counter-based, a block of outputs
  is one loop with no carried state, which LLVM vectorises; the state is the key and a counter.
* **Normals**: Box-Muller (1958). Each 64-bit word gives one pair: 40 bits a uniform u, 24 bits an angle
  theta = 2 pi k / 2^24; r = sqrt(-2 log(1 - u)), and the pair is (r cos theta, r sin theta), exactly two
  independent N(0, 1) by the transform. The word pass runs in numba; the log in a second numba loop
  (:func:`megbed.channel_emu.vecmath.log32`, the same bits on every host); sqrt, cos and sin in a third, cos and
  sin as Taylor polynomials on the quarter circle after an exact integer split of k into its quadrant (within 2e-7
  of the float64 values) -- libm's scalar calls in numba, without SVML, cost ~10 ns each and do not vectorise.
  1 - u is exact in float64 and keeps 24 bits of relative precision as float32, so r is exact to float32 rounding
  from r ~ 3.5e-4 (below it, 6e-8 of the draws, r is quantised) out to the tail's end at sqrt(2 * 40 ln 2) =
  7.45 sigma (P(|z| > 7.45) ~ 1e-13: never reached in a campaign). Normal k of a request of n comes from pair k
  (cosine) for k < ceil(n / 2), else from pair k - ceil(n / 2) (sine).
* **Exponentials**: -log(1 - u) from a 32-bit uniform per value, two a word, the same way (tail to 22.2).

This replaced (issue 21) a 256-layer ziggurat on the same word stream, which took ~2.7 ns a normal here (2.5x):
its table gathers and the ~1% of draws sent to the scalar wedge/tail path did not vectorise. The random stream
changed with it (same law, other numbers); the law is tested (moments, Kolmogorov-Smirnov, tail counts) in the
tests, the polynomial cos/sin against numpy's float64 ones.

Every draw is a deterministic function of (seed, how much was drawn before), so seeded emulators repeat exactly.
Sionna blocks that need a ``torch.Generator`` get one seeded from this stream (:meth:`NoiseSource.torch_generator`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import float32, int32, njit, uint64

from megbed.channel_emu.vecmath import log32

GOLDEN = uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment: word j of key k is mix64(k + (j + 1) GOLDEN)


@njit(inline="always")
def mix64(z):
    """SplitMix64's output mix of the 64-bit counter value ``z``."""
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(inline="always")
def _word(key, index):
    """Word ``index`` (uint64) of the stream of ``key``."""
    return mix64(key + (index + uint64(1)) * GOLDEN)


@njit(cache=True, boundscheck=False)
def _fill_words(key, state, words):
    """``words`` (uint64) <- the next outputs of the stream."""
    base = state[0]
    for j in range(words.size):
        words[j] = _word(key, base + uint64(j))
    state[0] = base + uint64(words.size)


@njit(inline="always")
def _one_minus_u40(z):
    """float32(1 - u) for the 40-bit uniform u = (z >> 24) / 2^40 of the word ``z``, correctly rounded.

    k = 2^40 - (z >> 24) in [1, 2^40] splits into k_hi 2^16 + k_lo with both parts exact in float32, so the one
    float32 addition k_hi 2^-24 + k_lo 2^-40 rounds the exact value once: the same number as through float64,
    which took twice as long (AVX2 has no 64-bit integer to float conversion; these lanes are 8 wide).
    """
    k = (uint64(1) << uint64(40)) - (z >> uint64(24))
    return (float32(int32(k >> uint64(16))) * float32(2.0 ** -24)
            + float32(int32(k & uint64(0xFFFF))) * float32(2.0 ** -40))


@njit(inline="always")
def _one_minus_u32(w):
    """float32(1 - u) for the 32-bit uniform u = w / 2^32 (``w`` < 2^32), correctly rounded, as
    :func:`_one_minus_u40`: k = 2^32 - w in [1, 2^32] is k_hi 2^16 + k_lo, both exact in float32."""
    k = (uint64(1) << uint64(32)) - w
    return (float32(int32(k >> uint64(16))) * float32(2.0 ** -16)
            + float32(int32(k & uint64(0xFFFF))) * float32(2.0 ** -32))


@njit(cache=True, boundscheck=False, error_model="numpy")
def log_one_minus_uniform_at(key, start, first, out):
    """``out`` <- log(float32(1 - u)) for draws ``first``, ``first`` + 1, ... of the stream of ``key`` counted from
    word ``start``: draw i is the 32-bit uniform u in the high (i even) or low (i odd) half of word
    ``start`` + i // 2, so n draws from ``first`` = 0 take ceil(n / 2) words (the caller advances its counter).

    Two draws a word: the words are the costly part here (two 64-bit multiplies each, emulated on AVX2). 1 - u lies
    in (0, 1] and keeps 24 bits of relative precision as float32, so -log of it is -log1p(-u) to ~6e-8 absolute,
    down to the smallest 1 - u = 2^-32: an Exp(1) drawn as -log(1 - u) reaches 32 ln 2 = 22.2 (P(Exp(1) > 22.2) =
    2.3e-10 a draw: no fade or EESM term can show the cut; the generic abstraction's 24-bit draws stop at 16.6). The
    log (:func:`megbed.channel_emu.vecmath.log32`) runs in a second loop: in the words' loop it ran ~20 % slower.
    Kernels call this on blocks of their own (words are addressed by counter: blocks give the same numbers).
    """
    n = out.size
    j = 0
    if first & 1 and n > 0:  # an odd first draw: the low half of its word
        out[0] = _one_minus_u32(_word(key, start + uint64(first >> 1)) & uint64(0xFFFFFFFF))
        j = 1
    w0 = start + uint64((first + j) >> 1)
    pairs = (n - j) >> 1
    two = out[j:j + 2 * pairs]
    for p in range(pairs):
        z = _word(key, w0 + uint64(p))
        two[2 * p] = _one_minus_u32(z >> uint64(32))
        two[2 * p + 1] = _one_minus_u32(z & uint64(0xFFFFFFFF))
    if j + 2 * pairs < n:  # an even last draw: the high half of the next word
        out[n - 1] = _one_minus_u32(_word(key, w0 + uint64(pairs)) >> uint64(32))
    for t in range(n):
        out[t] = log32(out[t])


@njit(inline="always")
def draw_words(n):
    """Words that ``n`` draws of :func:`log_one_minus_uniform_at` from draw 0 take (two a word); the one place
    that says so, for Python callers and the kernels that advance the counter themselves."""
    return (n + 1) >> 1


@njit(cache=True, boundscheck=False, error_model="numpy")
def polar_inputs_at(key, start, log_v, angle):
    """Box-Muller's inputs from words ``start``, ``start`` + 1, ... (``log_v.size`` of them) of the stream of
    ``key``: ``log_v`` <- log(float32(1 - u)), u a 40-bit uniform (high bits); ``angle`` <- the low 24 bits k
    (theta = 2 pi k / 2^24). As :func:`log_one_minus_uniform_at`, the log in a second loop."""
    for j in range(log_v.size):
        z = _word(key, start + uint64(j))
        log_v[j] = _one_minus_u40(z)
        angle[j] = int32(z & uint64(0xFFFFFF))
    for j in range(log_v.size):
        log_v[j] = log32(log_v[j])


def take_words(state: np.ndarray, n: int) -> np.uint64:
    """The counter ``state[0]`` before drawing ``n`` words; ``state`` is advanced past them."""
    start = state[0]
    state[0] = start + np.uint64(n)
    return start


# Taylor coefficients of sin and cos on [0, pi/2): the first omitted terms are < 9e-10 and 7e-11 there, far below
# float32's rounding, so the polynomials are sin and cos to float32 precision without libm (which does not
# vectorise in numba).
_S3, _S5, _S7, _S9, _S11, _S13 = (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800, 1 / 6227020800)
_C2, _C4, _C6, _C8, _C10, _C12, _C14 = (-1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600,
                                        -1 / 87178291200)


@njit(inline="always")
def _cos_sin(k, step):
    """(cos, sin) of theta = 2 pi k / 2^24 (k an int32 in [0, 2^24)): the quadrant k >> 22 is split off exactly in
    integers, alpha = (k mod 2^22) pi / 2^23 lies in [0, pi/2), and the quadrant rotates (cos, sin) of alpha:
    (c, s), (-s, c), (-c, -s), (s, -c)."""
    q = k >> int32(22)
    a = float32(k & int32(0x3FFFFF)) * step
    a2 = a * a
    s = a * (float32(1.0) + a2 * (float32(_S3) + a2 * (float32(_S5) + a2 * (float32(_S7) + a2 * (
        float32(_S9) + a2 * (float32(_S11) + a2 * float32(_S13)))))))
    c = float32(1.0) + a2 * (float32(_C2) + a2 * (float32(_C4) + a2 * (float32(_C6) + a2 * (float32(_C8) + a2 * (
        float32(_C10) + a2 * (float32(_C12) + a2 * float32(_C14)))))))
    swap = (q & int32(1)) == 1
    cq = s if swap else c
    sq = c if swap else s
    if q == 1 or q == 2:
        cq = -cq
    if q >= 2:
        sq = -sq
    return cq, sq


_ANGLE_STEP = 0.5 * math.pi / 4194304.0  # radians per angle index within a quadrant (2 pi / 2^24)


@njit(inline="always")
def box_muller(log_v, k):
    """The pair of N(0, 1) of one word: r cos theta, r sin theta with r = sqrt(-2 ``log_v``) (log_v = log(1 - u))
    and theta = 2 pi ``k`` / 2^24. Callers compile it with ``fastmath={"contract"}``, as :func:`_polar_pairs`, so
    that every path gets the same numbers."""
    cq, sq = _cos_sin(k, float32(_ANGLE_STEP))
    r = float32(math.sqrt(float32(-2.0) * log_v))
    return r * cq, r * sq


@njit(cache=True, boundscheck=False, fastmath={"contract"})  # fused multiply-adds in the polynomials
def _polar_pairs(log_v, angle, n, out):
    """``out[j]`` <- r_j cos theta_j and ``out[P + j]`` <- r_j sin theta_j (for P + j < n), P = log_v.size, with
    r_j = sqrt(-2 log_v[j]). Both loops are branch-free per element (selects) so that they vectorise."""
    pairs = log_v.size
    both = n - pairs
    step = float32(_ANGLE_STEP)
    second = out[pairs:]
    for j in range(both):
        out[j], second[j] = box_muller(log_v[j], angle[j])
    for j in range(both, pairs):  # an odd n: the last pair's cosine only
        cq, _ = _cos_sin(angle[j], step)
        out[j] = float32(math.sqrt(float32(-2.0) * log_v[j])) * cq


def log_one_minus_uniform(key: np.uint64, state: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """log(1 - u) of the next ``n`` 32-bit uniforms (two a word) of the SplitMix64 stream of ``key`` whose counter is
    ``state`` (uint64 [1], advanced), float32 (into ``out`` when given: float32, contiguous, size n), by
    :func:`log_one_minus_uniform_at` (numpy's float32 ``log`` took 2.4x longer than its log loop, libm's scalar
    calls in numba longer still)."""
    n = int(n)
    if out is None:
        out = np.empty(n, np.float32)
    log_one_minus_uniform_at(key, take_words(state, draw_words(n)), 0, out.reshape(-1))
    return out


class NoiseSource:
    """Seeded source of the channel's randomness (see the module docstring). Not thread-safe: one per emulator.

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
        self._state = np.zeros(1, np.uint64)  # the stream's counter
        self._words = np.empty(0, np.uint64)
        self._radius = np.empty(0, np.float32)  # Box-Muller scratch, reused across calls
        self._angle = np.empty(0, np.int32)

    def stream(self) -> tuple[np.uint64, np.ndarray]:
        """(key, counter) of this source's word stream, for a kernel that draws words itself (by
        :func:`polar_inputs_at` and :func:`log_one_minus_uniform_at`, from word ``counter[0]``) and advances
        ``counter[0]`` (uint64 [1]) past the words it drew: later draws then continue the same stream."""
        return self._key, self._state

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
        flat = out.reshape(-1)
        log_v, angle = self.polar_inputs(-(-n // 2))
        _polar_pairs(log_v, angle, n, flat)  # an odd n leaves the last pair's sine unused
        return out

    def polar_inputs(self, pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """Box-Muller's inputs for the next ``pairs`` pairs of normals: log(1 - u) (float32 [pairs]) and the
        angle index k (int32 [pairs], theta = 2 pi k / 2^24), as :meth:`standard_normal` uses them (pair j gives
        sqrt(-2 log(1 - u_j)) (cos theta_j, sin theta_j)). Both are this source's scratch, valid until its next
        draw: for kernels that turn them into noise and use it in the same pass."""
        pairs = int(pairs)
        if self._radius.size < pairs:
            self._radius = np.empty(max(pairs, 2 * self._radius.size), np.float32)
            self._angle = np.empty(self._radius.size, np.int32)
        r, angle = self._radius[:pairs], self._angle[:pairs]
        polar_inputs_at(self._key, take_words(self._state, pairs), r, angle)
        return r, angle

    def standard_normal_tensor(self, *shape: int) -> torch.Tensor:
        """:meth:`standard_normal` as a float32 tensor of ``shape`` (shares the numpy buffer)."""
        n = int(np.prod(shape)) if shape else 1
        return torch.from_numpy(self.standard_normal(n)).reshape(shape)

    def exponential(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``n`` i.i.d. Exp(1) float32 values (|h|^2 of a CN(0, 1) gain), into ``out`` when given (float32,
        contiguous, size n).

        -log(1 - u) from one 32-bit uniform per value, two a word (:func:`log_one_minus_uniform`).
        """
        n = int(n)
        if out is None:
            out = np.empty(n, np.float32)
        flat = self.log_one_minus_uniform(n, out).reshape(-1)
        np.subtract(np.float32(0.0), flat, out=flat)  # not np.negative: log(1) = 0 must give +0, not -0
        return out

    def log_one_minus_uniform(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """log(1 - u) of the next ``n`` 32-bit uniforms (float32 <= 0, into ``out`` when given): minus the
        :meth:`exponential` draws, for kernels that negate them in their own pass."""
        return log_one_minus_uniform(self._key, self._state, n, out)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` i.i.d. U[0, 1) float64 values."""
        return (self._next_words(int(n)) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

    def integer(self) -> int:
        """One uniform 63-bit integer (seeds for generators of Sionna's blocks)."""
        return int(self._next_words(1)[0] >> np.uint64(1))

    def torch_generator(self) -> torch.Generator:
        """A ``torch.Generator`` seeded from this stream, for Sionna blocks (one per use: Sionna draws from it)."""
        return torch.Generator().manual_seed(self.integer())
