"""Direct convolution on the grid layout's padded input: register tiles of OT output channels x 16 pixels.

Dimensions: N batch, C input channels, O output channels, Ho, Wo output spatial, Hp, Wp padded input spatial,
L = N*Hp*Wp (im2col.py's grid), K = C*kh*kw taps, OT = TILE_OUTPUTS, PT = TILE_PIXELS.

For a stride-1 conv in the grid layout (im2col.py) the output pixel (n, ho, wo) reads the padded input at grid cell
q = (n*Hp + ho)*Wp + wo, tap k = (c, i, j) at xp[c, q + i*Wp + j], so with offsets[k] = c*L + i*Wp + j on the flat xp:
    y[n, o, ho, wo] = sum over k, in order, of W[o, k] * xp_flat[(n*Hp + ho)*Wp + wo + offsets[k]]  + b[o]
For PT adjacent pixels of one output row these are PT adjacent elements of xp_flat, for every k. `tile_dot` computes
an OT x PT tile of outputs as OT vector accumulators that stay in registers for the whole sum over k: per k one
vector load of PT inputs, OT broadcast weights, OT multiply-adds. LLVM's loop vectorizer cannot keep accumulators
in registers across a loop (they live in memory, one load and store per multiply-add), hence an intrinsic written in
LLVM IR, like binary/popcount.py's. The BLAS layouts it replaces for the forward spend most of their time on
copies (the grid's columns: kh*kw copies of the input) and on small matrices (16 rows for the tiny preset's convs):
docs/ENGINE.md, "Convolution", has the measurements.

`direct_conv` runs the tiles over the N*ceil(O/OT)*Ho output rows (prange); a row's last tile starts at Wo - PT and
overlaps the one before, so every tile reads inside its image's padded rows (needs Wo >= PT). Narrower maps (8x8)
run `direct_conv_cells_kernel`: tiles of PT consecutive grid cells across rows, storing the output pixels among
them (as the grid's matmul, it computes the padding cells too; `direct_fits` takes it where they are at most half
the cells). Weights are padded with zero rows to a multiple of OT; the tile's extra outputs are not stored. Each
output is one sum in a fixed order, whatever the thread count (the bytes do not depend on it); the multiply-adds
may be fused (LLVM's fmuladd: one rounding on CPUs with FMA). The backward of the grid layout uses the same xp
for the weight gradient; the input gradient of a stride-1 conv is itself a conv, of dy with the flipped, transposed
weight (`transposed_geometry`, `transposed_weight`), which direct_conv runs too where it fits (conv.py's backward).
Twin: `direct_conv_ref` (NumPy, the same sums over k in order, unfused). `make_tile_dot(outputs, vectors)` makes
such tiles of other sizes (conv_pointwise.py's 1x1 convs). Where the tiles compile for AVX-512 and OpenBLAS runs
narrower kernels (TILES_WIDER_THAN_BLAS; e.g. OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU), the row tiles take
sums of up to WIDE_TILES_MAX_TAPS taps (docs/ENGINE.md, "BLAS kernels").
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .im2col import ConvGeometry, conv_geometry, tap_offsets
from .threaded import compiles_for, threaded_kernel

# Output channels of one register tile (OT): its OT accumulators of PT floats, the PT inputs and one broadcast weight
# must fit the vector registers. AVX-512: 8 accumulators of one zmm + 2 = 10 of 32. AVX2: 6 of two ymm + 3 = 15 of
# 16; 8 spill (one thread, znver3, GF/s: 26-32 at OT = 8, 49-62 at 4, 53-76 at 6; docs/ENGINE.md, "Convolution").
TILE_OUTPUTS = 8 if compiles_for("avx512f") else 6
TILE_PIXELS = 16  # adjacent output pixels of one row in one register tile (PT): 2 AVX2 / 1 AVX-512 float32 vectors
MIN_OUTPUTS = 8  # direct_fits' fewest output channels (fewer waste most of a tile; the same on every CPU)


def float_array(value: types.Type) -> bool:
    """Whether a Numba type is a C-contiguous float32 or float64 array (what the tile intrinsics compile for)."""
    return isinstance(value, types.Array) and value.layout == "C" and value.dtype in (types.float32, types.float64)


def make_tile_dot(outputs: int, vectors: int):
    """tile_dot for tiles of `outputs` output channels x `vectors` * PT pixels (the docstring below)."""

    @intrinsic
    def tile_dot(typingctx, out, xp, base, offsets, w, w_first, w_row, w_tap, K):
        """out[o, p] = sum over k < K, in order, of w[w_first + o*w_row + k*w_tap] * xp[base + offsets[k] + p], for
        o < outputs and p < vectors*PT: out a C-contiguous [outputs, vectors*PT] array, xp and w flat arrays of out's
        dtype, offsets an int64 array (a weight matrix [O, K] as rows: w_row = K, w_tap = 1; as columns of a [K, O]
        one: w_row = 1, w_tap = O). Indices are not checked (the caller keeps them inside the arrays)."""
        if not (float_array(out) and float_array(xp) and float_array(w) and xp.dtype == out.dtype == w.dtype
                and isinstance(offsets, types.Array) and offsets.dtype == types.int64):
            return None
        signature = types.void(out, xp, types.int64, offsets, w, *[types.int64] * 4)

        def codegen(context, builder, sig, args):
            out_array, xp_array, base_index, offsets_array, w_array, w_start, w_step, tap_step, taps = args
            scalar = context.get_value_type(sig.args[0].dtype)
            vector = ir.VectorType(scalar, TILE_PIXELS)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            data = [context.make_array(sig.args[i])(context, builder, args[i]).data for i in (0, 1, 3, 4)]
            out_data, xp_data, offsets_data, w_data = data
            name = f"llvm.fmuladd.v{TILE_PIXELS}{'f32' if isinstance(scalar, ir.FloatType) else 'f64'}"
            fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
            broadcast = ir.Constant(ir.VectorType(i32, TILE_PIXELS), [0] * TILE_PIXELS)
            accumulators = [[cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(vectors)]
                            for _ in range(outputs)]                               # [outputs][vectors]
            with cgutils.for_range(builder, taps) as loop:                       # k = loop.index
                k = loop.index
                start = builder.add(base_index, builder.load(builder.gep(offsets_data, [k])))
                xs = [builder.load(builder.bitcast(builder.gep(xp_data, [builder.add(start, ir.Constant(
                    i64, v * TILE_PIXELS))]), vector.as_pointer()), align=1) for v in range(vectors)]
                w_k = builder.add(w_start, builder.mul(k, tap_step))
                for o in range(outputs):
                    w_index = builder.add(w_k, builder.mul(ir.Constant(i64, o), w_step))
                    w_one = builder.insert_element(ir.Constant(vector, None),
                                                   builder.load(builder.gep(w_data, [w_index])), ir.Constant(i32, 0))
                    w_lanes = builder.shuffle_vector(w_one, ir.Constant(vector, None), broadcast)
                    for v in range(vectors):
                        total = builder.call(fmuladd, [w_lanes, xs[v], builder.load(accumulators[o][v])])
                        builder.store(total, accumulators[o][v])
            for o in range(outputs):
                for v in range(vectors):
                    row = builder.gep(out_data, [ir.Constant(i64, (o * vectors + v) * TILE_PIXELS)])
                    builder.store(builder.load(accumulators[o][v]), builder.bitcast(row, vector.as_pointer()), align=1)
            return context.get_dummy_value()

        return signature, codegen

    return tile_dot


tile_dot = make_tile_dot(TILE_OUTPUTS, 1)  # the convs' tile: OT outputs x PT pixels


def _row_tiles_kernel(tasks):
    """direct_conv's kernel over the N*ceil(O/OT)*Ho output rows, `tasks` being prange or range (threaded.py)."""

    def kernel(xp, offsets, w_tiles, bias, Hp, Wp, y):  # pragma: no cover - compiled
        """y [N, O, Ho, Wo] (module docstring) from xp [C, L], offsets [K] int64, w_tiles [Ot, K] (W with zero
        rows up to Ot, a multiple of OT), bias [O] or [0] (none)."""
        N, O, Ho, Wo = y.shape
        K = offsets.size
        blocks = w_tiles.shape[0] // TILE_OUTPUTS
        x_flat = xp.reshape(-1)                                                   # [C*L]
        w_flat = w_tiles.reshape(-1)                                              # [Ot*K]
        for task in tasks(N * blocks * Ho):
            n, block, ho = task // (blocks * Ho), (task // Ho) % blocks, task % Ho
            o_first = block * TILE_OUTPUTS
            tile = np.empty((TILE_OUTPUTS, TILE_PIXELS), dtype=y.dtype)           # [OT, PT]
            wo = 0
            while wo < Wo:
                first = min(wo, Wo - TILE_PIXELS)                                 # overlaps the tile before
                tile_dot(tile, x_flat, (n * Hp + ho) * Wp + first, offsets, w_flat, o_first * K, K, 1, K)
                for o in range(min(TILE_OUTPUTS, O - o_first)):
                    b = bias[o_first + o] if bias.size else y.dtype.type(0)
                    for p in range(wo - first, TILE_PIXELS):
                        y[n, o_first + o, ho, first + p] = tile[o, p] + b
                wo = first + TILE_PIXELS

    return kernel


