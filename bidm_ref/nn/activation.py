"""Pointwise activations. Shapes: any; y has the shape of x.

SiLU (swish): y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) with s = sigmoid(x).
"""

from __future__ import annotations

import numpy as np

from .module import Module


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large |x|)."""
    e = np.exp(-np.abs(x))                                                        # [...]
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


class SiLU(Module):
    """x * sigmoid(x), ddim's `nonlinearity`."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        s = sigmoid(x)                                                            # [...]
        return x * s, (x, s)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, s = cache
        return dy * (s + x * s * (1 - s))                                         # [...]
