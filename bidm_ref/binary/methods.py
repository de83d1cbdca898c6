"""The binarization methods by name, and the LayerFactory that builds their layers.

Each method gives a binary conv and a binary linear class; `BinaryLayers(method)` is the
LayerFactory the UNet builds its body layers with (docs/METHOD.md §2 lists which layers).
Methods whose layers have parameters over the output's spatial size (XNOR++) read the
resolution given by `at(resolution)`. `LayerVariant` holds the two official-code choices a
BinaryConv2d method (bidm, xnor, xnor_k) can take instead of this project's (docs/METHOD.md §11,
items 1 and 5): the Downsample conv's padding and the scaled FP shortcut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..nn.conv import Padding
from ..nn.module import Module
from .bidm_layers import BIDM, XNOR, XNOR_LEARN_K, BinaryConv2d, BinaryLinear, ScaledBinaryOptions
from .dorefa import DoReFaConv2d, DoReFaLinear
from .reactnet import ReActNetConv2d, reactnet_linear
from .reste import ReSTEConv2d, ReSTELinear
from .variant import DEFAULT_VARIANT, LayerVariant
from .xnorpp import XnorPPConv2d, XnorPPLinear


@dataclass(frozen=True)
class Method:
    """conv(cin, cout, k, stride, pad, resolution, rng) and linear(fin, fout, rng) constructors."""

    conv: Callable[..., Module]
    linear: Callable[..., Module]
    description: str


def variant_options(options: ScaledBinaryOptions, variant: LayerVariant, padding: Padding) -> ScaledBinaryOptions:
    """A BinaryConv2d's options under `variant`; the official padding applies to an explicit (top, bottom, left,
    right) pad, which in ddim's UNet only the Downsample conv has (its F.pad)."""
    official_pad = variant.downsample_pad == "official" and isinstance(padding, tuple)
    return replace(options, fp_shortcut=variant.fp_shortcut, pad_before_sign=official_pad)


def scaled(options: ScaledBinaryOptions, description: str) -> Method:
    return Method(
        conv=lambda cin, cout, k, stride, pad, resolution, rng, variant=DEFAULT_VARIANT: BinaryConv2d(
            cin, cout, k, stride, pad, rng=rng, options=variant_options(options, variant, pad)),
        linear=lambda fin, fout, rng: BinaryLinear(fin, fout, rng=rng, options=options),
        description=description,
    )


METHODS: dict[str, Method] = {
    "bidm": scaled(BIDM, "BiDM: learnable K filter, learnable threshold, ApproxSign, scaled FP shortcut"),
    "xnor": scaled(XNOR, "XNOR-Net (Vanilla): fixed K = 1/(kh*kw), no threshold, clipped STE"),
    "xnor_k": scaled(XNOR_LEARN_K, "Vanilla + learnable k (BiDM ablation)"),
    "xnorpp": Method(
        conv=lambda cin, cout, k, stride, pad, resolution, rng: XnorPPConv2d(
            cin, cout, k, stride, pad, rng=rng, resolution=resolution
        ),
        linear=lambda fin, fout, rng: XnorPPLinear(fin, fout, rng=rng),
        description="XNOR-Net++: learned output scale Gamma = a (x) b (x) c over (O, Ho, Wo), clipped STE",
    ),
    "dorefa": Method(
        conv=lambda cin, cout, k, stride, pad, resolution, rng: DoReFaConv2d(cin, cout, k, stride, pad, rng=rng),
        linear=lambda fin, fout, rng: DoReFaLinear(fin, fout, rng=rng),
        description="DoReFa-Net 1 bit: sign(W) * mean|W| per layer with identity STE, sign(x) with clipped STE",
    ),
    "reactnet": Method(
        conv=lambda cin, cout, k, stride, pad, resolution, rng: ReActNetConv2d(cin, cout, k, stride, pad, rng=rng),
        linear=lambda fin, fout, rng: reactnet_linear(fin, fout, rng=rng),
        description="ReActNet: RSign (threshold, ApproxSign), mean|W| per channel, scaled FP shortcut, RPReLU",
    ),
    "reste": Method(
        conv=lambda cin, cout, k, stride, pad, resolution, rng: ReSTEConv2d(cin, cout, k, stride, pad, rng=rng),
        linear=lambda fin, fout, rng: ReSTELinear(fin, fout, rng=rng),
        description="ReSTE: sign forward, power-function backward with o annealed 1 -> 3 (set_progress), mean|W| per layer",
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown binarization method {name!r}: choose one of {sorted(METHODS)}")
    return METHODS[name]


SCALED = ("bidm", "xnor", "xnor_k")  # the methods built from BinaryConv2d, which take a LayerVariant


class BinaryLayers:
    """LayerFactory building `method`'s binary layers (in `variant`) at a given input resolution."""

    def __init__(self, method: str, resolution: int = 0, variant: LayerVariant = DEFAULT_VARIANT) -> None:
        self.method_name = method
        self.method = get_method(method)
        self.resolution = resolution
        self.variant = variant
        if variant != DEFAULT_VARIANT and method not in SCALED:
            changed = {k: v for k, v in asdict(variant).items() if getattr(DEFAULT_VARIANT, k) != v}
            raise ValueError(f"{changed} is an option of the methods {', '.join(SCALED)}, not of {method!r}: "
                             "drop it or pick one of those")

    def at(self, resolution: int) -> BinaryLayers:
        return BinaryLayers(self.method_name, resolution, self.variant)

    def conv(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> Module:
        if self.method_name in SCALED:
            return self.method.conv(in_channels, out_channels, kernel_size, stride, padding, self.resolution, rng,
                                    self.variant)
        return self.method.conv(in_channels, out_channels, kernel_size, stride, padding, self.resolution, rng)

    def linear(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> Module:
        return self.method.linear(in_features, out_features, rng)


def binary_layers(model: Module) -> list[tuple[str, Module]]:
    """(dotted name, layer) of every binary layer in `model` (those with a `binarize` switch)."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "binarize")]


def set_binarize(model: Module, on: bool) -> None:
    """Switch every binary layer between binary and full-precision ("full" mode of the official code)."""
    for _, layer in binary_layers(model):
        layer.binarize = on


def init_from_weights(model: Module) -> None:
    """Let layers whose init depends on their weights (XNOR++'s Gamma) re-derive it after a teacher load."""
    for _, layer in model.named_modules():
        if hasattr(layer, "init_from_weights"):
            layer.init_from_weights()


def set_progress(model: Module, fraction: float) -> None:
    """Tell annealed binarizers (ReSTE's exponent o) how far training is, in [0, 1]."""
    for _, layer in model.named_modules():
        if hasattr(layer, "set_progress"):
            layer.set_progress(fraction)