def _cell_tiles_kernel(tasks):
    """direct_conv's kernel for maps whose rows are narrower than a tile, `tasks` being prange or range: tiles of PT
    consecutive grid cells q < Q (crossing rows and images; the last one starts at Q - PT and stores only the cells
    after the tile before it), each storing the cells that are output pixels (ho < Ho, wo < Wo)."""

    def kernel(xp, offsets, w_tiles, bias, Hp, Wp, Q, y):  # pragma: no cover - compiled
        N, O, Ho, Wo = y.shape
        K = offsets.size
        blocks = w_tiles.shape[0] // TILE_OUTPUTS
        tiles = -(-Q // TILE_PIXELS)
        x_flat = xp.reshape(-1)                                                   # [C*L]
        w_flat = w_tiles.reshape(-1)                                              # [Ot*K]
        for task in tasks(blocks * tiles):
            block, start = task // tiles, (task % tiles) * TILE_PIXELS
            o_first = block * TILE_OUTPUTS
            first = min(start, Q - TILE_PIXELS)
            tile = np.empty((TILE_OUTPUTS, TILE_PIXELS), dtype=y.dtype)           # [OT, PT]
            tile_dot(tile, x_flat, first, offsets, w_flat, o_first * K, K, 1, K)
            for p in range(start - first, TILE_PIXELS):
                n, cell = divmod(first + p, Hp * Wp)
                ho, wo = divmod(cell, Wp)
                if ho < Ho and wo < Wo:
                    for o in range(min(TILE_OUTPUTS, O - o_first)):
                        b = bias[o_first + o] if bias.size else y.dtype.type(0)
                        y[n, o_first + o, ho, wo] = tile[o, p] + b

    return kernel


SERIAL_MACS = 1 << 21  # multiply-adds below which a direct conv runs on the calling thread (threaded.py)
direct_conv_kernel = threaded_kernel(_row_tiles_kernel, SERIAL_MACS)
direct_conv_cells_kernel = threaded_kernel(_cell_tiles_kernel, SERIAL_MACS)


DIRECT_MAX_TAPS = 1152  # K = C*kh*kw up to which the tiles beat BLAS (cifar10's 128-channel 3x3 convs; docs/ENGINE.md)
DIRECT_MIN_MACS = 1 << 22  # below, BLAS on the rows layout is as fast (latent N1 8x8 convs, 2.4M: 58 us direct)
WIDE_TILES_MAX_TAPS = 4608  # K up to which AVX-512 row tiles beat OpenBLAS's AVX2 kernels (cifar10's 256-channel convs)
AVX512_BLAS_KERNELS = ("skylakex", "cooperlake", "sapphirerapids")  # OpenBLAS's cores with AVX-512 kernels


def tiles_wider_than_blas() -> bool:
    """Whether the tiles compile for AVX-512 while OpenBLAS multiplies with narrower kernels (its core, as
    threadpoolctl reports it, has none of AVX512_BLAS_KERNELS; e.g. OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU).
    False for another BLAS library."""
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool.get("internal_api") == "openblas"]
    cores = [str(pool.get("architecture")).lower() for pool in pools]
    return compiles_for("avx512f") and bool(cores) and not any(core in AVX512_BLAS_KERNELS for core in cores)


