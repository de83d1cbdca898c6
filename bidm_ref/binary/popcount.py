"""Population counts (numbers of set bits) of 64-bit words inside Numba code: the binary kernels' register tile.

Dimensions: OT = TILE_WORDS output channels (LANES per vector, TILE_VECTORS vectors), P pixels of one tile.

make_tile_popcount(P) -> tile_popcount   the inner loop of the binary conv (kernels.py) as LLVM IR, like
                    nn/conv_direct.py's tile_dot: P x OT sums of popcount(x_word xor w_word) over all the
                    words of a pixel's taps, kept in P * TILE_VECTORS vector registers of LANES uint64 each
                    (LLVM's `llvm.ctpop.v8i64`: `vpopcntq` with AVX512_VPOPCNTDQ, a `vpshufb` nibble table
                    and `vpsadbw` without), written once at the end as int32 accumulators, output-major.
                    LLVM's loop vectorizer does not keep accumulators in registers across a loop (one load
                    and one store per popcount), hence the intrinsic; `np.bitwise_count` does not compile in
                    Numba either.
popcount64_swar(x)  the portable fallback written out for one word (SWAR, "SIMD within a register"; Hacker's
                    Delight §5-1): pairwise bit sums in 2-, 4-, 8-bit fields, then one multiply adds the 8 bytes:
                        x1 = x  - ((x >> 1) & 0x5555...)          # 32 fields of 2 bits, each 0..2
                        x2 = (x1 & 0x3333...) + ((x1 >> 2) & 0x3333...)   # 16 fields of 4 bits, 0..4
                        x3 = (x2 + (x2 >> 4)) & 0x0f0f...         # 8 bytes, 0..8
                        popcount = (x3 * 0x0101...) >> 56         # the top byte holds the byte sum
                    It is what a port without a popcount instruction implements (a uint64 in [0, 64]); tests
                    check it against a plain bit count and use it as an independent count.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..nn.threaded import compiles_for

# uint64 constants and shift counts: mixing uint64 with Python ints would make Numba promote to float64.
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE, _TWO, _FOUR, _FIFTY_SIX = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


@njit(cache=True)
def popcount64_swar(x):
    """Number of set bits of a uint64 word by the SWAR sequence of the module docstring; returns uint64."""
    x1 = x - ((x >> _ONE) & _M1)
    x2 = (x1 & _M2) + ((x1 >> _TWO) & _M2)
    x3 = (x2 + (x2 >> _FOUR)) & _M4
    return (x3 * _H01) >> _FIFTY_SIX


LANES = 8  # uint64 lanes of one accumulator vector: one zmm (two ymm on AVX2)
# Accumulator vectors per pixel of a tile (TILE_VECTORS * LANES output channels): 4 pixels x 4 vectors = 16 of the 32
# zmm registers with AVX-512; with AVX2, 4 x 1 vector = 8 of the 16 ymm (LLVM's popcount of a ymm needs 4 more).
TILE_VECTORS = 4 if compiles_for("avx512f") else 1
TILE_WORDS = TILE_VECTORS * LANES  # output channels of one tile (OT)


def _c_array_of(value: types.Type, dtype: types.Type) -> bool:
    """Whether a Numba type is a C-contiguous array of `dtype` (what tile_popcount compiles for)."""
    return isinstance(value, types.Array) and value.dtype == dtype and value.layout == "C"


def make_tile_popcount(pixels: int):
    """tile_popcount for tiles of `pixels` output pixels x TILE_WORDS output channels (the docstring below); `pixels`
    * TILE_VECTORS must be a power of two (the sums are joined pairwise into one vector at the end)."""
    vectors = pixels * TILE_VECTORS
    if vectors < 1 or vectors & (vectors - 1):
        raise ValueError(f"make_tile_popcount: {pixels} pixels x {TILE_VECTORS} vectors is not a power of two")

    @intrinsic
    def tile_popcount(typingctx, acc, acc_first, acc_row, outputs, valid, x, x_first, x_row, x_pixel, rows, words, w,
                      w_first, w_row, w_word):
        """For o < min(outputs, TILE_WORDS) and p < pixels:
            acc[acc_first + o*acc_row + p] = valid - 2 * sum over r < rows, q < words of
                popcount(x[x_first + r*x_row + p*x_pixel + q] xor w[w_first + r*w_row + q*w_word + o])
        acc a C-contiguous int32 array (indexed flat), x and w uint64 arrays (flat, C-contiguous), the rest int64. The
        pixels x TILE_VECTORS vectors of sums stay in registers for the whole sum; at the end they are permuted
        output-major, so each output stores its `pixels` adjacent accumulators at once. Indices are not checked (the
        caller keeps them inside the arrays)."""
        if not (_c_array_of(acc, types.int32) and _c_array_of(x, types.uint64) and _c_array_of(w, types.uint64)):
            return None
        signature = types.void(acc, *[types.int64] * 4, x, *[types.int64] * 5, w, *[types.int64] * 3)

        def codegen(context, builder, sig, args):
            (acc_array, acc_start, acc_step, output_count, valid_count, x_array, x_start, x_step, pixel_step, row_count,
             word_count, w_array, w_start, w_step, word_step) = args
            i64, i32 = ir.IntType(64), ir.IntType(32)
            vector = ir.VectorType(i64, LANES)
            acc_data, x_data, w_data = [context.make_array(sig.args[i])(context, builder, args[i]).data
                                        for i in (0, 5, 11)]
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector]),
                                                   f"llvm.ctpop.v{LANES}i64")
            broadcast = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(TILE_VECTORS)]
                    for _ in range(pixels)]                                        # [pixels][TILE_VECTORS]
            with cgutils.for_range(builder, row_count) as row_loop:               # r = row_loop.index
                x_row_start = builder.add(x_start, builder.mul(row_loop.index, x_step))
                w_row_start = builder.add(w_start, builder.mul(row_loop.index, w_step))
                with cgutils.for_range(builder, word_count) as word_loop:         # q = word_loop.index
                    q = word_loop.index
                    w_q = builder.add(w_row_start, builder.mul(q, word_step))
                    w_vectors = [builder.load(builder.bitcast(builder.gep(w_data, [builder.add(
                        w_q, ir.Constant(i64, v * LANES))]), vector.as_pointer()), align=8)
                        for v in range(TILE_VECTORS)]
                    for p in range(pixels):
                        x_index = builder.add(builder.add(x_row_start, builder.mul(ir.Constant(i64, p), pixel_step)), q)
                        x_word = builder.load(builder.gep(x_data, [x_index]))
                        x_one = builder.insert_element(ir.Constant(vector, None), x_word, ir.Constant(i32, 0))
                        x_lanes = builder.shuffle_vector(x_one, ir.Constant(vector, None), broadcast)
                        for v in range(TILE_VECTORS):
                            count = builder.call(ctpop, [builder.xor(x_lanes, w_vectors[v])])
                            builder.store(builder.add(builder.load(sums[p][v]), count), sums[p][v])
            # all sums as one pixel-major vector (concatenated pairwise), permuted output-major, as int32 accumulators
            parts = [builder.load(sums[p][v]) for p in range(pixels) for v in range(TILE_VECTORS)]
            while len(parts) > 1:
                width = 2 * parts[0].type.count
                joined = ir.Constant(ir.VectorType(i32, width), list(range(width)))
                parts = [builder.shuffle_vector(parts[i], parts[i + 1], joined) for i in range(0, len(parts), 2)]
            output_major = [p * TILE_WORDS + o for o in range(TILE_WORDS) for p in range(pixels)]
            all_sums = builder.shuffle_vector(parts[0], ir.Constant(parts[0].type, None),
                                              ir.Constant(ir.VectorType(i32, pixels * TILE_WORDS), output_major))
            counts_type = ir.VectorType(i32, pixels * TILE_WORDS)
            valid_lanes = builder.shuffle_vector(
                builder.insert_element(ir.Constant(counts_type, None), builder.trunc(valid_count, i32),
                                       ir.Constant(i32, 0)),
                ir.Constant(counts_type, None), ir.Constant(counts_type, [0] * (pixels * TILE_WORDS)))
            counts = builder.sub(valid_lanes, builder.shl(builder.trunc(all_sums, counts_type),
                                                          ir.Constant(counts_type, [1] * (pixels * TILE_WORDS))))
            pixel_counts = ir.VectorType(i32, pixels)
            for o in range(TILE_WORDS):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, o), output_count), likely=True):
                    lanes = builder.shuffle_vector(counts, ir.Constant(counts_type, None),
                                                   ir.Constant(pixel_counts, list(range(o * pixels, (o + 1) * pixels))))
                    target = builder.gep(acc_data, [builder.add(acc_start, builder.mul(ir.Constant(i64, o), acc_step))])
                    builder.store(lanes, builder.bitcast(target, pixel_counts.as_pointer()), align=4)
            return context.get_dummy_value()

        return signature, codegen

    return tile_popcount
