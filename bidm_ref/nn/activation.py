"""Pointwise activations. Shapes: any; y has the shape of x.

SiLU (swish): y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) with s = sigmoid(x).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .module import Module


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + exp(-x)), without overflow for large |x| (scipy's expit), in x's dtype."""
    return expit(x)


class SiLU(Module):
    """x * sigmoid(x), ddim's `nonlinearity`."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        s = sigmoid(x)                                                            # [...]
        return x * s, (x, s)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, s = cache
        return dy * (s + x * s * (1 - s))                                         # [...]
