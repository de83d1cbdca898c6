"""Which class builds a block's *body* layers: the convs and linears a binarized model replaces.

ddim's blocks have body layers (ResnetBlock conv1/conv2/temb_proj, AttnBlock q/k/v/proj_out,
Up/Downsample convs) and layers that stay full precision in every model (norms, shortcuts,
conv_in/out, the timestep MLP). The blocks in nn/ build their body layers through a
LayerFactory, so models/ can swap in binary layers without nn/ knowing about binarization.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .conv import Conv2d, Padding
from .linear import Linear
from .module import Module


class LayerFactory(Protocol):
    """`at(resolution)` returns the factory for layers whose input is resolution x resolution
    (some binarizers, e.g. XNOR++, have parameters over the output's spatial size)."""

    def at(self, resolution: int) -> LayerFactory: ...

    def conv(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> Module: ...

    def linear(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> Module: ...


class DenseLayers:
    """The full-precision factory: Conv2d and Linear with bias, as ddim."""

    def at(self, resolution: int) -> DenseLayers:
        return self

    def conv(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> Module:
        return Conv2d(in_channels, out_channels, kernel_size, stride, padding, rng=rng)

    def linear(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> Module:
        return Linear(in_features, out_features, rng=rng)


DENSE = DenseLayers()
