"""Fully connected layer y = x W^T + b, as torch.nn.Linear.

Dimensions: N batch, I input features, O output features. Weight layout (O, I).
"""

from __future__ import annotations

import numpy as np

from .init import uniform_fan_in
from .module import Module


class Linear(Module):
    """Params `weight` [O, I] and optional `bias` [O]; torch's default init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng: np.random.Generator) -> None:
        super().__init__()
        self.add_param("weight", uniform_fan_in(rng, (out_features, in_features), in_features))
        if bias:
            self.add_param("bias", uniform_fan_in(rng, (out_features,), in_features))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = self.params["weight"]                                            # [O, I]
        if x.ndim != 2 or x.shape[1] != weight.shape[1]:
            raise ValueError(f"Linear: input {x.shape} does not fit weight {weight.shape} (expects [N, {weight.shape[1]}])")
        y = x @ weight.T                                                          # [N, O]
        if "bias" in self.params:
            y = y + self.params["bias"]                                           # [N, O]
        return y, x

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        self.grads["weight"] += dy.T @ x                                          # [O, I]
        if "bias" in self.params:
            self.grads["bias"] += dy.sum(axis=0)                                  # [O]
        return dy @ self.params["weight"]                                         # [N, I]