TILES_WIDER_THAN_BLAS = tiles_wider_than_blas()  # once per process: the row tiles' cap, the 1x1 tiles (conv_pointwise)


def direct_fits(geo: ConvGeometry, out_channels: int, in_channels: int) -> bool:
    """Whether a conv's forward runs direct_conv (by shape only, so its backward finds the same layout): stride 1,
    not pointwise, rows of at least PT outputs (or narrower rows where output pixels are at least half the padded
    grid's cells: 8x8 maps with padding 1, not 4x4), at least MIN_OUTPUTS output channels (fewer waste most of a
    tile; the taps layout takes them), at most max_taps taps (larger sums stream too many inputs and weights per
    tile; BLAS is as fast there) and at least DIRECT_MIN_MACS multiply-adds."""
    if geo.stride != 1 or geo.pointwise or out_channels < MIN_OUTPUTS:          # cheap tests first: every conv asks
        return False
    taps = in_channels * geo.kh * geo.kw
    if taps > max_taps(geo) or geo.x_shape[0] * out_channels * geo.Ho * geo.Wo * taps < DIRECT_MIN_MACS:
        return False
    if geo.Wo >= TILE_PIXELS:
        return True
    Hp, Wp = geo.padded
    return geo.columns >= TILE_PIXELS and 2 * geo.Ho * geo.Wo >= Hp * Wp


def max_taps(geo: ConvGeometry) -> int:
    """The most taps direct_fits takes: WIDE_TILES_MAX_TAPS on rows of at least PT outputs where the tiles are wider
    than BLAS's kernels (TILES_WIDER_THAN_BLAS), else DIRECT_MAX_TAPS (and always for the cell tiles of narrower
    maps)."""
    return WIDE_TILES_MAX_TAPS if TILES_WIDER_THAN_BLAS and geo.Wo >= TILE_PIXELS else DIRECT_MAX_TAPS


