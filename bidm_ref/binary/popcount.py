"""Population count (number of set bits) of one 64-bit word, callable inside Numba code.

Dimensions: none (scalar functions on one uint64 word).

popcount64(x)       LLVM's `llvm.ctpop.i64` through a Numba @intrinsic. LLVM emits the CPU's popcount
                    instruction (`popcnt`, or vectorised `vpopcntq` / a `vpshufb` nibble table when the
                    calling loop is vectorised) and falls back to a bit-trick sequence by itself on CPUs
                    without one. `np.bitwise_count` does not compile in Numba, hence the intrinsic.
popcount64_swar(x)  the portable fallback written out (SWAR, "SIMD within a register"; Hacker's Delight
                    §5-1): pairwise bit sums in 2-, 4-, 8-bit fields, then one multiply adds the 8 bytes:
                        x1 = x  - ((x >> 1) & 0x5555...)          # 32 fields of 2 bits, each 0..2
                        x2 = (x1 & 0x3333...) + ((x1 >> 2) & 0x3333...)   # 16 fields of 4 bits, 0..4
                        x3 = (x2 + (x2 >> 4)) & 0x0f0f...         # 8 bytes, 0..8
                        popcount = (x3 * 0x0101...) >> 56         # the top byte holds the byte sum
                    It is what a port without a popcount instruction implements; the kernels use
                    popcount64, and tests check both against a plain bit count.
Both return a uint64 in [0, 64].
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# uint64 constants and shift counts: mixing uint64 with Python ints would make Numba promote to float64.
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE, _TWO, _FOUR, _FIFTY_SIX = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a 64-bit integer word (`llvm.ctpop.i64`); returns uint64."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    signature = types.uint64(x)

    def codegen(context, builder, sig, args):
        ctpop = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(ctpop, args)

    return signature, codegen


@njit(cache=True)
def popcount64_swar(x):
    """Number of set bits of a uint64 word by the SWAR sequence of the module docstring; returns uint64."""
    x1 = x - ((x >> _ONE) & _M1)
    x2 = (x1 & _M2) + ((x1 >> _TWO) & _M2)
    x3 = (x2 + (x2 >> _FOUR)) & _M4
    return (x3 * _H01) >> _FIFTY_SIX
