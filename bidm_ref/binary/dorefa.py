"""DoReFa-Net at 1 bit (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural
Networks with Low Bitwidth Gradients"): one scale per layer, straight-through gradients.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

    E   = mean |W|                                       []               one scalar over ALL weights, a constant
    Wq  = E * sign(W)                                    [O, C, kh, kw]   §2.2, 1-bit weights
    xb  = sign(x)                                        [N, C, H, W]     §2.3, 1-bit activations (below)
    y   = conv2d(xb, Wq)                                 [N, O, Ho, Wo]
Pseudo-gradients (quantizers.py):
    dW = dWq                  identity STE; E does not multiply it (the official code: E under stop_gradient,
                              Sign's gradient overridden by Identity)          -> LayerScaledSignWeights
    dx = 1{|x| <= 1} dxb      clipped STE                                       -> ClippedSign
What 1-bit activations mean here: DoReFa quantizes activations as quantize_k(clip(x, 0, 1)) with
quantize_k(r) = round((2^k - 1) r) / (2^k - 1) and the identity as round's gradient (§2.3; the
tensorpack code applies the clip for every k < 32, k = 1 included), i.e. levels {0, 1} with gradient
1{0 <= x <= 1}. For the +-1 popcount conv of a W1A1 model the same quantizer on the +-1 scale is
    sign(x) = 2 quantize_1(clip((x + 1) / 2, 0, 1)) - 1,   gradient 2 * 1/2 * 1{|x| <= 1} = 1{|x| <= 1},
the clipped STE. sign(0) = +1 (bidm-ref's convention; round-half-to-even would give -1).
No K, no shortcut, no threshold, no bias in binary mode (`bias` serves the FP "full" mode).
Linear (temb_proj): y = sign(x) (E sign(W))^T with E over the whole weight matrix.
"""

from __future__ import annotations

import numpy as np

from ..nn.conv import Padding, conv2d, conv2d_backward
from .quantizers import ClippedSign, LayerScaledSignWeights
from .switchable import SwitchableConv2d, SwitchableLinear


class DoReFaConv2d(SwitchableConv2d):
    """Params `weight` [O, C, kh, kw], `bias` (FP mode only)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng=rng)
        self.act = ClippedSign()
        self.weights = LayerScaledSignWeights()

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        wq = self.weights(self.params["weight"])                                  # [O, C, kh, kw]
        y, cols = conv2d(self.act(x), wq, None, self.stride, self.padding)        # [N, O, Ho, Wo]
        return y, (x, wq, cols)

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, wq, cols = cache
        dxb, dwq, _ = conv2d_backward(dy, cols, wq, x.shape, self.stride, self.padding)  # [N, C, H, W], [O, C, kh, kw]
        self.grads["weight"] += self.weights.grad(self.params["weight"], dwq)     # [O, C, kh, kw]
        return self.act.grad(x, dxb)                                              # [N, C, H, W]


class DoReFaLinear(SwitchableLinear):
    """Params `weight` [O, I], `bias` (FP mode only)."""

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> None:
        super().__init__(in_features, out_features, rng=rng)
        self.act = ClippedSign()
        self.weights = LayerScaledSignWeights()

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        xb, wq = self.act(x), self.weights(self.params["weight"])                 # [N, I], [O, I]
        return xb @ wq.T, (x, xb, wq)                                             # [N, O]

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, xb, wq = cache
        self.grads["weight"] += self.weights.grad(self.params["weight"], dy.T @ xb)  # [O, I]
        return self.act.grad(x, dy @ wq)                                          # [N, I]
