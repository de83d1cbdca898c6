"""The DDPM noise schedule (Ho et al. 2020) as ddim uses it: linear betas, computed in float64.

Dimensions: T diffusion steps, N batch.

    beta_t      = linspace(beta_start, beta_end, T)[t]
    alpha_bar_t = prod_{s <= t} (1 - beta_s)
    q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
    alpha_bar(-1) = 1 (ddim's compute_alpha pads a zero beta in front; "before step 0")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduleConfig:
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000


class Schedule:
    """betas [T] and alpha_bar with the index -1 meaning 'before the first step' (= 1)."""

    def __init__(self, cfg: ScheduleConfig = ScheduleConfig()) -> None:
        self.cfg = cfg
        self.T = cfg.num_timesteps
        self.betas = np.linspace(cfg.beta_start, cfg.beta_end, cfg.num_timesteps, dtype=np.float64)  # [T]
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)                        # [T]

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at integer step t in [-1, T-1]; t = -1 gives 1.0."""
        if not -1 <= t < self.T:
            raise ValueError(f"timestep {t} outside [-1, {self.T - 1}]")
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def q_sample(self, x0: np.ndarray, t: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, per image; x0, eps [N, C, H, W], t [N]; keeps x0's dtype."""
        a = self.alphas_cumprod[t][:, None, None, None]                           # [N, 1, 1, 1]
        return (np.sqrt(a) * x0 + np.sqrt(1.0 - a) * eps).astype(x0.dtype)        # [N, C, H, W]