def transposed_geometry(geo: ConvGeometry, weight_shape: tuple[int, ...]) -> ConvGeometry | None:
    """The geometry of a stride-1 conv's input gradient as a conv of dy, when direct_conv takes it (else None):
    dx[n, c] = sum over o, i, j of W[o, c, i, j] dy[n, o, h + top - i, w + left - j], i.e. the conv of dy
    [N, O, Ho, Wo] padded by (kh-1-top, kh-1-bottom, kw-1-left, kw-1-right) with `transposed_weight(W)`, O inputs
    and C outputs; its output is [N, C, H, W]."""
    O, C, kh, kw = weight_shape
    top, bottom, left, right = geo.padding
    padding = (kh - 1 - top, kh - 1 - bottom, kw - 1 - left, kw - 1 - right)
    if geo.stride != 1 or min(padding) < 0:
        return None
    transposed = conv_geometry((geo.x_shape[0], O, geo.Ho, geo.Wo), kh, kw, 1, padding)
    return transposed if direct_fits(transposed, C, O) else None


def transposed_weight(weight: np.ndarray) -> np.ndarray:
    """W [O, C, kh, kw] -> W' [C, O, kh, kw] with W'[c, o, i, j] = W[o, c, kh-1-i, kw-1-j] (a view)."""
    return weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]


def tap_offsets_flat(geo: ConvGeometry, channels: int) -> np.ndarray:
    """offsets [K] int64: c*L + i*Wp + j for the taps k = (c, i, j) in W's order (module docstring)."""
    Hp, Wp = geo.padded
    L = geo.x_shape[0] * Hp * Wp
    taps = np.array(tap_offsets(geo), dtype=np.int64)                             # [kh*kw] i*Wp + j
    return (np.arange(channels, dtype=np.int64)[:, None] * L + taps).reshape(-1)  # [K]


def tile_operands(weight: np.ndarray, bias: np.ndarray | None, outputs: int,
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The tile kernels' weights and bias in `dtype`: w_tiles [Ot, K] (weight [O, ...] as rows, with zero rows up to
    Ot, a multiple of `outputs`, so every tile reads whole rows) and b [O], or [0] for no bias."""
    O = weight.shape[0]
    w_tiles = np.zeros((-(-O // outputs) * outputs, weight[0].size), dtype=dtype)  # [Ot, K]
    w_tiles[:O] = weight.reshape(O, -1)
    return w_tiles, tile_bias(bias, dtype)


def tile_bias(bias: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The bias as the tile kernels read it: [O] in `dtype`, or [0] for no bias."""
    return np.zeros(0, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)


def direct_conv(xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geo: ConvGeometry) -> np.ndarray:
    """The grid conv's output y [N, O, Ho, Wo] from its padded input xp [C, L] (im2col.grid_source), weight
    [O, C, kh, kw] and bias [O] or None, by register tiles (module docstring)."""
    O, C = weight.shape[:2]
    w_tiles, b = tile_operands(weight, bias, TILE_OUTPUTS, xp.dtype)              # [Ot, K], [O] or [0]
    y = np.empty((geo.x_shape[0], O, geo.Ho, geo.Wo), dtype=xp.dtype)            # [N, O, Ho, Wo]
    xp, offsets = np.ascontiguousarray(xp), tap_offsets_flat(geo, C)
    macs = y.size * offsets.size
    if geo.Wo >= TILE_PIXELS:
        direct_conv_kernel.for_work(macs)(xp, offsets, w_tiles, b, *geo.padded, y)
    else:
        direct_conv_cells_kernel.for_work(macs)(xp, offsets, w_tiles, b, *geo.padded, geo.columns, y)
    return y


def direct_conv_ref(xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geo: ConvGeometry) -> np.ndarray:
    """NumPy twin of direct_conv: the same sums over k = (c, i, j) in order, one tap at a time for all outputs."""
    O, C = weight.shape[:2]
    N = geo.x_shape[0]
    Hp, Wp = geo.padded
    grid = xp.reshape(C, N, Hp, Wp)                                               # [C, N, Hp, Wp]
    w_mat = weight.reshape(O, -1)                                                 # [O, K]
    y = np.zeros((N, O, geo.Ho, geo.Wo), dtype=xp.dtype)                         # [N, O, Ho, Wo]
    for k, (c, i, j) in enumerate((c, i, j) for c in range(C) for i in range(geo.kh) for j in range(geo.kw)):
        taps = grid[c, :, i : i + geo.Ho, j : j + geo.Wo]                         # [N, Ho, Wo]
        y += w_mat[None, :, k, None, None] * taps[:, None]                        # [N, O, Ho, Wo]
    return y if bias is None else y + bias[:, None, None]                         # [N, O, Ho, Wo]
