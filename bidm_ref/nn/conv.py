"""2-D convolution (cross-correlation, as torch.nn.Conv2d) by im2col + BLAS matmuls over the whole batch, or register
tiles on the padded input (conv_direct.py) for the forward of the convs with few channels.

Dimensions: N batch, C input channels, O output channels, H, W input spatial,
Ho, Wo output spatial, kh, kw kernel, K = C*kh*kw (the im2col row length), P = N*Ho*Wo,
Q grid columns and L = N*Hp*Wp the padded input (im2col.py). Layouts are PyTorch's: NCHW, OIHW.

pointwise (1x1 kernel, no padding, stride s; the UNet's nin_shortcut, attention q/k/v/proj_out, the binary
layers' FP shortcuts):
    xs = x[:, :, ::s, ::s] as [N, C, Ho*Wo];  y[n] = W[O, C] @ xs[n] + b   (one batched matmul, NCHW in and out;
    at stride 1, where conv_pointwise.pointwise_fits, register tiles instead)
    dW = sum_n dy[n] @ xs[n]^T;  dxs[n] = W^T @ dy[n], scattered back to x[:, :, ::s, ::s]
grid layout (large maps, and every conv that conv_direct.direct_fits takes; im2col.py, `conv_layout`):
    xp = grid_source(x) [C, L];  y = direct_conv(xp, W) + b  (register tiles, conv_direct.py) or, for the others,
    cols = unfold(xp) [K, Q] chunk by chunk and y = W[O, K] @ cols + b [O, Q] -> NCHW (from_columns)
    dy -> [O, Q] (to_columns);  dW = sum over chunks dy @ cols^T;  dxp += fold(W^T @ dy) per chunk, or, where
    conv_direct.transposed_geometry takes it, dx = direct_conv(dy padded, W flipped and transposed); where the
    forward was direct and conv_direct_grad.grad_fits (few outputs), dW = direct_weight_grad(dy, xp) (register
    tiles, no columns and no to_columns)
taps layout (grid convs with 2*O <= C, such as conv_out, where direct_conv does not run the forward; conv_taps.py):
    the same xp, multiplied first, Z = Ws[(t, o), C] @ xp, then y[o, q] = sum_t Z[(t, o), q + off_t]; no columns
rows layout (small maps, strides):
    cols = im2col_rows(x) [P, K];  y = cols @ W'^T + b [P, O] -> NCHW   (W' = W in (o, i, j, c) order)
    dW' = dy^T @ cols;  dx = col2im_rows(dy @ W')
What the forward returns beside y (`saved`: xs, xp or cols) is what the backward needs; callers pass it back
unopened (docs/ENGINE.md, "Convolution", has the layouts' measurements).

Padding is zeros, given as one int or as (top, bottom, left, right) so ddim's
Downsample (pad (0,1,0,1), then a 3x3 stride-2 conv with no padding) is one layer.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .im2col import (ConvGeometry, col2im_rows, conv_geometry, crop_padding, fold_grid_chunk, from_columns, grid_chunks,
                     grid_source, im2col_rows, rows_weight, to_columns)
from .conv_direct import TILE_PIXELS, direct_conv, direct_fits, transposed_geometry, transposed_weight
from .conv_direct_grad import direct_weight_grad, grad_fits
from .conv_pointwise import pointwise_conv, pointwise_fits
from .conv_taps import taps_backward, taps_forward, use_taps
from .init import uniform_fan_in
from .module import Module
from .padding import Padding, as_padding


def conv2d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray]:
    """y = conv(x, weight) + bias; returns (y [N, O, Ho, Wo], saved: xs [N, C, Ho*Wo], xp [C, L], cols [P, K] or, for
    a direct conv in the rows layout, x) for the backward."""
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} (NCHW) does not fit weight {weight.shape} (OIHW)")
    N = x.shape[0]
    O = weight.shape[0]
    geo, direct = conv_layout(x.shape, weight.shape, stride, padding)
    w_mat = weight.reshape(O, -1)                                                 # [O, K]
    if geo.pointwise:
        xs = pointwise_source(x, stride)                                          # [N, C, Ho*Wo]
        if pointwise_fits(geo, x, weight):
            return pointwise_conv(xs, weight, bias).reshape(N, O, geo.Ho, geo.Wo), xs  # [N, O, Ho, Wo]
        y = np.matmul(w_mat, xs)                                                  # [N, O, Ho*Wo]
        if bias is not None:
            y += bias[:, None]                                                    # [N, O, Ho*Wo]
        return y.reshape(N, O, geo.Ho, geo.Wo), xs                                # [N, O, Ho, Wo]
    if direct and x.dtype == weight.dtype and x.dtype in (np.float32, np.float64):
        xp = grid_source(x, geo)                                                  # [C, L]
        return direct_conv(xp, weight, bias, geo), (xp if geo.grid else x)        # [N, O, Ho, Wo]
    if not geo.grid:
        cols = im2col_rows(x, geo)                                                # [P, K]
        y = cols @ rows_weight(weight).T                                          # [P, O]
        if bias is not None:
            y += bias                                                             # [P, O]
        return np.ascontiguousarray(y.reshape(N, geo.Ho, geo.Wo, O).transpose(0, 3, 1, 2)), cols  # [N, O, Ho, Wo]
    xp = grid_source(x, geo)                                                      # [C, L]
    if use_taps(geo, O):
        y = taps_forward(xp, weight, geo)                                         # [O, Q]
    else:
        y = np.empty((O, geo.columns), dtype=np.result_type(x, weight))          # [O, Q]
        for start, stop, cols in grid_chunks(xp, geo):
            np.matmul(w_mat, cols, out=y[:, start:stop])                          # [O, n]
    if bias is not None:
        y += bias[:, None]                                                        # [O, Q]
    return from_columns(y, geo), xp                                               # [N, O, Ho, Wo]


def conv2d_backward(
    dy: np.ndarray, saved: np.ndarray, weight: np.ndarray, x_shape: tuple[int, ...], stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of conv2d (`saved` from its forward): returns (dx [N, C, H, W], dweight [O, C, kh, kw], dbias [O])."""
    O, C, kh, kw = weight.shape
    geo, direct = conv_layout(x_shape, weight.shape, stride, padding)
    dbias = dy.sum(axis=(0, 2, 3))                                                # [O]
    w_mat = weight.reshape(O, -1)                                                 # [O, K]
    if geo.pointwise:
        dy_mat = np.ascontiguousarray(dy).reshape(dy.shape[0], O, -1)             # [N, O, Ho*Wo]
        dweight = np.matmul(dy_mat, saved.transpose(0, 2, 1)).sum(axis=0)         # [O, C]
        return pointwise_scatter(np.matmul(w_mat.T, dy_mat), x_shape, stride), dweight.reshape(weight.shape), dbias
    if not geo.grid:
        cols = im2col_rows(saved, geo) if saved.ndim == 4 else saved              # [P, K] (saved: x after direct_conv)
        dy_mat = dy.transpose(0, 2, 3, 1).reshape(-1, O)                          # [P, O]
        dweight = (dy_mat.T @ cols).reshape(O, kh, kw, C).transpose(0, 3, 1, 2)   # [O, C, kh, kw]
        return col2im_rows(dy_mat @ rows_weight(weight), geo), dweight, dbias     # [N, C, H, W]
    transposed = transposed_geometry(geo, weight.shape) if dy.dtype == weight.dtype else None
    if transposed is not None and direct and grad_fits(geo, O, C):                # no columns at all
        dweight = direct_weight_grad(dy, saved, geo)                              # [O, K]
    else:
        dy_cols = to_columns(dy, geo)                                             # [O, Q]
        backward = taps_backward if use_taps(geo, O) else grid_backward
        dxp, dweight = backward(dy_cols, saved, weight, geo, input_gradient=transposed is None)
        if transposed is None:
            return crop_padding(dxp, geo), dweight.reshape(weight.shape), dbias   # [N, C, H, W]
    dx = direct_conv(grid_source(dy, transposed), transposed_weight(weight), None, transposed)  # dx: dy's direct conv
    return dx, dweight.reshape(weight.shape), dbias                               # [N, C, H, W]


