"""BiDM's binary convolution and linear layer (docs/METHOD.md §3), and XNOR-Net as its fixed-k special case.

This is the learnable activation binarizer half of TBS (paper §3.2); the other half, the cross-timestep
connection, is bidm/tbs.py (docs/METHOD.md §5).

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

Binary conv (Zheng et al. 2024, §3.2 "learnable k"; official code `BNNConv2d`):
    A     = mean_c |x|                                   [N, 1, H, W]
    K     = conv2d(A, k_weight) + k_bias                 [N, 1, Ho, Wo]  same kernel/stride/pad as the layer
    u     = x + tau                                      [N, C, H, W]    tau: per-input-channel threshold
    z     = conv2d(sign(u), alpha * sign(W))             [N, O, Ho, Wo]  alpha [O] = mean |W| per output channel
    y     = z * K + s * shortcut(x)                      [N, O, Ho, Wo]
s * shortcut(x) is the FP path of shortcut.py (identity, 2x2 average pool for stride 2, FP 1x1 conv
`shortcut` when C != O; s = `shortcut_scale` starts at 0, the CIFAR code). k_weight starts at
1/(kh*kw) (XNOR-Net's K), k_bias at 0 (the official code leaves torch's random bias; we start exactly at XNOR's K).

Backward, line by line (STE: sign' is replaced by the quantizers' pseudo-gradients):
    dz = dy * K;  dK = sum_o dy * z;  ds = sum dy * shortcut(x)
    d sign(u), dWb = conv2d_backward(dz);  du = act.grad(u, d sign(u));  dtau = sum_{n,h,w} du
    dW = weights.grad(W, dWb)   (clipped STE; alpha is a constant)
    dA, dk_weight, dk_bias = conv2d_backward(dK);  dx = du + sign(x) dA / C + shortcut'(s dy)

Variants (one class, flags): BiDM = learnable k, learnable tau, ApproxSign; XNOR-Net ("Vanilla")
= k fixed at 1/(kh*kw), tau = 0, clipped STE; "Vanilla + learnable k" = learnable k only.
Two more flags follow the official code where this project departs from it (docs/METHOD.md §11):
fp_shortcut = False drops the s * shortcut(x) term (plain XNOR-Net, item 5); pad_before_sign = True
zero-pads x before the binarizer and convolves without padding (the official Downsample: F.pad, then
BNNConv2d; item 1), so a padded tap is sign(0 + tau), ApproxSign'(tau) reaches tau there, and the
conv output is y = conv2d(sign(pad(x) + tau), alpha sign(W)) * K + s * shortcut(x), with K and the
average-pool shortcut as before (mean |0| = 0 pads A alike; the pool floors the padded row away).
With `binarize = False` the layer is the FP layer it replaced, y = conv(x, W) + b (the official
code's "full" mode, switchable.py); `bias` is kept for that mode and unused when binarized.

Binary linear (temb_proj): y = sign(x + tau) (alpha * sign(W))^T, per-row alpha, no K, no shortcut,
no bias. The official code's forward uses sign(x) without tau while its backward uses x + tau; we
use sign(x + tau) in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..nn.conv import Padding, conv2d, conv2d_backward
from ..nn.padding import as_padding
from .quantizers import ApproxSign, ClippedSign, ScaledSignWeights
from .shortcut import ScaledShortcut
from .switchable import SwitchableConv2d, SwitchableLinear


@dataclass(frozen=True)
class ScaledBinaryOptions:
    """Which parts of the §1 conv are learnable; see the module docstring for the named variants."""

    learn_k: bool = True
    learn_tau: bool = True
    approx_sign: bool = True
    fp_shortcut: bool = True
    pad_before_sign: bool = False


BIDM = ScaledBinaryOptions()
XNOR = ScaledBinaryOptions(learn_k=False, learn_tau=False, approx_sign=False)
XNOR_LEARN_K = ScaledBinaryOptions(learn_k=True, learn_tau=False, approx_sign=False)


class BinaryConv2d(SwitchableConv2d, ScaledShortcut):
    """Params `weight`, `bias` (FP mode only), [`tau`], [`k_weight`, `k_bias`], `shortcut_scale`, [`shortcut.*`]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: Padding,
        *,
        rng: np.random.Generator,
        options: ScaledBinaryOptions = BIDM,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng=rng)
        self.options = options
        self.act = ApproxSign() if options.approx_sign else ClippedSign()
        self.weights = ScaledSignWeights()
        self.init_scale_params(in_channels, out_channels, stride, rng)

    def init_scale_params(self, in_channels: int, out_channels: int, stride: int, rng: np.random.Generator) -> None:
        """Register [`tau`] [C], [`k_weight`] [1, 1, kh, kw] and [`k_bias`] [1] per `options`, and [the shortcut]."""
        if self.options.learn_tau:
            self.add_param("tau", np.zeros(in_channels, dtype=np.float32))
        if self.options.learn_k:
            self.add_param("k_weight", self.xnor_k_filter(np.float32))
            self.add_param("k_bias", np.zeros(1, dtype=np.float32))
        if self.options.fp_shortcut:
            self.init_shortcut(in_channels, out_channels, stride, rng)

    def xnor_k_filter(self, dtype: np.dtype) -> np.ndarray:
        """XNOR-Net's fixed K filter: 1/(kh*kw) everywhere, [1, 1, kh, kw]."""
        return np.full((1, 1, self.kernel_size, self.kernel_size), 1.0 / self.kernel_size**2, dtype=dtype)

    def k_filter(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
        """(k_weight [1, 1, kh, kw], k_bias [1] or None) in `dtype`."""
        if self.options.learn_k:
            return self.params["k_weight"], self.params["k_bias"]
        return self.xnor_k_filter(dtype), None

    def k_map(self, x: np.ndarray, padding: Padding | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(K = conv2d(mean_c |x|, k_weight) + k_bias [N, 1, Ho, Wo], the im2col columns of mean_c |x|);
        padding: the layer's unless given."""
        a = np.abs(x).mean(axis=1, keepdims=True)                                 # [N, 1, H, W]
        k_weight, k_bias = self.k_filter(x.dtype)
        return conv2d(a, k_weight, k_bias, self.stride, self.padding if padding is None else padding)  # [N, 1, Ho, Wo]

    def sign_input(self, x: np.ndarray) -> tuple[np.ndarray, Padding]:
        """(what the binarizer sees, the padding its conv still applies): x and the layer's padding, or with
        pad_before_sign x zero-padded [N, C, H + top + bottom, W + left + right] and no padding."""
        if not self.options.pad_before_sign:
            return x, self.padding
        top, bottom, left, right = as_padding(self.padding)
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))), 0       # [N, C, Hp, Wp]

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        w = self.params["weight"]                                                 # [O, C, kh, kw]
        C = x.shape[1]
        xs, padding = self.sign_input(x)                                          # [N, C, Hp, Wp]
        k_map, cols_a = self.k_map(xs, padding)                                   # [N, 1, Ho, Wo]
        u = xs + self.params["tau"][:, None, None] if self.options.learn_tau else xs  # [N, C, Hp, Wp]
        wb = self.weights(w)                                                      # [O, C, kh, kw]
        z, cols_b = conv2d(self.act(u), wb, None, self.stride, padding)           # [N, O, Ho, Wo]
        y = z * k_map                                                             # [N, O, Ho, Wo]
        c_sc = None
        if self.options.fp_shortcut:
            sc, c_sc = self.shortcut_forward(x, z.shape)                          # [N, O, Ho, Wo]
            y = y + sc                                                            # [N, O, Ho, Wo]
        return y, (x, xs, padding, u, wb, z, k_map, cols_a, cols_b, c_sc, C)

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        w = self.params["weight"]                                                 # [O, C, kh, kw]
        x, xs, padding, u, wb, z, k_map, cols_a, cols_b, c_sc, C = cache
        dz = dy * k_map                                                           # [N, O, Ho, Wo]
        dk_map = np.sum(dy * z, axis=1, keepdims=True)                            # [N, 1, Ho, Wo]
        dxb, dwb, _ = conv2d_backward(dz, cols_b, wb, xs.shape, self.stride, padding)  # [N, C, Hp, Wp], [O, C, kh, kw]
        self.grads["weight"] += self.weights.grad(w, dwb)                         # [O, C, kh, kw]
        du = self.act.grad(u, dxb)                                                # [N, C, H, W]
        if self.options.learn_tau:
            self.grads["tau"] += du.sum(axis=(0, 2, 3))                           # [C]
        k_weight, _ = self.k_filter(x.dtype)
        da, dkw, dkb = conv2d_backward(dk_map, cols_a, k_weight, (xs.shape[0], 1, *xs.shape[2:]), self.stride, padding)
        if self.options.learn_k:
            self.grads["k_weight"] += dkw                                         # [1, 1, kh, kw]
            self.grads["k_bias"] += dkb                                           # [1]
        top, left = (0, 0) if xs is x else as_padding(self.padding)[::2]
        crop = np.s_[:, :, top:top + x.shape[2], left:left + x.shape[3]]          # the taps of x within xs
        dx = self.shortcut_backward(dy, c_sc) if self.options.fp_shortcut else np.zeros_like(x)  # [N, C, H, W]
        return dx + du[crop] + (np.sign(xs) * da / C)[crop]                       # [N, C, H, W]


class BinaryLinear(SwitchableLinear):
    """Params `weight` [O, I], `bias` (FP mode only), [`tau`] [I]."""

    def __init__(
        self, in_features: int, out_features: int, *, rng: np.random.Generator, options: ScaledBinaryOptions = BIDM
    ) -> None:
        super().__init__(in_features, out_features, rng=rng)
        self.options = options
        self.act = ApproxSign() if options.approx_sign else ClippedSign()
        self.weights = ScaledSignWeights()
        if options.learn_tau:
            self.add_param("tau", np.zeros(in_features, dtype=np.float32))

    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        u = x + self.params["tau"] if self.options.learn_tau else x               # [N, I]
        xb, wb = self.act(u), self.weights(self.params["weight"])                 # [N, I], [O, I]
        return xb @ wb.T, (u, xb, wb)                                             # [N, O]

    def binary_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        u, xb, wb = cache
        self.grads["weight"] += self.weights.grad(self.params["weight"], dy.T @ xb)  # [O, I]
        du = self.act.grad(u, dy @ wb)                                            # [N, I]
        if self.options.learn_tau:
            self.grads["tau"] += du.sum(axis=0)                                   # [I]
        return du                                                                 # [N, I]
