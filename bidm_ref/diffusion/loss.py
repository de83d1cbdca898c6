"""The eps-prediction training loss (ddim's `noise_estimation_loss`).

Dimensions: N batch, C, H, W image.

    t   : ddim's antithetic draw: t_1..t_{N//2+1} ~ U{0..T-1}, then T-1-t appended, first N kept
          (every t is marginally uniform; pairs reduce the variance)
    x_t = q_sample(x0, t, eps)
    L   = mean_n sum_{c,h,w} (eps - eps_theta(x_t, t))^2          dL/d eps_theta = -2 (eps - eps_theta) / N
"""

from __future__ import annotations

import numpy as np


def draw_timesteps(rng: np.random.Generator, n: int, num_timesteps: int) -> np.ndarray:
    """ddim's antithetic timestep draw, [n] int64."""
    t = rng.integers(0, num_timesteps, size=n // 2 + 1)                          # [n//2+1]
    return np.concatenate([t, num_timesteps - t - 1])[:n]                         # [n]


def noise_loss(eps: np.ndarray, eps_pred: np.ndarray) -> tuple[float, np.ndarray]:
    """L = mean_n sum_chw (eps - eps_pred)^2 (float64 scalar) and dL/d eps_pred [N, C, H, W]."""
    diff = eps_pred - eps                                                         # [N, C, H, W]
    n = eps.shape[0]
    loss = float(np.sum(diff.astype(np.float64) ** 2) / n)
    return loss, (2.0 / n) * diff                                                 # [N, C, H, W]
