"""Group normalization (Wu & He 2018), as torch.nn.GroupNorm (ddim: 32 groups, eps 1e-6, affine).

Dimensions: N batch, C channels, H, W spatial, G groups, M = (C/G)*H*W elements per group.

    mu, var = mean and biased variance of x over each (n, group)
    xhat    = (x - mu) / sqrt(var + eps)
    y       = gamma[c] * xhat + beta[c]

Backward (per group, with g = dy * gamma):
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
"""

from __future__ import annotations

import numpy as np

from .module import Module


class GroupNorm(Module):
    """Params `weight` (gamma) [C] init 1 and `bias` (beta) [C] init 0 when affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: {num_channels} channels cannot be split into {num_groups} groups; "
                "use a channel count divisible by the group count"
            )
        self.num_groups = num_groups
        self.eps = eps
        if affine:
            self.add_param("weight", np.ones(num_channels, dtype=np.float32))
            self.add_param("bias", np.zeros(num_channels, dtype=np.float32))
        self.num_channels = num_channels

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        N, C, H, W = x.shape
        if C != self.num_channels:
            raise ValueError(f"GroupNorm: expected {self.num_channels} channels, got input {x.shape}")
        G = self.num_groups
        xg = x.reshape(N, G, -1)                                                  # [N, G, M]
        mu = xg.mean(axis=2, keepdims=True)                                       # [N, G, 1]
        var = xg.var(axis=2, keepdims=True)                                       # [N, G, 1]
        inv_std = 1.0 / np.sqrt(var + self.eps)                                   # [N, G, 1]
        xhat = ((xg - mu) * inv_std).reshape(N, C, H, W)                          # [N, C, H, W]
        y = xhat
        if self.params:
            y = xhat * self.params["weight"][:, None, None] + self.params["bias"][:, None, None]  # [N, C, H, W]
        return y, (xhat, inv_std)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        xhat, inv_std = cache
        N, C, H, W = dy.shape
        g = dy                                                                    # [N, C, H, W]
        if self.params:
            self.grads["weight"] += (dy * xhat).sum(axis=(0, 2, 3))               # [C]
            self.grads["bias"] += dy.sum(axis=(0, 2, 3))                          # [C]
            g = dy * self.params["weight"][:, None, None]                         # [N, C, H, W]
        gg = g.reshape(N, self.num_groups, -1)                                    # [N, G, M]
        xg = xhat.reshape(N, self.num_groups, -1)                                 # [N, G, M]
        dxg = (gg - gg.mean(axis=2, keepdims=True) - xg * (gg * xg).mean(axis=2, keepdims=True)) * inv_std  # [N, G, M]
        return dxg.reshape(N, C, H, W)                                            # [N, C, H, W]