def grid_backward(dy_cols: np.ndarray, xp: np.ndarray, weight: np.ndarray, geo: ConvGeometry,
                  input_gradient: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """The grid layout's gradients chunk by chunk: (dxp [C, L] or None without input_gradient, dW [O, K])."""
    w_mat = weight.reshape(weight.shape[0], -1)                                   # [O, K]
    dw_mat = np.zeros(w_mat.shape, dtype=dy_cols.dtype)                           # [O, K]
    dxp = np.zeros(xp.shape, dtype=dy_cols.dtype) if input_gradient else None     # [C, L]
    for start, stop, cols in grid_chunks(xp, geo):                                # cols [K, n]
        dy_chunk = dy_cols[:, start:stop]                                         # [O, n]
        dw_mat += dy_chunk @ cols.T                                               # [O, K]
        if input_gradient:
            fold_grid_chunk(w_mat.T @ dy_chunk, geo, start, dxp)                  # [C, L]
    return dxp, dw_mat


def conv_layout(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], stride: int,
                padding: Padding) -> tuple[ConvGeometry, bool]:
    """(geometry, direct): im2col's layout for the conv, and whether its forward runs conv_direct.direct_conv. Such
    convs with rows of a whole tile go on the grid whatever their map size (16x16 maps too), and the backward is the
    grid's from the same xp; narrower ones (8x8) keep the rows layout's backward, which makes its columns from x
    (the forward saves x instead of the columns it did not make)."""
    O, C, kh, kw = weight_shape
    geo = conv_geometry(x_shape, kh, kw, stride, padding)
    direct = direct_fits(geo, O, C)
    return (replace(geo, grid=True) if direct and geo.Wo >= TILE_PIXELS else geo), direct


def pointwise_source(x: np.ndarray, stride: int) -> np.ndarray:
    """x [N, C, H, W] -> the pixels a 1x1 conv of `stride` reads, [N, C, Ho*Wo] (a view of x at stride 1)."""
    xs = x[:, :, ::stride, ::stride]                                              # [N, C, Ho, Wo]
    return np.ascontiguousarray(xs).reshape(*xs.shape[:2], -1)                    # [N, C, Ho*Wo]


def pointwise_scatter(dxs: np.ndarray, x_shape: tuple[int, ...], stride: int) -> np.ndarray:
    """The adjoint of pointwise_source: dxs [N, C, Ho*Wo] -> dx [N, C, H, W], zero where the stride skipped."""
    if stride == 1:
        return dxs.reshape(x_shape)                                               # [N, C, H, W]
    dx = np.zeros(x_shape, dtype=dxs.dtype)                                       # [N, C, H, W]
    view = dx[:, :, ::stride, ::stride]                                           # [N, C, Ho, Wo]
    view[...] = dxs.reshape(view.shape)
    return dx


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
