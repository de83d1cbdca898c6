"""The weight gradient of a direct grid conv by register tiles: no columns, no copy of dy.

Dimensions: N batch, C input channels, O output channels, Ho, Wo output and Hp, Wp padded input spatial, K = C*kh*kw
taps, rows r = n*Ho + ho of the output, V = GRAD_LANES, OG = GRAD_OUTPUTS, KG = GRAD_TAPS, S = SEGMENTS.

For a stride-1 conv on the grid (conv_direct.py: xp [C, L] padded, offsets[k] = c*L + i*Wp + j),
    dW[o, k] = sum over rows r = (n, ho) and pixels wo of dy[n, o, ho, wo] * xp_flat[(n*Hp + ho)*Wp + wo + offsets[k]]
V adjacent pixels of a row are V adjacent elements of dy and of xp_flat, for every o and k. `tile_grad` sums an
OG x KG block of dW over a run of rows as OG*KG vector accumulators of V lanes that stay in registers (lane l takes
the pixels wo = l mod V, row after row): per V pixels, OG vector loads of dy, KG of xp and OG*KG multiply-adds.
The lanes are then added in lane order. The grid layout's backward makes columns (kh*kw copies of the input) and
multiplies dy's columns by them, a product with few rows (O) and a long sum; on AMD EPYC znver3 it ran at 40-55 GF/s
on the tiny preset's convs (docs/ENGINE.md, "Convolution").

`direct_weight_grad` splits the rows into S fixed segments (the tasks; two per core on two cores), each in chunks of
rows whose xp rows stay in L2 (CHUNK_ELEMENTS), each chunk's block sums added to the segment's partial dW; dW is
the partials summed in segment order. The segments do not depend on the thread count, so neither do the bytes.
Blocks overlap at the ends (the last block of outputs starts at O - OG, of taps at K - KG; the overlapped sums are
not added twice). `grad_fits` says where it runs: rows of whole vectors (Wo a multiple of V), OG <= O <=
GRAD_MAX_OUTPUTS, K >= KG.
Twin: `direct_weight_grad_ref` (NumPy, one tap at a time).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .conv_direct import SERIAL_MACS, float_array, tap_offsets_flat
from .im2col import ConvGeometry
from .threaded import compiles_for, threaded_kernel

GRAD_LANES = 8  # pixels of one vector (V): one AVX2 register of float32
# Outputs x taps of one block (OG x KG): its accumulators, OG dy vectors and one xp vector must fit the registers
# (AVX2 16: 3 x 3 + 3 + 1 = 13; AVX-512 32: 4 x 4 + 4 + 1 = 21).
GRAD_OUTPUTS, GRAD_TAPS = (4, 4) if compiles_for("avx512f") else (3, 3)
SEGMENTS = 4  # fixed row segments, the parallel tasks
CHUNK_ELEMENTS = 1 << 16  # xp elements of the rows of one chunk (256 KiB of float32: L2)
# Outputs up to which the tiles beat the grid layout's product (AMD EPYC znver3, 2 threads, ms, product / tiles:
# N32 C32 -> 32 32x32 11.8 / 6.4-6.9, C16 -> 16 2.6 / 2.1-2.5, C48 -> 16 7.9-8.7 / 5.6-6.7, C64 -> 32 16x16 7.1 / 5.1;
# C64 -> 64 16x16 6.0 / 6.5, N8 C128 -> 128 32x32 18-23 / 32-37: docs/ENGINE.md, "Convolution").
GRAD_MAX_OUTPUTS = 32


@intrinsic
def tile_grad(typingctx, out, dy, xp, offsets, o_first, k_first, row_first, rows, O, Ho, Wo, Hp, Wp):
    """out[o, t] = sum over rows r in [row_first, row_first + rows) and wo < Wo of dy[n, o_first + o, ho, wo] *
    xp[(n*Hp + ho)*Wp + wo + offsets[k_first + t]] (n, ho = divmod(r, Ho)), for o < OG and t < KG: out a C-contiguous
    [OG, KG] array, dy the flat [N, O, Ho, Wo] output gradient, xp the flat padded input, offsets int64; Wo a multiple
    of V. Summed as the module docstring says. Indices are not checked (the caller keeps them inside the arrays)."""
    if not (float_array(out) and float_array(dy) and float_array(xp) and out.dtype == dy.dtype == xp.dtype
            and isinstance(offsets, types.Array) and offsets.dtype == types.int64):
        return None
    signature = types.void(out, dy, xp, offsets, *[types.int64] * 9)

    def codegen(context, builder, sig, args):
        out_array, dy_array, xp_array, offsets_array, o_first, k_first, row_first, rows, O, Ho, Wo, Hp, Wp = args
        scalar = context.get_value_type(sig.args[0].dtype)
        vector = ir.VectorType(scalar, GRAD_LANES)
        i64 = ir.IntType(64)
        out_data, dy_data, xp_data, offsets_data = [context.make_array(sig.args[i])(context, builder, args[i]).data
                                                    for i in range(4)]
        name = f"llvm.fmuladd.v{GRAD_LANES}{'f32' if isinstance(scalar, ir.FloatType) else 'f64'}"
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
        offsets = [builder.load(builder.gep(offsets_data, [builder.add(k_first, ir.Constant(i64, t))]))
                   for t in range(GRAD_TAPS)]
        plane = builder.mul(Ho, Wo)                                               # dy's stride between outputs
        accumulators = [[cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(GRAD_TAPS)]
                        for _ in range(GRAD_OUTPUTS)]
        vectors = builder.sdiv(Wo, ir.Constant(i64, GRAD_LANES))

        def load(data, index):
            return builder.load(builder.bitcast(builder.gep(data, [index]), vector.as_pointer()), align=1)

        n, ho = builder.sdiv(row_first, Ho), builder.srem(row_first, Ho)           # once: divisions are slow
        ho_now = cgutils.alloca_once_value(builder, ho)
        dy_now = cgutils.alloca_once_value(builder, builder.add(builder.mul(builder.add(builder.mul(n, O), o_first),
                                                                            plane), builder.mul(ho, Wo)))
        x_now = cgutils.alloca_once_value(builder, builder.mul(builder.add(builder.mul(n, Hp), ho), Wp))
        next_image_dy = builder.mul(builder.sub(O, ir.Constant(i64, 1)), plane)   # extra step to the next image
        next_image_x = builder.mul(builder.sub(Hp, Ho), Wp)
        with cgutils.for_range(builder, rows):
            dy_row, x_row = builder.load(dy_now), builder.load(x_now)
            with cgutils.for_range(builder, vectors) as vector_loop:
                pixel = builder.mul(vector_loop.index, ir.Constant(i64, GRAD_LANES))
                dy_at = builder.add(dy_row, pixel)
                dys = [load(dy_data, builder.add(dy_at, builder.mul(ir.Constant(i64, o), plane)))
                       for o in range(GRAD_OUTPUTS)]
                x_at = builder.add(x_row, pixel)
                for t in range(GRAD_TAPS):
                    x = load(xp_data, builder.add(x_at, offsets[t]))
                    for o in range(GRAD_OUTPUTS):
                        total = builder.call(fmuladd, [dys[o], x, builder.load(accumulators[o][t])])
                        builder.store(total, accumulators[o][t])
            ho_next = builder.add(builder.load(ho_now), ir.Constant(i64, 1))
            wrap = builder.icmp_signed("==", ho_next, Ho)                           # the next row is in image n + 1
            builder.store(builder.select(wrap, ir.Constant(i64, 0), ho_next), ho_now)
            builder.store(builder.add(dy_row, builder.select(wrap, builder.add(Wo, next_image_dy), Wo)), dy_now)
            builder.store(builder.add(x_row, builder.select(wrap, builder.add(Wp, next_image_x), Wp)), x_now)
        for o in range(GRAD_OUTPUTS):
            for t in range(GRAD_TAPS):
                lanes = builder.load(accumulators[o][t])
                total = builder.extract_element(lanes, ir.Constant(ir.IntType(32), 0))
                for lane in range(1, GRAD_LANES):
                    total = builder.fadd(total, builder.extract_element(lanes, ir.Constant(ir.IntType(32), lane)))
                builder.store(total, builder.gep(out_data, [ir.Constant(i64, o * GRAD_TAPS + t)]))
        return context.get_dummy_value()

    return signature, codegen


def _segments_kernel(tasks):
    """direct_weight_grad's kernel over the S row segments, `tasks` being prange or range (threaded.py)."""

    def kernel(dy, xp, offsets, Hp, Wp, chunk_rows, partial):  # pragma: no cover - compiled
        """partial [S, O, K]: each segment's dW (module docstring) from dy [N, O, Ho, Wo], xp [C, L], offsets [K]."""
        N, O, Ho, Wo = dy.shape
        K = offsets.size
        S = partial.shape[0]
        rows = N * Ho
        dy_flat, x_flat = dy.reshape(-1), xp.reshape(-1)                          # [N*O*Ho*Wo], [C*L]
        for s in tasks(S):
            first, last = s * rows // S, (s + 1) * rows // S
            block = np.empty((GRAD_OUTPUTS, GRAD_TAPS), dtype=dy.dtype)          # [OG, KG]
            part = partial[s]                                                     # [O, K]
            part[:] = 0
            for start in range(first, last, chunk_rows):
                count = min(chunk_rows, last - start)
                for o_block in range(0, O, GRAD_OUTPUTS):
                    o_first = min(o_block, O - GRAD_OUTPUTS)                       # overlaps the block before
                    for k_block in range(0, K, GRAD_TAPS):
                        k_first = min(k_block, K - GRAD_TAPS)
                        tile_grad(block, dy_flat, x_flat, offsets, o_first, k_first, start, count, O, Ho, Wo, Hp, Wp)
                        for o in range(o_block - o_first, GRAD_OUTPUTS):
                            for t in range(k_block - k_first, GRAD_TAPS):
                                part[o_first + o, k_first + t] += block[o, t]

    return kernel


