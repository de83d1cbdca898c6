"""The denoising training objective of the FP model (ddim's `noise_estimation_loss`, see loss.py).

Dimensions: B batch, C, H, W image.
"""

from __future__ import annotations

import numpy as np

from ..nn.module import Module
from .loss import draw_timesteps, noise_loss
from .schedule import Schedule


class DenoisingObjective:
    """step(x0, rng): draw t and eps, forward at x_t, backward of the eps loss into the model's grads."""

    def __init__(self, model: Module, schedule: Schedule) -> None:
        self.model = model
        self.schedule = schedule

    def step(self, x0: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        t = draw_timesteps(rng, x0.shape[0], self.schedule.T)                     # [B]
        eps = rng.standard_normal(x0.shape).astype(x0.dtype)                      # [B, C, H, W]
        x_t = self.schedule.q_sample(x0, t, eps)                                  # [B, C, H, W]
        eps_pred, cache = self.model.forward(x_t, t, rng)                         # [B, C, H, W]
        loss, d_pred = noise_loss(eps, eps_pred)                                  # [B, C, H, W]
        self.model.backward(d_pred, cache)
        return {"loss": loss}
