"""Inverted dropout: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p), drawn from the caller's Generator.

Shapes: any; the mask has the shape of x. With `rng=None` (evaluation) it is the identity.
"""

from __future__ import annotations

import numpy as np

from .module import Module


class Dropout(Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if rng is None or self.p == 0.0:
            return x, None
        scale = (rng.random(x.shape) >= self.p).astype(x.dtype) / (1.0 - self.p)  # [...]
        return x * scale, scale

    def backward(self, dy: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
        return dy if scale is None else dy * scale                                # [...]
