"""The stride-1 1x1 conv by register tiles, on CPUs where they are wider than BLAS's kernels.

Dimensions: N batch, C input channels, O output channels, P = H*W pixels of one image, OT = POINTWISE_OUTPUTS,
PX = POINTWISE_PIXELS.

    y[n, o, p] = sum over c, in order, of W[o, c] * x[n, c, p]  (+ b[o])

In NCHW, PX adjacent pixels of one image read PX adjacent inputs for every c (at offsets c*P), so conv_direct's
tile_dot runs on x as it is: a tile of OT = 6 outputs x PX = 64 pixels is 24 vector accumulators (4 of 16 floats per
output) that stay in registers over all C; per c it loads 4 input vectors and broadcasts 6 weights for 24
multiply-adds (the 3x3 convs' tile: 1 load and 8 broadcasts for 8). The last tile of an image starts at P - PX and
overlaps the one before (so P >= PX: maps of 8x8 and more), and so does the last block of OT outputs (the weight is
padded with zero rows only below OT outputs). The kernel is `tile_matmul`, a batched product whose weight is read
through strides: one [O, C] matrix for every image here, each image's own matrix, read by rows or by columns, in
attention.py's two products. Where the tiles compile for AVX-512 and OpenBLAS runs
AVX2 kernels (conv_direct.TILES_WIDER_THAN_BLAS) they beat conv.py's batched matmul on the CIFAR-10 UNet's 1x1 convs
of 8x8 maps and more by 1.15-2x (docs/ENGINE.md, "BLAS kernels"); elsewhere the matmul stays (`pointwise_fits`).
Each output is one sum in a fixed order, whatever the thread count. The backward stays the matmuls of conv.py. Twin:
`pointwise_conv_ref`.
"""

from __future__ import annotations

import numpy as np

from . import conv_direct
from .conv_direct import DIRECT_MIN_MACS, SERIAL_MACS, TILE_PIXELS, make_tile_dot, tile_bias, tile_operands
from .im2col import ConvGeometry
from .threaded import threaded_kernel

POINTWISE_OUTPUTS = 6  # output channels of one tile: 6 x 4 = 24 zmm accumulators, 4 inputs and a weight: 29 of 32
POINTWISE_VECTORS = 4  # vectors of PT pixels per output in one tile
POINTWISE_PIXELS = POINTWISE_VECTORS * TILE_PIXELS  # PX = 64 adjacent pixels of one image

tile_dot_pointwise = make_tile_dot(POINTWISE_OUTPUTS, POINTWISE_VECTORS)


