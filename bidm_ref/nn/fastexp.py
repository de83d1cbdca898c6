"""exp for Numba kernels, in a form LLVM vectorises (float32), so SiLU and softmax can be one fused pass.

Numba compiles np.exp / math.exp to a call of the scalar libm function (this llvmlite has no SVML), and a
call inside a loop stops LLVM from vectorising it: a SiLU kernel on libm's expf ran several times slower
than NumPy's SIMD exp (docs/ENGINE.md, "GroupNorm, SiLU, attention"). `fast_exp` on a float32 is
straight-line float32 arithmetic and one bit cast, which LLVM vectorises (AVX-512 zmm code on the znver5
development machine, no call left). The method is Cody and Waite's range reduction with the polynomial of
Cephes' expf (S. L. Moshier, Cephes Math Library, 1984-2000):

    x      <- clamp(x, -86.5, 89)               below: 2^(n - 1) would be denormal; above: inf anyway
    n      = floor(x log2(e) + 1/2)             integer in [-125, 129], |r| <= ln(2) / 2 below
    r      = (x - n C1) - n C2                  C1 + C2 = ln 2, C1 = 0.693359375 has 9 significant bits,
                                                so n C1 is exact for every n above
    p(r)   = 1 + r + r^2 (P0 r^5 + P1 r^4 + ... + P5)        the Cephes coefficients below
    exp(x) = (p(r) 2^(n-1)) 2                   2^(n-1) as float32 bits, (n + 126) << 23 (n = 129: inf); the
                                                last doubling overflows to inf exactly where exp does

Accuracy, measured against float64 exp (tests/test_fastexp.py): within 1 ulp on [-86.5, 88.72]; inf from
88.73 on, as IEEE overflow; below -86.5 the result stays at exp(-86.5) ~ 2.7e-38 instead of a smaller or
denormal number, which 1 + exp(-x) in a sigmoid and a softmax's sum of terms (one of them 1) cannot tell
apart. NaN stays NaN.
On float64 `fast_exp` is math.exp (libm, scalar): the float64 runs are the gradient checks, where speed does
not matter and libm's accuracy does.

Twin: `fast_exp_ref`, the same float32 operations as NumPy array passes (no fused multiply-adds on either
side, so the bytes are equal), and on float64 math.exp per element (np.exp has its own SIMD exp, which
differs from libm's in the last bit).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

F32 = np.float32
X_MIN, X_MAX = F32(-86.5), F32(89.0)                    # clamp: n in [-125, 129] (module docstring)
LOG2E = F32(1.4426950408889634)
LN2_HI, LN2_LO = F32(0.693359375), F32(-2.12194440e-4)  # C1, C2: C1 + C2 = ln 2 to float32 precision
CEPHES_P = tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                  1.6666665459e-1, 5.0000001201e-1))
P0, P1, P2, P3, P4, P5 = CEPHES_P
# the fused passes on fast_exp (SiLU, softmax) run on one thread below this many elements: a parallel launch
# costs ~50 us, more than the pass itself (SiLU serial 42 us vs parallel 72 us at 2^17 elements, even at 2^18;
# docs/ENGINE.md, "GroupNorm, SiLU, attention")
SERIAL_ELEMENTS = 1 << 18


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (LLVM bitcast; vectorises)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def fast_exp(x):
    """exp(x) inside a Numba kernel (module docstring); not callable from Python: use fast_exp_ref."""
    raise TypeError("fast_exp runs inside Numba kernels only; call fast_exp_ref from Python")


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        def exp_float32(x):
            if x < X_MIN:                            # comparisons, not min/max: a NaN passes through
                x = X_MIN
            if x > X_MAX:
                x = X_MAX
            n = np.floor(x * LOG2E + F32(0.5))
            r = (x - n * LN2_HI) - n * LN2_LO
            p = P0 * r + P1
            p = p * r + P2
            p = p * r + P3
            p = p * r + P4
            p = p * r + P5
            p = p * (r * r) + r + F32(1.0)
            return (p * float32_from_bits((np.int32(n) + np.int32(126)) << np.int32(23))) * F32(2.0)
        return exp_float32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


def fast_exp_ref(x: np.ndarray) -> np.ndarray:
    """NumPy twin of fast_exp: the float32 steps of the module docstring on a whole array; libm's exp on float64."""
    if x.dtype == np.float64:
        return np.vectorize(math.exp, otypes=[np.float64])(x)                # libm's, as the kernel's (not NumPy's)
    if x.dtype != np.float32:
        raise ValueError(f"fast_exp_ref: dtype {x.dtype} is neither float32 nor float64: cast the array")
    x = np.where(x < X_MIN, X_MIN, x)                                         # [...]
    x = np.where(x > X_MAX, X_MAX, x)                                         # [...]
    n = np.floor(x * LOG2E + F32(0.5))                                        # [...] integral float32
    r = (x - n * LN2_HI) - n * LN2_LO                                         # [...]
    p = P0 * r + P1                                                           # [...]
    for c in (P2, P3, P4, P5):
        p = p * r + c
    p = p * (r * r) + r + F32(1.0)                                            # [...]
    with np.errstate(invalid="ignore"):                                       # NaN -> int is what the kernel does too
        half_two_n = ((n.astype(np.int32) + np.int32(126)) << np.int32(23)).view(np.float32)  # [...] 2^(n-1)
    with np.errstate(over="ignore"):
        return (p * half_two_n) * F32(2.0)
