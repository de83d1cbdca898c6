"""ReSTE (Wu et al. 2023, ICCV, "Estimator Meets Equilibrium Perspective: A Rectified Straight Through
Estimator for Binary Neural Networks Training"): sign forward, an annealed power function backward.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

ReSTE keeps sign in the forward pass and backpropagates through f(u) = sign(u) |u|^(1/o),
an estimator between the STE (o = 1) and sign (o -> infinity); o grows during training, trading
gradient stability early for a small estimating error late. The slope is bounded as in the
official code (RectifiedSign in quantizers.py: secant slope on |u| <= 0.1, zero beyond |u| > 1.5).
    E   = mean |W|                                       []               one scalar over ALL weights
    Wq  = E * sign(W)                                    [O, C, kh, kw]
    y   = conv2d(sign(x), Wq)                            [N, O, Ho, Wo]
Backward, line by line (R' = RectifiedSign's slope; E is NOT detached, as in the official code,
where `scaler = mean(|w|)` stays in the autograd graph):
    d sign(x), dWq = conv2d_backward(dy);  dx = R'(x) d sign(x)
    dW = R'(W) (E dWq) + sign(W) / numel(W) * sum(dWq * sign(W))     (d|W|/dW = sign(W), 0 at W = 0)
Schedule (official main.py): o(p) = 1 + (o_end - 1) (1 - cos(pi p / 2)) for the fraction p in [0, 1]
of training done (the code uses epoch / epochs), o_end = 3 (the code's default and the README's
runs); the same o for weights and activations. The trainer calls `set_progress(p)`; o is not a
parameter, so a resumed run must call it again before its first step.

Adapted for the diffusion UNet: the official code binarizes only convs (bias=False); the linear
(temb_proj) here gets the same estimator and scale, y = sign(x) (E sign(W))^T. The scale is the
official code's single E per layer (not XNOR-Net's per-output-channel alpha). No bias in binary
mode (`bias` serves the FP "full" mode).
"""

from __future__ import annotations

import math

import numpy as np

from ..nn.conv import Padding, conv2d, conv2d_backward
from .quantizers import RectifiedSign
from .switchable import SwitchableConv2d, SwitchableLinear


def reste_exponent(progress: float, o_end: float) -> float:
    """o(p) = 1 + (o_end - 1) (1 - cos(pi p / 2)): 1 at p = 0, o_end at p = 1 (ReSTE's official schedule)."""
    return 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi * progress / 2))


def scaled_weights(q: RectifiedSign, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Wq = E * sign(W), sign(W), E): W [O, ...] -> [O, ...], [O, ...], []."""
    b = q(w)                                                                      # [O, ...]
    e = np.abs(w).mean()                                                          # []
    return e * b, b, e


def scaled_weights_grad(q: RectifiedSign, w: np.ndarray, b: np.ndarray, e: np.ndarray, dwq: np.ndarray) -> np.ndarray:
    """dW of Wq = E(W) * q(W): the estimator's slope times E dWq, plus the exact gradient through E."""
    return q.grad(w, e * dwq) + np.sum(dwq * b) * np.sign(w) / w.size             # [O, ...]


class AnnealedExponent:
    """Mixin for the ReSTE layers: `set_progress` anneals o of both quantizers (`act`, `weights`)."""

    def init_annealing(self, o_end: float) -> None:
        if o_end < 1:
            raise ValueError(f"{type(self).__name__}: o_end must be >= 1 (o = 1 is the STE), got {o_end}")
        self.o_end = o_end
        self.act = RectifiedSign()
        self.weights = RectifiedSign()

    def set_progress(self, fraction: float) -> None:
        """Set o = reste_exponent(fraction, o_end) for weights and activations; fraction of training done in [0, 1]."""
        if not 0 <= fraction <= 1:
            raise ValueError(
                f"{type(self).__name__}.set_progress: fraction of training done must be in [0, 1], got {fraction}"
            )
        self.act.o = self.weights.o = reste_exponent(fraction, self.o_end)


class ReSTEConv2d(SwitchableConv2d, AnnealedExponent):
    """Params `weight` [O, C, kh, kw], `bias` (FP mode only)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator, o_end: float = 3.0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng=rng)
        self.init_annealing(o_end)

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        wq, b, e = scaled_weights(self.weights, self.params["weight"])           # [O, C, kh, kw] x 2, []
        y, cols = conv2d(self.act(x), wq, None, self.stride, self.padding)        # [N, O, Ho, Wo]
        return y, (x, wq, b, e, cols)

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, wq, b, e, cols = cache
        dxb, dwq, _ = conv2d_backward(dy, cols, wq, x.shape, self.stride, self.padding)  # [N, C, H, W], [O, C, kh, kw]
        self.grads["weight"] += scaled_weights_grad(self.weights, self.params["weight"], b, e, dwq)  # [O, C, kh, kw]
        return self.act.grad(x, dxb)                                              # [N, C, H, W]


class ReSTELinear(SwitchableLinear, AnnealedExponent):
    """Params `weight` [O, I], `bias` (FP mode only)."""

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator, o_end: float = 3.0) -> None:
        super().__init__(in_features, out_features, rng=rng)
        self.init_annealing(o_end)

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        wq, b, e = scaled_weights(self.weights, self.params["weight"])           # [O, I] x 2, []
        xb = self.act(x)                                                          # [N, I]
        return xb @ wq.T, (x, xb, wq, b, e)                                       # [N, O]

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, xb, wq, b, e = cache
        self.grads["weight"] += scaled_weights_grad(self.weights, self.params["weight"], b, e, dy.T @ xb)  # [O, I]
        return self.act.grad(x, dy @ wq)                                          # [N, I]
