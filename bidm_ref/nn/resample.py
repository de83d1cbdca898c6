"""ddim's Upsample (nearest x2, then a 3x3 conv) and Downsample (pad (0,1,0,1), 3x3 stride-2 conv; or 2x2 avg pool).

Dimensions: N batch, C channels, H, W input spatial.
The convs are body layers (binarized in BiDM, docs/METHOD.md §2), built by a LayerFactory.
The nearest upsample and the 2x2 average pool (also the binary convs' stride-2 shortcut) are Numba passes over the
N*C planes, 4-6x NumPy's strided slices (docs/ENGINE.md, "GroupNorm, SiLU, attention"); `upsample_nearest2x_ref`
and `avg_pool2x_ref` are those NumPy versions, the twins they give the bytes of.
"""

from __future__ import annotations

import numpy as np

from .factory import DENSE, LayerFactory
from .module import Module
from .threaded import threaded_kernel

SERIAL_ELEMENTS = 1 << 16  # outputs below which the two passes run on the calling thread (threaded.py)


def _upsample_kernel(planes):
    """upsample_kernel over the N*C planes, `planes` being prange or range: y [N, C, 2H, 2W] from x [N, C, H, W]."""

    def kernel(x, y):  # pragma: no cover - compiled
        N, C, H, W = x.shape
        for plane in planes(N * C):
            n, c = plane // C, plane % C
            for h in range(H):
                for w in range(W):
                    y[n, c, 2 * h, 2 * w] = x[n, c, h, w]
                    y[n, c, 2 * h, 2 * w + 1] = x[n, c, h, w]
                for w in range(2 * W):
                    y[n, c, 2 * h + 1, w] = y[n, c, 2 * h, w]

    return kernel


def _avg_pool_kernel(planes):
    """avg_pool_kernel over the N*C planes, `planes` being prange or range: y [N, C, H//2, W//2] from x [N, C, H, W],
    each block's mean as ((a + b) + (c + d)) / 4 in x's dtype."""

    def kernel(x, y):  # pragma: no cover - compiled
        N, C, h, w = y.shape
        quarter = x.dtype.type(0.25)                                              # / 4 exactly
        for plane in planes(N * C):
            n, c = plane // C, plane % C
            for i in range(h):
                for j in range(w):
                    top = x[n, c, 2 * i, 2 * j] + x[n, c, 2 * i, 2 * j + 1]
                    bottom = x[n, c, 2 * i + 1, 2 * j] + x[n, c, 2 * i + 1, 2 * j + 1]
                    y[n, c, i, j] = (top + bottom) * quarter

    return kernel


upsample_kernel = threaded_kernel(_upsample_kernel, SERIAL_ELEMENTS)
avg_pool_kernel = threaded_kernel(_avg_pool_kernel, SERIAL_ELEMENTS)


def upsample_nearest2x(x: np.ndarray) -> np.ndarray:
    """x [N, C, H, W] -> [N, C, 2H, 2W], each pixel repeated in a 2x2 block (upsample_kernel)."""
    N, C, H, W = x.shape
    y = np.empty((N, C, 2 * H, 2 * W), dtype=x.dtype)                             # [N, C, 2H, 2W]
    upsample_kernel.for_work(y.size)(np.ascontiguousarray(x), y)
    return y


def upsample_nearest2x_ref(x: np.ndarray) -> np.ndarray:
    """NumPy twin of upsample_nearest2x."""
    return x.repeat(2, axis=2).repeat(2, axis=3)                                  # [N, C, 2H, 2W]


def upsample_nearest2x_backward(dy: np.ndarray) -> np.ndarray:
    """Adjoint: sum each 2x2 block, as ((a + b) + (c + d)) like avg_pool2x (NumPy's sum over the block axes of
    [N, C, H, 2, W, 2] took 7 ms of a tiny training step's 300 per call). dy [N, C, 2H, 2W] -> [N, C, H, W]."""
    return (dy[:, :, 0::2, 0::2] + dy[:, :, 0::2, 1::2]) + (dy[:, :, 1::2, 0::2] + dy[:, :, 1::2, 1::2])  # [N, C, H, W]


def avg_pool2x(x: np.ndarray) -> np.ndarray:
    """2x2 average pool, stride 2 (floor for odd sizes, as torch). [N, C, H, W] -> [N, C, H//2, W//2] (avg_pool_kernel).

    Each block's mean is written out as ((a + b) + (c + d)) / 4 instead of NumPy's mean over the block axes
    of [N, C, h, 2, w, 2] (whose order depends on the shape; the two agree to one rounding): ~18x faster than
    that reduction over two short strided axes (8x128x32x32 float32: 0.4 vs 7 ms), and the kernel 6x the slices.
    """
    N, C, H, W = x.shape
    y = np.empty((N, C, H // 2, W // 2), dtype=x.dtype)                           # [N, C, H//2, W//2]
    avg_pool_kernel.for_work(y.size)(np.ascontiguousarray(x), y)
    return y


def avg_pool2x_ref(x: np.ndarray) -> np.ndarray:
    """NumPy twin of avg_pool2x: the same sums on strided slices."""
    H, W = x.shape[2:]
    x = x[:, :, : H // 2 * 2, : W // 2 * 2]                                       # [N, C, 2h, 2w]
    return ((x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2]) + (x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2])) / 4  # [N, C, h, w]


def avg_pool2x_backward(dy: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    """Adjoint of avg_pool2x: dy/4 to each of the 4 inputs; rows/cols dropped by the floor get 0."""
    dx = np.zeros(x_shape, dtype=dy.dtype)                                        # [N, C, H, W]
    h, w = dy.shape[2], dy.shape[3]
    dx[:, :, : 2 * h, : 2 * w] = upsample_nearest2x(dy) / 4                       # [N, C, 2h, 2w]
    return dx


class Upsample(Module):
    """Nearest x2 then (with_conv) a 3x3 pad-1 conv named `conv`."""

    def __init__(self, channels: int, with_conv: bool, *, rng: np.random.Generator, body: LayerFactory = DENSE) -> None:
        super().__init__()
        self.conv = self.add_child("conv", body.conv(channels, channels, 3, 1, 1, rng=rng)) if with_conv else None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, object]:
        up = upsample_nearest2x(x)                                                # [N, C, 2H, 2W]
        if self.conv is None:
            return up, None
        return self.conv.forward(up)                                              # [N, C, 2H, 2W]

    def backward(self, dy: np.ndarray, cache: object) -> np.ndarray:
        dup = dy if self.conv is None else self.conv.backward(dy, cache)          # [N, C, 2H, 2W]
        return upsample_nearest2x_backward(dup)                                   # [N, C, H, W]


class Downsample(Module):
    """with_conv: zero pad (top 0, bottom 1, left 0, right 1) + 3x3 stride-2 conv `conv`; else 2x2 avg pool."""

    def __init__(self, channels: int, with_conv: bool, *, rng: np.random.Generator, body: LayerFactory = DENSE) -> None:
        super().__init__()
        self.conv = self.add_child("conv", body.conv(channels, channels, 3, 2, (0, 1, 0, 1), rng=rng)) if with_conv else None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, object]:
        if self.conv is None:
            return avg_pool2x(x), x.shape                                         # [N, C, H/2, W/2]
        return self.conv.forward(x)                                               # [N, C, H/2, W/2]

    def backward(self, dy: np.ndarray, cache: object) -> np.ndarray:
        if self.conv is None:
            return avg_pool2x_backward(dy, cache)                                 # [N, C, H, W]
        return self.conv.backward(dy, cache)                                      # [N, C, H, W]
