"""Base classes of every binary layer: the FP `weight` and `bias`, and the `binarize` switch.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel; I, O features for the linear layer.

A binary layer replaces an FP Conv2d / Linear of the teacher and keeps its parameters under the
same names with the same init (torch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in))), so a student
copies the teacher's `weight` and `bias`. `binarize` switches between
    True:   the subclass's binary_forward / binary_backward (`bias` unused: no bias in binary mode)
    False:  the FP layer itself, y = conv2d(x, W) + b  or  y = x W^T + b (the official code's "full" mode)
The cache records which path ran, so backward follows forward even if the switch is flipped between them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..nn.conv import Padding, as_padding, conv2d, conv2d_backward
from ..nn.init import uniform_fan_in
from ..nn.module import Module


class SwitchableConv2d(Module, ABC):
    """Params `weight` [O, C, kh, kw] and `bias` [O] first; subclasses add theirs after."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: Padding,
        *, rng: np.random.Generator,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, as_padding(padding)
        self.binarize = True
        fan_in = in_channels * kernel_size * kernel_size
        self.add_param("weight", uniform_fan_in(rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in))
        self.add_param("bias", uniform_fan_in(rng, (out_channels,), fan_in))

    @abstractmethod
    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, object]:
        """y [N, O, Ho, Wo] and the cache of the binary path."""

    @abstractmethod
    def binary_backward(self, dy: np.ndarray, cache: object) -> np.ndarray:
        """Accumulates the binary path's grads; returns dx [N, C, H, W]."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        if self.binarize:
            y, cache = self.binary_forward(x)                                     # [N, O, Ho, Wo]
            return y, ("binary", cache)
        y, cols = conv2d(x, self.params["weight"], self.params["bias"], self.stride, self.padding)  # [N, O, Ho, Wo]
        return y, ("full", (cols, x.shape))

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        mode, inner = cache
        if mode == "binary":
            return self.binary_backward(dy, inner)                                # [N, C, H, W]
        cols, x_shape = inner
        dx, dw, db = conv2d_backward(dy, cols, self.params["weight"], x_shape, self.stride, self.padding)
        self.grads["weight"] += dw                                                # [O, C, kh, kw]
        self.grads["bias"] += db                                                  # [O]
        return dx                                                                 # [N, C, H, W]


class SwitchableLinear(Module, ABC):
    """Params `weight` [O, I] and `bias` [O] first; subclasses add theirs after."""

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator) -> None:
        super().__init__()
        self.binarize = True
        self.add_param("weight", uniform_fan_in(rng, (out_features, in_features), in_features))
        self.add_param("bias", uniform_fan_in(rng, (out_features,), in_features))

    @abstractmethod
    def binary_forward(self, x: np.ndarray) -> tuple[np.ndarray, object]:
        """y [N, O] and the cache of the binary path."""

    @abstractmethod
    def binary_backward(self, dy: np.ndarray, cache: object) -> np.ndarray:
        """Accumulates the binary path's grads; returns dx [N, I]."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        w = self.params["weight"]                                                 # [O, I]
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: input {x.shape} does not fit weight {w.shape} (expects [N, {w.shape[1]}])"
            )
        if self.binarize:
            y, cache = self.binary_forward(x)                                     # [N, O]
            return y, ("binary", cache)
        return x @ w.T + self.params["bias"], ("full", x)                         # [N, O]

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        mode, inner = cache
        if mode == "binary":
            return self.binary_backward(dy, inner)                                # [N, I]
        self.grads["weight"] += dy.T @ inner                                      # [O, I]
        self.grads["bias"] += dy.sum(axis=0)                                      # [O]
        return dy @ self.params["weight"]                                         # [N, I]
