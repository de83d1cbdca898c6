"""Inference-only binary layers on packed bits: the popcount twins of BinaryConv2d / BinaryLinear.

Dimensions: N batch, C input channels (I features), O output channels, H, W input and Ho, Wo output
spatial, kh, kw kernel, Wd = ceil(C / 64) packed words.

PackedConv2d computes BinaryConv2d's binary-mode output (bidm_layers.py, docs/METHOD.md §3) in one compiled
call (layer_kernels.packed_conv_layer):
    A   = mean_c |x|                                  [N, H, W]
    K   = conv2d(A, k_weight) + k_bias                [N, Ho, Wo]      XNOR: k_weight = 1/(kh*kw), no k_bias
    y   = float32(acc) * alpha[o] * K + s * sc        [N, O, Ho, Wo]   acc = the +-1 conv of sign(x + tau) and
                                                                        sign(W), by popcounts (kernels.py)
sc = shortcut(x) is shortcut.py's FP path before its scale s, the 1x1 conv as one batched matmul (raw_shortcut),
with sign(W) packed as uint64 words and alpha [O] = mean |W| per output channel (bitpack.PackedConvWeight).
PackedLinear: y = float32(acc) * alpha [N, O], acc the +-1 product of sign(x + tau) and sign(W) (packed_linear_layer).

Agreement with the float layers: u = x + tau is the same float addition in both (the input's dtype), so
the signs are the same (sign(0) = +1); the accumulator is the +-1 conv exactly; only the float32 products
differ (the float layer sums +-alpha terms in BLAS order, the packed one scales the exact integer once).
The outputs agree to float32 rounding.

Parameters carry the float layers' names, so a student's parameters load by name:
    conv    [`tau`] [C], [`k_weight`] [1, 1, kh, kw], [`k_bias`] [1], `shortcut_scale` [1], [`shortcut.*`]
    linear  [`tau`] [I]
The latent float `weight` and `bias` (LATENT_PARAMS) are replaced by the packed words and alpha, given
with `set_packed(words, alpha)`; `forward` refuses to run before. The layers have no backward: they
run an exported student (loading/packed.py). Only the methods whose layers are BinaryConv2d /
BinaryLinear pack this way (PACKABLE: bidm, xnor, xnor_k).
"""

from __future__ import annotations

import numpy as np

from ..nn.conv import Padding, as_padding
from ..nn.module import Module
from .bidm_layers import BIDM, XNOR, XNOR_LEARN_K, BinaryConv2d, BinaryLinear, ScaledBinaryOptions
from .bitpack import (
    PackedConvWeight,
    PackedLinearWeight,
    num_words,
    pack_conv_weight,
    pack_linear_weight,
)
from .layer_kernels import packed_conv_layer, packed_linear_layer
from .shortcut import ScaledShortcut

PACKABLE: dict[str, ScaledBinaryOptions] = {"bidm": BIDM, "xnor": XNOR, "xnor_k": XNOR_LEARN_K}
LATENT_PARAMS = ("weight", "bias")


def packable_options(method: str) -> ScaledBinaryOptions:
    """The layer options of a packable method; a one-line error naming the supported methods otherwise."""
    if method not in PACKABLE:
        raise ValueError(
            f"method {method!r} cannot be packed: packed inference supports {', '.join(PACKABLE)} "
            "(the sign(x + tau) * alpha sign(W) * K layers); sample that student with its float checkpoint"
        )
    return PACKABLE[method]


def pack_binary_layer(layer: BinaryConv2d | BinaryLinear) -> PackedConvWeight | PackedLinearWeight:
    """sign(W) as words and alpha = mean |W| per output channel, as the float layer's binary mode computes them."""
    w = layer.params["weight"]                                                    # [O, C, kh, kw] / [O, I]
    alpha = layer.weights.scale(w).reshape(-1)                                    # [O]
    if isinstance(layer, BinaryConv2d):
        return pack_conv_weight(w, alpha)
    if isinstance(layer, BinaryLinear):
        return pack_linear_weight(w, alpha)
    raise ValueError(
        f"{type(layer).__name__} cannot be packed: only BinaryConv2d / BinaryLinear layers "
        f"(methods {', '.join(PACKABLE)}) have packed twins"
    )


def check_words_fit(layer: str, words: np.ndarray, expected: tuple[int, ...], layout: str, sizes: str) -> None:
    """One-line error when packed words do not have the shape `layer` expects (`layout` names the axes)."""
    if words.shape != expected:
        raise ValueError(
            f"{layer}: words {list(words.shape)} do not fit this layer's {layout} = {list(expected)} "
            f"({sizes}): packed for another model config"
        )


