"""The stride-1 1x1 conv by register tiles, on CPUs where they are wider than BLAS's kernels.

Dimensions: N batch, C input channels, O output channels, P = H*W pixels of one image, OT = POINTWISE_OUTPUTS,
PX = POINTWISE_PIXELS.

    y[n, o, p] = sum over c, in order, of W[o, c] * x[n, c, p]  (+ b[o])

In NCHW, PX adjacent pixels of one image read PX adjacent inputs for every c (at offsets c*P), so conv_direct's
tile_dot runs on x as it is: a tile of OT = 6 outputs x PX = 64 pixels is 24 vector accumulators (4 of 16 floats per
output) that stay in registers over all C; per c it loads 4 input vectors and broadcasts 6 weights for 24
multiply-adds (the 3x3 convs' tile: 1 load and 8 broadcasts for 8). The last tile of an image starts at P - PX and
overlaps the one before (so P >= PX: maps of 8x8 and more). Where the tiles compile for AVX-512 and OpenBLAS runs
AVX2 kernels (conv_direct.TILES_WIDER_THAN_BLAS) they beat conv.py's batched matmul on the CIFAR-10 UNet's 1x1 convs
of 8x8 maps and more by 1.15-2x (docs/ENGINE.md, "BLAS kernels"); elsewhere the matmul stays (`pointwise_fits`).
Each output is one sum in a fixed order, whatever the thread count. The backward stays the matmuls of conv.py. Twin:
`pointwise_conv_ref`.
"""

from __future__ import annotations

import numpy as np

from . import conv_direct
from .conv_direct import DIRECT_MIN_MACS, SERIAL_MACS, TILE_PIXELS, make_tile_dot, tile_operands
from .im2col import ConvGeometry
from .threaded import threaded_kernel

POINTWISE_OUTPUTS = 6  # output channels of one tile: 6 x 4 = 24 zmm accumulators, 4 inputs and a weight: 29 of 32
POINTWISE_VECTORS = 4  # vectors of PT pixels per output in one tile
POINTWISE_PIXELS = POINTWISE_VECTORS * TILE_PIXELS  # PX = 64 adjacent pixels of one image

tile_dot_pointwise = make_tile_dot(POINTWISE_OUTPUTS, POINTWISE_VECTORS)


def _pointwise_tiles_kernel(tasks):
    """pointwise_conv's kernel over the N*ceil(P/PX) pixel tiles, `tasks` being prange or range (threaded.py)."""

    def kernel(x, offsets, w_tiles, bias, y):  # pragma: no cover - compiled
        """y [N, O, P] from x [N, C, P], offsets [C] = c*P, w_tiles [Ot, C] (W with zero rows up to a multiple of
        OT), bias [O] or [0] (none)."""
        N, C, P = x.shape
        O = y.shape[1]
        blocks = w_tiles.shape[0] // POINTWISE_OUTPUTS
        tiles = -(-P // POINTWISE_PIXELS)
        x_flat = x.reshape(-1)                                                    # [N*C*P]
        w_flat = w_tiles.reshape(-1)                                              # [Ot*C]
        for task in tasks(N * tiles):
            n, start = task // tiles, (task % tiles) * POINTWISE_PIXELS
            first = min(start, P - POINTWISE_PIXELS)                              # overlaps the tile before
            tile = np.empty((POINTWISE_OUTPUTS, POINTWISE_PIXELS), dtype=y.dtype)  # [OT, PX]
            for block in range(blocks):
                o_first = block * POINTWISE_OUTPUTS
                tile_dot_pointwise(tile, x_flat, n * C * P + first, offsets, w_flat, o_first * C, C)
                for o in range(min(POINTWISE_OUTPUTS, O - o_first)):
                    b = bias[o_first + o] if bias.size else y.dtype.type(0)
                    for p in range(start - first, POINTWISE_PIXELS):
                        y[n, o_first + o, first + p] = tile[o, p] + b

    return kernel


pointwise_tiles_kernel = threaded_kernel(_pointwise_tiles_kernel, SERIAL_MACS)


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
    w_tiles, b = tile_operands(weight, bias, POINTWISE_OUTPUTS, xs.dtype)         # [Ot, C], [O] or [0]
    y = np.empty((N, weight.shape[0], P), dtype=xs.dtype)                         # [N, O, P]
    offsets = np.arange(C, dtype=np.int64) * P                                    # [C]
    pointwise_tiles_kernel.for_work(y.size * C)(np.ascontiguousarray(xs), offsets, w_tiles, b, y)
    return y


def pointwise_conv_ref(xs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """NumPy twin of pointwise_conv: the same sums over c in order, one input channel at a time for all outputs."""
    N, C, P = xs.shape
    w_mat = weight.reshape(weight.shape[0], C)                                    # [O, C]
    y = np.zeros((N, w_mat.shape[0], P), dtype=xs.dtype)                          # [N, O, P]
    for c in range(C):
        y += w_mat[None, :, c, None] * xs[:, None, c]                             # [N, O, P]
    return y if bias is None else y + bias[:, None]                               # [N, O, P]
