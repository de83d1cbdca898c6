"""ReActNet (Liu et al. 2020, ECCV, "ReActNet: Towards Precise Binary Neural Network with Generalized
Activation Functions"): RSign, scaled binary weights, FP shortcut, RPReLU.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

ReActNet's generalized activations (RSign and RPReLU, per channel) around a Bi-Real-style binary conv:
    u     = x + tau                                      [N, C, H, W]     RSign: sign(u), learnable shift `tau` [C], init 0
    z     = conv2d(sign(u), alpha * sign(W))             [N, O, Ho, Wo]   alpha [O] = mean |W[o]|, a constant
    r     = z + s * shortcut(x)                          [N, O, Ho, Wo]   the FP shortcut of shortcut.py
    v     = r - gamma                                    [N, O, Ho, Wo]   RPReLU shift-in `rprelu_gamma` [O], init 0
    y     = max(v, 0) + beta * min(v, 0) + zeta          [N, O, Ho, Wo]   slope `rprelu_beta` [O], init 0.25 (torch
                                                                          PReLU), shift-out `rprelu_zeta` [O], init 0
Pseudo-gradients (quantizers.py): ApproxSign for sign(u) (Bi-Real's piecewise quadratic, which
ReActNet trains RSign with), clipped STE for the weights with alpha detached (ScaledSignWeights,
ReActNet's `HardBinaryConv`). Backward, line by line:
    dv = dy * (1 if v > 0 else beta);  dgamma = -sum_{n,h,w} dv;  dbeta = sum_{n,h,w} dy * min(v, 0);  dzeta = sum_{n,h,w} dy
    dr = dv;  ds, dx_sc = shortcut backward(dr);  d sign(u), dWb = conv2d_backward(dr)
    du = ApproxSign'(u) d sign(u);  dtau = sum_{n,h,w} du;  dW = 1{|W| <= 1} dWb;  dx = du + dx_sc

Adapted for the diffusion UNet: ReActNet's block is RSign -> binary conv -> BN -> (+ shortcut) ->
RPReLU; the UNet brings its own GroupNorms, so the BN is left out and the shortcut and RPReLU are
folded into the layer, the shortcut with BiDM's learnable scale s (init 0, so the layer starts as
the binary conv alone). No bias in binary mode (`bias` serves the FP "full" mode).
Linear (temb_proj): RSign + scaled weights, y = sign(x + tau) (alpha sign(W))^T, no RPReLU, no
shortcut: exactly BiDM's BinaryLinear, which `reactnet_linear` builds.
"""

from __future__ import annotations

import numpy as np

from ..nn.conv import Padding, conv2d, conv2d_backward
from .bidm_layers import BIDM, BinaryLinear
from .quantizers import ApproxSign, ScaledSignWeights
from .shortcut import ScaledShortcut
from .switchable import SwitchableConv2d


def rprelu(r: np.ndarray, gamma: np.ndarray, beta: np.ndarray, zeta: np.ndarray) -> np.ndarray:
    """RPReLU per channel (axis 1): PReLU_beta(r - gamma) + zeta; r [N, O, ...], gamma/beta/zeta [O]."""
    shape = (1, -1) + (1,) * (r.ndim - 2)
    v = r - gamma.reshape(shape)                                                  # [N, O, ...]
    return np.where(v > 0, v, beta.reshape(shape) * v) + zeta.reshape(shape)      # [N, O, ...]


def rprelu_backward(
    dy: np.ndarray, r: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dr [N, O, ...], dgamma [O], dbeta [O], dzeta [O]) of rprelu."""
    shape = (1, -1) + (1,) * (r.ndim - 2)
    axes = (0, *range(2, r.ndim))
    v = r - gamma.reshape(shape)                                                  # [N, O, ...]
    dv = dy * np.where(v > 0, 1, beta.reshape(shape))                             # [N, O, ...]
    dbeta = np.sum(dy * np.minimum(v, 0), axis=axes)                              # [O]
    return dv, -dv.sum(axis=axes), dbeta, dy.sum(axis=axes)


class ReActNetConv2d(SwitchableConv2d, ScaledShortcut):
    """Params `weight`, `bias` (FP mode only), `tau` [C], `rprelu_gamma`, `rprelu_beta`, `rprelu_zeta` [O],
    `shortcut_scale`, [`shortcut.*`]."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng=rng)
        self.act = ApproxSign()
        self.weights = ScaledSignWeights()
        self.add_param("tau", np.zeros(in_channels, dtype=np.float32))
        self.add_param("rprelu_gamma", np.zeros(out_channels, dtype=np.float32))
        self.add_param("rprelu_beta", np.full(out_channels, 0.25, dtype=np.float32))
        self.add_param("rprelu_zeta", np.zeros(out_channels, dtype=np.float32))
        self.init_shortcut(in_channels, out_channels, stride, rng)

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        p = self.params
        u = x + p["tau"][:, None, None]                                           # [N, C, H, W]
        wb = self.weights(p["weight"])                                            # [O, C, kh, kw]
        z, cols = conv2d(self.act(u), wb, None, self.stride, self.padding)        # [N, O, Ho, Wo]
        sc, c_sc = self.shortcut_forward(x, z.shape)                              # [N, O, Ho, Wo]
        r = z + sc                                                                # [N, O, Ho, Wo]
        y = rprelu(r, p["rprelu_gamma"], p["rprelu_beta"], p["rprelu_zeta"])      # [N, O, Ho, Wo]
        return y, (x.shape, u, wb, cols, c_sc, r)

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x_shape, u, wb, cols, c_sc, r = cache
        p, g = self.params, self.grads
        dr, dgamma, dbeta, dzeta = rprelu_backward(dy, r, p["rprelu_gamma"], p["rprelu_beta"])  # [N, O, Ho, Wo], [O] x 3
        g["rprelu_gamma"] += dgamma                                               # [O]
        g["rprelu_beta"] += dbeta                                                 # [O]
        g["rprelu_zeta"] += dzeta                                                 # [O]
        dx = self.shortcut_backward(dr, c_sc)                                     # [N, C, H, W]
        dxb, dwb, _ = conv2d_backward(dr, cols, wb, x_shape, self.stride, self.padding)  # [N, C, H, W], [O, C, kh, kw]
        g["weight"] += self.weights.grad(p["weight"], dwb)                        # [O, C, kh, kw]
        du = self.act.grad(u, dxb)                                                # [N, C, H, W]
        g["tau"] += du.sum(axis=(0, 2, 3))                                        # [C]
        return dx + du                                                            # [N, C, H, W]


def reactnet_linear(in_features: int, out_features: int, *, rng: np.random.Generator) -> BinaryLinear:
    """ReActNet's binary linear: RSign (`tau`, ApproxSign) and alpha-scaled sign(W) — BiDM's BinaryLinear."""
    return BinaryLinear(in_features, out_features, rng=rng, options=BIDM)