class InferenceOnly:
    """Mixin: the packed layers have no gradient (1-bit weights, no latent weight to update)."""

    def packed_weight(self):
        """The packed weight given by set_packed; refuses to run without one."""
        if self.packed is None:
            raise RuntimeError(f"{type(self).__name__} has no packed weight yet: load a packed checkpoint (set_packed)")
        return self.packed

    def backward(self, dy: np.ndarray, cache: object) -> np.ndarray:
        raise RuntimeError(
            f"{type(self).__name__} is inference-only (packed 1-bit weights have no gradient): train the "
            "float student (BinaryConv2d / BinaryLinear) and export it with `cli.py export`"
        )


class PackedConv2d(InferenceOnly, ScaledShortcut, Module):
    """Params [`tau`], [`k_weight`, `k_bias`], `shortcut_scale`, [`shortcut.*`]; packed weight via set_packed."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator, options: ScaledBinaryOptions = BIDM,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, as_padding(padding)
        self.options = options
        self.packed: PackedConvWeight | None = None
        self.init_scale_params(in_channels, out_channels, stride, rng)

    # BinaryConv2d's parameter set and K map, reused as they are (they read kernel_size, stride, padding,
    # options and params only), so both layers hold the same parameters and compute the same K
    init_scale_params = BinaryConv2d.init_scale_params
    xnor_k_filter = BinaryConv2d.xnor_k_filter
    k_filter = BinaryConv2d.k_filter

    def set_packed(self, words: np.ndarray, alpha: np.ndarray) -> None:
        """Take sign(W) words [O, kh, kw, Wd] uint64 and alpha [O] float32; one-line error if they do not fit."""
        expected = (self.out_channels, self.kernel_size, self.kernel_size, num_words(self.in_channels))
        check_words_fit("PackedConv2d", words, expected, "[O, kh, kw, Wd]",
                        f"{self.in_channels} -> {self.out_channels} channels")
        self.packed = PackedConvWeight(words, self.in_channels, alpha)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        packed = self.packed_weight()
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.dtype != np.float32:
            raise ValueError(f"PackedConv2d: input {x.dtype} {list(x.shape)} is not NCHW [N, {self.in_channels}, H, W] "
                             "float32: cast it (packed inference runs in float32)")
        tau = self.params["tau"] if "tau" in self.params else np.zeros(self.in_channels, dtype=np.float32)  # [C]
        k_weight, k_bias = self.k_filter(np.float32)                             # [1, 1, kh, kw], [1] or None
        k_bias = 0.0 if k_bias is None else k_bias[0]
        y = packed_conv_layer(x, tau, packed, self.stride, self.padding, k_weight[0, 0], k_bias,
                              self.params["shortcut_scale"][0], self.raw_shortcut(x))  # [N, O, Ho, Wo]
        return y, None

    def raw_shortcut(self, x: np.ndarray) -> np.ndarray:
        """shortcut(x) before its scale (shortcut.py; the 1x1 conv is conv.py's batched pointwise matmul):
        [N, O, Ho, Wo]."""
        if self.shortcut is None:
            return self.parameter_free_shortcut(x)                                # [N, C, Ho, Wo]
        return self.shortcut.forward(x)[0]                                        # [N, O, Ho, Wo]


class PackedLinear(InferenceOnly, Module):
    """Param [`tau`] [I]; packed weight via set_packed."""

    def __init__(self, in_features: int, out_features: int, *, options: ScaledBinaryOptions = BIDM) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.options = options
        self.packed: PackedLinearWeight | None = None
        if options.learn_tau:
            self.add_param("tau", np.zeros(in_features, dtype=np.float32))

    def set_packed(self, words: np.ndarray, alpha: np.ndarray) -> None:
        """Take sign(W) words [O, Wd] uint64 and alpha [O] float32; one-line error if they do not fit."""
        expected = (self.out_features, num_words(self.in_features))
        check_words_fit("PackedLinear", words, expected, "[O, Wd]", f"{self.in_features} -> {self.out_features} features")
        self.packed = PackedLinearWeight(words, self.in_features, alpha)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        tau = self.params["tau"] if "tau" in self.params else np.zeros(self.in_features, dtype=np.float32)  # [I]
        return packed_linear_layer(x, tau, self.packed_weight()), None            # [N, O]


class PackedLayers:
    """LayerFactory of packed layers with `options` (empty until set_packed), for loading a packed UNet."""

    def __init__(self, options: ScaledBinaryOptions) -> None:
        self.options = options

    def at(self, resolution: int) -> PackedLayers:
        return self

    def conv(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> Module:
        return PackedConv2d(in_channels, out_channels, kernel_size, stride, padding, rng=rng, options=self.options)

    def linear(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> Module:
        return PackedLinear(in_features, out_features, options=self.options)


def packed_layers(model: Module) -> list[tuple[str, PackedConv2d | PackedLinear]]:
    """(dotted name, layer) of every packed layer in `model`, in named_modules order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (PackedConv2d, PackedLinear))]
