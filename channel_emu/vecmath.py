"""Scalar float32 helpers for numba loops that must vectorise: IEEE half casts, a branch-free exp and log.

numba has no float16 type on the CPU and, without Intel's SVML, calls libm's scalar ``expf`` (~10 ns a call, and a
loop with a call does not vectorise). These helpers are inlined into the caller's loop instead:

* :func:`half_to_float` / :func:`float_to_half`: LLVM's own ``fpext half`` / ``fptrunc ... to half`` on the
  uint16 bit pattern, i.e. the F16C instructions (``vcvtph2ps`` / ``vcvtps2ph``): exact IEEE conversions,
  round-to-nearest-even, the same results as numpy's ``astype`` (tested on every half value and ~10^6 floats).
* :func:`exp32`: Cephes' ``expf``: x = n ln 2 + r (ln 2 split in two, |r| <= ln 2 / 2), a degree-7 polynomial for
  e^r, times 2^n built in the exponent bits; error ~1 ulp for x in [-87.3, 0] and exactly 0 below (the EESM only
  takes e^-x of x >= 0).
* :func:`log32`: Cephes' ``logf``: x = 2^e m with m in [sqrt(1/2), sqrt(2)) split off in the bits, a degree-8
  polynomial for log(1 + f), f = m - 1, plus e ln 2 (ln 2 split in two); within 1 ulp of the true logarithm for
  positive normal x (0.8 ulp measured over 4 million draws in (0, 1]), log(1) = +0 exactly. numpy's float32
  ``log`` took ~2 ns a value on the 2-core box (16 us for the 8192 of an SD-1.5 latent's noise, 2.4-3.6 ulp off),
  this loop ~0.8 ns; and unlike numpy's, whose kernel depends on the CPU's SIMD level, it gives the same bits on
  every host, so seeded noise repeats across x86 and ARM (no fused multiply-adds: the callers compile it without
  ``fastmath``).
"""

from __future__ import annotations

import platform

import llvmlite.binding as llvm
from llvmlite import ir
from numba import float32, int32, njit, types
from numba.extending import intrinsic


def _native_half_casts() -> bool:
    """Whether LLVM lowers half <-> float to instructions here: F16C on x86 (every x86 core since 2012), native
    on ARM64. Elsewhere it would call compiler-rt's ``__extendhfsf2``, which numba's JIT does not link."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return platform.machine().lower() in ("aarch64", "arm64")
    try:
        return bool(llvm.get_host_cpu_features().get("f16c"))
    except RuntimeError:  # features unknown: take the portable paths
        return False


NATIVE_HALF = _native_half_casts()  # the fused fp16 kernels run only where this holds


@intrinsic
def half_to_float(typingctx, bits):
    """float32 value of the IEEE half whose bit pattern is the uint16 ``bits`` (exact)."""

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def float_to_half(typingctx, x):
    """Bit pattern (uint16) of the float32 ``x`` rounded to the nearest IEEE half (ties to even; inf beyond
    65520, NaN kept)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _bitcast32(typingctx, x):
    """The 32 bits of ``x`` reinterpreted: a float32 as int32, an int32 or uint32 as float32."""
    if x == types.float32:
        out, ir_type = types.int32, ir.IntType(32)
    elif x in (types.int32, types.uint32):
        out, ir_type = types.float32, ir.FloatType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir_type)

    return out(x), codegen


# Cephes expf: C1 + C2 = ln 2 (C1 exact in 9 bits, so n C1 is exact), P: e^r ~ 1 + r + r^2 P(r) on |r| <= ln2/2.
_C1, _C2 = 0.693359375, -2.12194440e-4
_P0, _P1, _P2, _P3, _P4, _P5 = 1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, \
    1.6666665459e-1, 5.0000001201e-1
_LOG2E = 1.44269504088896341
_EXP_MIN = -87.3  # e^-87.3 ~ 1.2e-38, the smallest normal float32's order: below it 0 is returned


@njit(inline="always")
def exp32(x):
    """e^x for a float32 ``x`` <= 0 (~1 ulp; 0 for x < -87.3); branch-free."""
    xc = max(float32(x), float32(_EXP_MIN))
    n = float32(int32(xc * float32(_LOG2E) - float32(0.5)))  # nearest integer (int32 truncates toward 0): n in [-126, 0]
    r = xc - n * float32(_C1) - n * float32(_C2)
    r2 = r * r
    p = ((((float32(_P0) * r + float32(_P1)) * r + float32(_P2)) * r + float32(_P3)) * r + float32(_P4)) * r \
        + float32(_P5)
    y = p * r2 + r + float32(1.0)
    scale = _bitcast32(int32((int32(n) + int32(127)) << int32(23)))
    return y * scale if x >= float32(_EXP_MIN) else float32(0.0)


# Cephes logf: Q approximates (log(1 + f) - f + f^2 / 2) / f^3 on f in [sqrt(1/2) - 1, sqrt(2) - 1).
_Q = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
      2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(1/2)


@njit(inline="always")
def log32(x):
    """Natural log of a positive normal float32 ``x`` (within 1 ulp); branch-free, so loops calling it vectorise.

    Subtracting the bits of sqrt(1/2) moves the exponent boundary there: the high bits give e, the low 23 bits
    plus sqrt(1/2)'s give m = x / 2^e in [sqrt(1/2), sqrt(2)), so f = m - 1 is small on both sides of 1.
    """
    b = int32(_bitcast32(float32(x)) - int32(_SQRT_HALF_BITS))
    e = float32(b >> int32(23))
    f = _bitcast32(int32((b & int32(0x007FFFFF)) + int32(_SQRT_HALF_BITS))) - float32(1.0)
    z = f * f
    y = float32(_Q[0])
    for c in _Q[1:]:
        y = y * f + float32(c)
    y = y * f * z + float32(_C2) * e - float32(0.5) * z
    return f + y + float32(_C1) * e
