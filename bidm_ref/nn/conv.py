"""2-D convolution (cross-correlation, as torch.nn.Conv2d) by im2col + BLAS matmuls over the whole batch.

Dimensions: N batch, C input channels, O output channels, H, W input spatial,
Ho, Wo output spatial, kh, kw kernel, K = C*kh*kw (the im2col row count), Q columns (im2col.py),
L = N*Hp*Wp (the padded input, flat).
Layouts are PyTorch's: activations NCHW, weights OIHW.

    cols = unfold(x)                  [K, Q]      rows (c, i, j): the OIHW weight reshaped, no transpose
    y    = W[O, K] @ cols + b         [O, Q]      -> NCHW [N, O, Ho, Wo] (from_columns: one copy)
    dy   -> [O, Q] (to_columns);  dW = dy @ cols^T [O, K];  db = sum_q dy;  dx = fold(W^T @ dy)
A stride-1 conv with a kernel larger than 1x1 never holds its cols whole: forward and backward build
them chunk by chunk from the padded input xp [C, L], which is what the forward caches
(docs/ENGINE.md, "Convolution"). Other convs cache cols: a 1x1 conv's cols are xp itself, a strided
conv's (Downsample) are a quarter of its input's size times kh*kw.

Padding is zeros, given as one int or as (top, bottom, left, right) so ddim's
Downsample (pad (0,1,0,1), then a 3x3 stride-2 conv with no padding) is one layer.
"""

from __future__ import annotations

import numpy as np

from .im2col import (ConvGeometry, column_chunks, conv_geometry, crop_padding, fold, fold_grid_chunk, from_columns,
                     grid_chunk, grid_source, to_columns, unfold)
from .init import uniform_fan_in
from .module import Module
from .padding import Padding, as_padding


def is_chunked(geo: ConvGeometry) -> bool:
    """True when the conv builds its columns chunk by chunk from xp (stride 1, kernel larger than 1x1)."""
    return geo.grid and geo.kh * geo.kw > 1


def conv2d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray]:
    """y = conv(x, weight) + bias; returns (y [N, O, Ho, Wo], saved) where saved (xp [C, L] or cols [K, Q])
    is what conv2d_backward needs."""
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} (NCHW) does not fit weight {weight.shape} (OIHW)")
    O, _, kh, kw = weight.shape
    geo = conv_geometry(x.shape, kh, kw, stride, padding)
    w_mat = weight.reshape(O, -1)                                                 # [O, K]
    if is_chunked(geo):
        saved = grid_source(x, geo)                                               # [C, L]
        y = np.empty((O, geo.columns), dtype=np.result_type(x, weight))          # [O, Q]
        chunks = column_chunks(geo, w_mat.shape[1], x.itemsize)
        buffer = np.empty(w_mat.shape[1] * (chunks[0][1] - chunks[0][0]), dtype=x.dtype)
        for start, stop in chunks:
            np.matmul(w_mat, grid_chunk(saved, geo, start, stop, buffer), out=y[:, start:stop])  # [O, n]
    else:
        saved = unfold(x, geo)                                                    # [K, Q]
        y = w_mat @ saved                                                         # [O, Q]
    if bias is not None:
        y += bias[:, None]                                                        # [O, Q]
    return from_columns(y, geo), saved                                            # [N, O, Ho, Wo]


def conv2d_backward(
    dy: np.ndarray, saved: np.ndarray, weight: np.ndarray, x_shape: tuple[int, ...], stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of conv2d (`saved` from its forward): returns (dx [N, C, H, W], dweight [O, C, kh, kw], dbias [O])."""
    O, _, kh, kw = weight.shape
    geo = conv_geometry(x_shape, kh, kw, stride, padding)
    w_mat = weight.reshape(O, -1)                                                 # [O, K]
    dy_cols = to_columns(dy, geo)                                                 # [O, Q]
    dbias = dy.sum(axis=(0, 2, 3))                                                # [O]
    if not is_chunked(geo):
        dweight = (dy_cols @ saved.T).reshape(weight.shape)                       # [O, C, kh, kw]
        return fold(w_mat.T @ dy_cols, geo), dweight, dbias                       # [N, C, H, W]
    dw_mat = np.zeros(w_mat.shape, dtype=dy_cols.dtype)                           # [O, K]
    dxp = np.zeros(saved.shape, dtype=dy_cols.dtype)                              # [C, L]
    chunks = column_chunks(geo, w_mat.shape[1], saved.itemsize)
    buffer = np.empty(w_mat.shape[1] * (chunks[0][1] - chunks[0][0]), dtype=saved.dtype)
    for start, stop in chunks:
        cols = grid_chunk(saved, geo, start, stop, buffer)                        # [K, n]
        dy_chunk = dy_cols[:, start:stop]                                         # [O, n]
        dw_mat += dy_chunk @ cols.T                                               # [O, K]
        fold_grid_chunk(w_mat.T @ dy_chunk, geo, start, dxp)                      # [C, L]
    return crop_padding(dxp, geo), dw_mat.reshape(weight.shape), dbias            # [N, C, H, W]


class Conv2d(Module):
    """Conv layer, params `weight` [O, C, kh, kw] and optional `bias` [O]; torch's default init."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: Padding = 0,
        bias: bool = True,
        *,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        if stride < 1 or kernel_size < 1:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
        self.stride = stride
        self.padding = as_padding(padding)
        fan_in = in_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.add_param("weight", uniform_fan_in(rng, shape, fan_in))
        if bias:
            self.add_param("bias", uniform_fan_in(rng, (out_channels,), fan_in))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        y, cols = conv2d(x, self.params["weight"], self.params.get("bias"), self.stride, self.padding)  # [N, O, Ho, Wo]
        return y, (cols, x.shape)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        cols, x_shape = cache
        dx, dweight, dbias = conv2d_backward(dy, cols, self.params["weight"], x_shape, self.stride, self.padding)
        self.grads["weight"] += dweight                                           # [O, C, kh, kw]
        if "bias" in self.params:
            self.grads["bias"] += dbias                                           # [O]
        return dx                                                                 # [N, C, H, W]
