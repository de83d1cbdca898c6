"""XNOR-Net++ (Bulat & Tzimiropoulos 2019, BMVC, "XNOR-Net++: Improved Binary Neural Networks"): one learned scale.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

XNOR-Net++ (its method section) drops XNOR-Net's analytic weight scale alpha and activation scale K and learns a
single output scale Gamma by backpropagation, factorised as a rank-1 tensor over the output
(its case 3, Gamma = alpha (x) beta (x) gamma):
    z     = conv2d(sign(x), sign(W))                     [N, O, Ho, Wo]   the +-1 conv (popcount)
    Gamma = a[o] * b[i] * c[j]                           [O, Ho, Wo]      a `gamma_out` [O], b `gamma_h` [Ho],
                                                                          c `gamma_w` [Wo]
    y     = z * Gamma                                    [N, O, Ho, Wo]
Pseudo-gradients: clipped STE for activations and weights (ClippedSign: d sign(u)/du := 1{|u| <= 1}).
Backward, line by line:
    dGamma = sum_n dy * z;  da = sum_{i,j} dGamma b c;  db = sum_{o,j} dGamma a c;  dc = sum_{o,i} dGamma a b
    d sign(x), d sign(W) = conv2d_backward(dy * Gamma);  dx = 1{|x| <= 1} d sign(x);  dW = 1{|W| <= 1} d sign(W)
Linear (temb_proj): y = (sign(x) sign(W)^T) * a[o], `gamma_out` [O].

Adapted for the diffusion UNet:
  - Gamma's spatial factors are sized for the output of the resolution the layer is built at
    (`resolution` = the input's H = W, from BinaryLayers.at); running it at another size is an error.
  - init: a[o] = mean |W[o]| (XNOR-Net's alpha of the weights at construction), b = c = 1, so the
    layer starts as XNOR-Net without K. A student that copies an FP teacher's weights should call
    `init_from_weights()` afterwards to restart a from the copied weights.
  - no bias in binary mode (as every binary layer here); `bias` serves the FP ("full") mode.
"""

from __future__ import annotations

import numpy as np

from ..nn.conv import Padding, conv2d, conv2d_backward
from ..nn.padding import conv_output_size
from .quantizers import ClippedSign
from .switchable import SwitchableConv2d, SwitchableLinear


def output_channel_mean_abs(w: np.ndarray) -> np.ndarray:
    """mean |W| over all axes but the first: [O, ...] -> [O]."""
    return np.abs(w).reshape(w.shape[0], -1).mean(axis=1)                        # [O]


class XnorPPConv2d(SwitchableConv2d):
    """Params `weight`, `bias` (FP mode only), `gamma_out` [O], `gamma_h` [Ho], `gamma_w` [Wo]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: Padding,
        *,
        rng: np.random.Generator,
        resolution: int,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng=rng)
        if resolution < 1:
            raise ValueError(
                f"XnorPPConv2d needs the input resolution to size Gamma over the output, got {resolution}: "
                "build it through BinaryLayers(...).at(resolution)"
            )
        top, bottom, left, right = self.padding
        self.resolution = resolution
        ho = conv_output_size(resolution, kernel_size, stride, top, bottom)
        wo = conv_output_size(resolution, kernel_size, stride, left, right)
        self.act = ClippedSign()
        self.weights = ClippedSign()
        self.add_param("gamma_out", np.ones(out_channels, dtype=np.float32))
        self.add_param("gamma_h", np.ones(ho, dtype=np.float32))
        self.add_param("gamma_w", np.ones(wo, dtype=np.float32))
        self.init_from_weights()

    def init_from_weights(self) -> None:
        """a = mean |W[o]| of the current weights, b = c = 1 (call after copying a teacher's weights)."""
        self.params["gamma_out"][...] = output_channel_mean_abs(self.params["weight"])  # [O]
        self.params["gamma_h"][...] = 1                                           # [Ho]
        self.params["gamma_w"][...] = 1                                           # [Wo]

    def gamma(self) -> np.ndarray:
        """Gamma = a (x) b (x) c, [O, Ho, Wo]."""
        a, b, c = self.params["gamma_out"], self.params["gamma_h"], self.params["gamma_w"]
        return a[:, None, None] * b[None, :, None] * c[None, None, :]             # [O, Ho, Wo]

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        wb = self.weights(self.params["weight"])                                  # [O, C, kh, kw]
        z, cols = conv2d(self.act(x), wb, None, self.stride, self.padding)        # [N, O, Ho, Wo]
        gamma = self.gamma()                                                      # [O, Ho, Wo]
        if z.shape[2:] != gamma.shape[1:]:
            raise ValueError(
                f"XnorPPConv2d: Gamma is sized for a {self.resolution}x{self.resolution} input but the input is "
                f"{x.shape[2]}x{x.shape[3]}: build the layer at the resolution it runs at (BinaryLayers.at)"
            )
        return z * gamma, (x, wb, z, gamma, cols)                                 # [N, O, Ho, Wo]

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, wb, z, gamma, cols = cache
        a, b, c = self.params["gamma_out"], self.params["gamma_h"], self.params["gamma_w"]
        dgamma = np.sum(dy * z, axis=0)                                           # [O, Ho, Wo]
        self.grads["gamma_out"] += np.einsum("oij,i,j->o", dgamma, b, c)          # [O]
        self.grads["gamma_h"] += np.einsum("oij,o,j->i", dgamma, a, c)            # [Ho]
        self.grads["gamma_w"] += np.einsum("oij,o,i->j", dgamma, a, b)            # [Wo]
        dz = dy * gamma                                                           # [N, O, Ho, Wo]
        dxb, dwb, _ = conv2d_backward(dz, cols, wb, x.shape, self.stride, self.padding)  # [N, C, H, W], [O, C, kh, kw]
        self.grads["weight"] += self.weights.grad(self.params["weight"], dwb)     # [O, C, kh, kw]
        return self.act.grad(x, dxb)                                              # [N, C, H, W]


class XnorPPLinear(SwitchableLinear):
    """Params `weight` [O, I], `bias` (FP mode only), `gamma_out` [O]."""

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> None:
        super().__init__(in_features, out_features, rng=rng)
        self.act = ClippedSign()
        self.weights = ClippedSign()
        self.add_param("gamma_out", np.ones(out_features, dtype=np.float32))
        self.init_from_weights()

    def init_from_weights(self) -> None:
        """a = mean |W[o]| of the current weights (call after copying a teacher's weights)."""
        self.params["gamma_out"][...] = output_channel_mean_abs(self.params["weight"])  # [O]

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        xb, wb = self.act(x), self.weights(self.params["weight"])                 # [N, I], [O, I]
        z = xb @ wb.T                                                             # [N, O]
        return z * self.params["gamma_out"], (x, xb, wb, z)                       # [N, O]

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, xb, wb, z = cache
        self.grads["gamma_out"] += np.sum(dy * z, axis=0)                         # [O]
        dz = dy * self.params["gamma_out"]                                        # [N, O]
        self.grads["weight"] += self.weights.grad(self.params["weight"], dz.T @ xb)  # [O, I]
        return self.act.grad(x, dz @ wb)                                          # [N, I]