direct_weight_grad_kernel = threaded_kernel(_segments_kernel, SERIAL_MACS)  # conv_direct's threshold


def grad_fits(geo: ConvGeometry, out_channels: int, in_channels: int) -> bool:
    """Whether direct_weight_grad takes a grid conv's weight gradient: stride 1, rows of whole vectors, at least a
    block of outputs and of taps, and at most GRAD_MAX_OUTPUTS outputs (with more, BLAS's product is faster)."""
    return (geo.stride == 1 and geo.Wo % GRAD_LANES == 0 and GRAD_OUTPUTS <= out_channels <= GRAD_MAX_OUTPUTS
            and in_channels * geo.kh * geo.kw >= GRAD_TAPS)


def direct_weight_grad(dy: np.ndarray, xp: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """dW [O, C*kh*kw] of a stride-1 grid conv from dy [N, O, Ho, Wo] and its padded input xp [C, L]
    (im2col.grid_source), by register tiles (module docstring)."""
    N, O, Ho, Wo = dy.shape
    C = xp.shape[0]
    dy = np.ascontiguousarray(dy, dtype=xp.dtype)                                 # [N, O, Ho, Wo]
    offsets = tap_offsets_flat(geo, C)                                            # [K]
    Hp, Wp = geo.padded
    chunk_rows = max(1, CHUNK_ELEMENTS // (C * Wp))
    partial = np.empty((SEGMENTS, O, offsets.size), dtype=xp.dtype)               # [S, O, K]
    direct_weight_grad_kernel.for_work(dy.size * offsets.size)(dy, np.ascontiguousarray(xp), offsets, Hp, Wp,
                                                               chunk_rows, partial)
    return partial.sum(axis=0)                                                    # [O, K]


def direct_weight_grad_ref(dy: np.ndarray, xp: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """NumPy twin of direct_weight_grad: dW[:, k] = sum over the output pixels of dy times tap k's view of xp."""
    N, O, Ho, Wo = dy.shape
    C = xp.shape[0]
    Hp, Wp = geo.padded
    grid = xp.reshape(C, N, Hp, Wp)                                               # [C, N, Hp, Wp]
    dw = np.empty((O, C, geo.kh, geo.kw), dtype=np.result_type(dy, xp))           # [O, C, kh, kw]
    for i in range(geo.kh):
        for j in range(geo.kw):
            taps = grid[:, :, i : i + Ho, j : j + Wo]                             # [C, N, Ho, Wo]
            dw[:, :, i, j] = np.einsum("nohw,cnhw->oc", dy, taps)                 # [O, C]
    return dw.reshape(O, -1)                                                      # [O, K]