def _tile_matmul_kernel(tasks):
    """tile_matmul's kernel over the N*ceil(P/PX) pixel tiles, `tasks` being prange or range (threaded.py)."""

    def kernel(x, offsets, w, w_image, w_row, w_tap, w_rows, bias, y):  # pragma: no cover - compiled
        """y [N, O, P] from x [N, K, P], offsets [K] = k*P and the flat w (tile_matmul); bias [O] or [0] (none). Rows
        o < w_rows (>= max(O, OT)) of each image's weight are readable: a block that would pass them starts at
        w_rows - OT and overlaps the one before."""
        N, K, P = x.shape
        O = y.shape[1]
        blocks = -(-O // POINTWISE_OUTPUTS)
        tiles = -(-P // POINTWISE_PIXELS)
        x_flat = x.reshape(-1)                                                    # [N*K*P]
        for task in tasks(N * tiles):
            n, start = task // tiles, (task % tiles) * POINTWISE_PIXELS
            first = min(start, P - POINTWISE_PIXELS)                              # overlaps the tile before
            tile = np.empty((POINTWISE_OUTPUTS, POINTWISE_PIXELS), dtype=y.dtype)  # [OT, PX]
            for block in range(blocks):
                o_start = block * POINTWISE_OUTPUTS
                o_first = min(o_start, w_rows - POINTWISE_OUTPUTS)                # overlaps the block before
                tile_dot_pointwise(tile, x_flat, n * K * P + first, offsets, w, n * w_image + o_first * w_row, w_row,
                                   w_tap, K)
                for o in range(o_start - o_first, min(POINTWISE_OUTPUTS, O - o_first)):
                    b = bias[o_first + o] if bias.size else y.dtype.type(0)
                    for p in range(start - first, POINTWISE_PIXELS):
                        y[n, o_first + o, first + p] = tile[o, p] + b

    return kernel


tile_matmul_kernel = threaded_kernel(_tile_matmul_kernel, SERIAL_MACS)


def tile_matmul(x: np.ndarray, w: np.ndarray, strides: tuple[int, int, int], outputs: int,
                bias: np.ndarray | None = None) -> np.ndarray:
    """y[n, o, p] = sum over k, in order, of w_flat[n*w_image + o*w_row + k*w_tap] * x[n, k, p] (+ bias[o]) by register
    tiles: y [N, O = outputs, P] from x [N, K, P] (C-contiguous, P >= PX) and a C-contiguous w of x's dtype read flat
    with strides (w_image, w_row, w_tap): (0, K, 1) for one [O, K] weight of every image (a 1x1 conv), (O*K, 1, O)
    for each image's own [K, O] matrix used transposed (attention.py). Needs outputs >= OT, or rows up to OT readable
    (the weight padded with zero rows)."""
    N, K, P = x.shape
    w_image, w_row, w_tap = strides
    w_rows = max(outputs, POINTWISE_OUTPUTS)
    if P < POINTWISE_PIXELS or (N - 1) * w_image + (w_rows - 1) * w_row + (K - 1) * w_tap >= w.size:
        raise ValueError(f"tile_matmul: {P} pixels (need {POINTWISE_PIXELS}) or a weight of {w.size} elements too "
                         f"small for {outputs} outputs (at least {POINTWISE_OUTPUTS} rows) with strides {strides}")
    y = np.empty((N, outputs, P), dtype=x.dtype)                                  # [N, O, P]
    offsets = np.arange(K, dtype=np.int64) * P                                    # [K]
    b = tile_bias(bias, x.dtype)                                                  # [O], or [0]: none
    tile_matmul_kernel.for_work(y.size * K)(np.ascontiguousarray(x), offsets, w.reshape(-1), w_image, w_row, w_tap,
                                            w_rows, b, y)
    return y


def pointwise_fits(geo: ConvGeometry, x: np.ndarray, weight: np.ndarray) -> bool:
    """Whether conv2d runs a 1x1 conv by pointwise_conv: stride 1, the tiles wider than BLAS's kernels, at least PX
    pixels per image, x and weight of one float dtype, at least DIRECT_MIN_MACS multiply-adds."""
    if not (conv_direct.TILES_WIDER_THAN_BLAS and geo.pointwise and geo.stride == 1):
        return False
    N, C = geo.x_shape[:2]
    P = geo.Ho * geo.Wo
    return (P >= POINTWISE_PIXELS and x.dtype == weight.dtype and x.dtype in (np.float32, np.float64)
            and N * weight.shape[0] * P * C >= DIRECT_MIN_MACS)


def pointwise_conv(xs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The 1x1 conv of xs [N, C, P] (C-contiguous) with weight [O, C, 1, 1] and bias [O] or None: y [N, O, P], by
    register tiles (module docstring). Needs P >= PX."""
    N, C, P = xs.shape
    O = weight.shape[0]
    if O < POINTWISE_OUTPUTS:                                                     # zero rows up to one whole tile
        w, _ = tile_operands(weight, None, POINTWISE_OUTPUTS, xs.dtype)           # [OT, C]
    else:
        w = np.ascontiguousarray(weight.reshape(O, C), dtype=xs.dtype)            # [O, C]
    return tile_matmul(xs, w, (0, C, 1), O, bias)                                 # [N, O, P]


def tile_matmul_ref(x: np.ndarray, w: np.ndarray, strides: tuple[int, int, int], outputs: int,
                    bias: np.ndarray | None = None) -> np.ndarray:
    """NumPy twin of tile_matmul: each image's weight [O, K] gathered from the flat w by the strides, then the sums over
    k in order, one k at a time for all outputs."""
    N, K, P = x.shape
    w_image, w_row, w_tap = strides
    index = (np.arange(N)[:, None, None] * w_image + np.arange(outputs)[:, None] * w_row
             + np.arange(K) * w_tap)                                              # [N, O, K]
    w_mat = w.reshape(-1)[index]                                                  # [N, O, K]
    y = np.zeros((N, outputs, P), dtype=x.dtype)                                  # [N, O, P]
    for k in range(K):
        y += w_mat[:, :, k, None] * x[:, None, k]                                 # [N, O, P]
    return y if bias is None else y + bias[:, None]                               # [N, O, P]


def pointwise_conv_ref(xs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """NumPy twin of pointwise_conv (tile_matmul_ref with the weight [O, C] of every image)."""
    O, C = weight.shape[:2]
    return tile_matmul_ref(xs, np.ascontiguousarray(weight, dtype=xs.dtype), (0, C, 1), O, bias)  # [N, O, P]
