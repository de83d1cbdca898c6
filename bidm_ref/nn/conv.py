"""2-D convolution (cross-correlation, as torch.nn.Conv2d) by im2col + one BLAS matmul per direction.

Dimensions: N batch, C input channels, O output channels, H, W input spatial,
Ho, Wo output spatial, kh, kw kernel, K = C*kh*kw (the im2col row count), Q columns (im2col.py).
Layouts are PyTorch's: activations NCHW, weights OIHW.

    cols = unfold(x)                  [K, Q]      rows (c, i, j): the OIHW weight reshaped, no transpose
    y    = W[O, K] @ cols + b         [O, Q]      -> NCHW [N, O, Ho, Wo] (from_columns: one copy)
    dy   -> [O, Q] (to_columns);  dW = dy @ cols^T [O, K];  db = sum_q dy;  dx = fold(W^T @ dy)
One matmul per product over the whole batch keeps BLAS's threads busy, and every layout copy moves
contiguous runs (docs/ENGINE.md, "Convolution").

Padding is zeros, given as one int or as (top, bottom, left, right) so ddim's
Downsample (pad (0,1,0,1), then a 3x3 stride-2 conv with no padding) is one layer.
"""

from __future__ import annotations

import numpy as np

from .im2col import conv_geometry, fold, from_columns, to_columns, unfold
from .init import uniform_fan_in
from .module import Module
from .padding import Padding, as_padding


def conv2d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray]:
    """y = conv(x, weight) + bias; returns (y [N, O, Ho, Wo], cols [K, Q]) for the backward."""
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} (NCHW) does not fit weight {weight.shape} (OIHW)")
    O, _, kh, kw = weight.shape
    geo = conv_geometry(x.shape, kh, kw, stride, padding)
    cols = unfold(x, geo)                                                         # [K, Q]
    y = weight.reshape(O, -1) @ cols                                              # [O, Q]
    if bias is not None:
        y += bias[:, None]                                                        # [O, Q]
    return from_columns(y, geo), cols                                             # [N, O, Ho, Wo]


def conv2d_backward(
    dy: np.ndarray, cols: np.ndarray, weight: np.ndarray, x_shape: tuple[int, ...], stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of conv2d: returns (dx [N, C, H, W], dweight [O, C, kh, kw], dbias [O])."""
    O, _, kh, kw = weight.shape
    geo = conv_geometry(x_shape, kh, kw, stride, padding)
    dy_cols = to_columns(dy, geo)                                                 # [O, Q]
    dweight = (dy_cols @ cols.T).reshape(weight.shape)                            # [O, C, kh, kw]
    dbias = dy.sum(axis=(0, 2, 3))                                                # [O]
    dcols = weight.reshape(O, -1).T @ dy_cols                                     # [K, Q]
    return fold(dcols, geo), dweight, dbias                                       # [N, C, H, W]


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
