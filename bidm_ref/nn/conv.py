"""2-D convolution (cross-correlation, as torch.nn.Conv2d) by im2col + one BLAS matmul.

Dimensions: N batch, C input channels, O output channels, H, W input spatial,
Ho, Wo output spatial, kh, kw kernel, K = kh*kw*C (the im2col row length).
Layouts are PyTorch's: activations NCHW, weights OIHW.

Padding is zeros, given as one int or as (top, bottom, left, right) so ddim's
Downsample (pad (0,1,0,1), then a 3x3 stride-2 conv with no padding) is one layer.
"""

from __future__ import annotations

import numpy as np

from .im2col import col2im, im2col, output_size
from .init import uniform_fan_in
from .module import Module
from .padding import Padding, as_padding

def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW weight [O, C, kh, kw] -> [O, kh*kw*C], the column order of im2col."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def conv2d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray]:
    """y = conv(x, weight) + bias; returns (y [N, O, Ho, Wo], cols [N*Ho*Wo, K]) for the backward."""
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} (NCHW) does not fit weight {weight.shape} (OIHW)")
    N = x.shape[0]
    O, _, kh, kw = weight.shape
    Ho, Wo = output_size(x.shape, kh, kw, stride, padding)
    cols = im2col(x, kh, kw, stride, padding)                                     # [N*Ho*Wo, K]
    y = cols @ weight_matrix(weight).T                                            # [N*Ho*Wo, O]
    if bias is not None:
        y += bias                                                                 # [N*Ho*Wo, O]
    y = np.ascontiguousarray(y.reshape(N, Ho, Wo, O).transpose(0, 3, 1, 2))       # [N, O, Ho, Wo]
    return y, cols


def conv2d_backward(
    dy: np.ndarray, cols: np.ndarray, weight: np.ndarray, x_shape: tuple[int, ...], stride: int, padding: Padding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of conv2d: returns (dx [N, C, H, W], dweight [O, C, kh, kw], dbias [O])."""
    O, C, kh, kw = weight.shape
    dy_mat = dy.transpose(0, 2, 3, 1).reshape(-1, O)                               # [N*Ho*Wo, O]
    dweight = (dy_mat.T @ cols).reshape(O, kh, kw, C).transpose(0, 3, 1, 2)       # [O, C, kh, kw]
    dbias = dy_mat.sum(axis=0)                                                    # [O]
    dcols = dy_mat @ weight_matrix(weight)                                        # [N*Ho*Wo, K]
    dx = col2im(dcols, x_shape, kh, kw, stride, padding)                          # [N, C, H, W]
    return dx, dweight, dbias


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
