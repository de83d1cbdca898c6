"""The BiDM training step (docs/METHOD.md §5.2, §7): three forward passes, one backward.

Dimensions: B batch, C, H, W image; F_b the output of unit b.

    t ~ ddim's antithetic draw, eps ~ N(0, I); t' = min(t + gap, T - 1)       (gap: --tbs-train-gap)
    1. cache   : student at x_t' = q_sample(x0, t', eps), TBS off -> connected units' outputs   (no backward)
    2. teacher : FP teacher at (x_t, t)                            -> F_hat_b for every unit     (no backward)
    3. student : at (x_t, t) with the cache                        -> eps_pred, F_b (after TBS mixing)
    L = mean_B sum_CHW (eps - eps_pred)^2 + lambda * D(F, F_hat)     D: SPD, L2 or none
lambda (distill_lambda, for SPD or L2) is 4, the paper's value for its mean over blocks. The official code's 1e-2 leaves the
SPD term at ~0.01 next to a summed noise loss of ~60 on the tiny preset, where it can hardly act; a
600-step sweep on the shipped tiny teacher (results/README.md, "SPD weight") could not tell 1e-2, 0.1, 1
and 4 apart by a validation FD-clf, while at 4 the SPD loss fell to 0.58 (0.97 at 1e-2) with the same
noise loss.
Only pass 3 is backpropagated, into the student's weights, thresholds, K filters, shortcut
scales and the TBS table a. Without TBS (0 connections) pass 1 is skipped; without distillation
pass 2 is skipped.
"""

from __future__ import annotations

import numpy as np

from ..diffusion.loss import draw_timesteps, noise_loss
from ..diffusion.schedule import Schedule
from ..models.unet import UNet, conv2_point, downsample_point, upsample_point
from .config import BiDMConfig
from .spd import l2_loss, spd_loss


def distill_points(model: UNet, positions: str) -> list[int | str]:
    """The feature points (models/unet.py) the distillation compares, in forward order (docs/METHOD.md §11, item 3).

    units: every unit output b (after TBS mixing). official: the official CIFAR code's hooks, every downsample
    conv output, the last encoder unit's conv2 output and mid.block_2's (before their residual adds), and every
    upsample output (after TBS mixing), decoder levels from the bottom up."""
    units = model.units()
    if positions == "units":
        return list(range(len(units)))
    down = [downsample_point(L) for L, sample in enumerate(model.downsamples) if sample is not None and sample.conv]
    conv2 = [conv2_point(units.index(model.down_units[-1][-1])), conv2_point(units.index(model.mid_units[1]))]
    up = [upsample_point(L) for L in reversed(range(len(model.cfg.ch_mult))) if model.upsamples[L] is not None]
    return down + conv2 + up


class BiDMObjective:
    """step(x0, rng) of the BiDM loop; `student.mixer` is its TBS (or None without connections)."""

    def __init__(self, student: UNet, teacher: UNet, schedule: Schedule, cfg: BiDMConfig) -> None:
        self.student, self.teacher, self.schedule, self.cfg = student, teacher, schedule, cfg
        self.points = distill_points(student, cfg.distill_positions)

    def distill(self, features: list[np.ndarray], targets: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        if self.cfg.distill == "spd":
            return spd_loss(features, targets, self.cfg.spd_patches, self.cfg.spd_variant)
        return l2_loss(features, targets)

    def step(self, x0: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        T = self.schedule.T
        t = draw_timesteps(rng, x0.shape[0], T)                                   # [B]
        eps = rng.standard_normal(x0.shape).astype(x0.dtype)                      # [B, C, H, W]
        x_t = self.schedule.q_sample(x0, t, eps)                                  # [B, C, H, W]
        tbs = self.student.mixer
        if tbs is not None:
            t_prev = np.minimum(t + self.cfg.tbs_train_gap, T - 1)                # [B]
            tbs.forget()
            _, c_prev = self.student.forward(self.schedule.q_sample(x0, t_prev, eps), t_prev, rng)
            tbs.remember(UNet.point_outputs(c_prev))
        eps_pred, cache = self.student.forward(x_t, t, rng)                       # [B, C, H, W]
        loss, d_pred = noise_loss(eps, eps_pred)                                  # [B, C, H, W]
        metrics = {"noise_loss": loss}
        dfeatures = None
        if self.cfg.distill != "none":
            _, c_teacher = self.teacher.forward(x_t, t)
            student, teacher = UNet.point_outputs(cache), UNet.point_outputs(c_teacher)
            d_loss, d_feats = self.distill([student[p] for p in self.points], [teacher[p] for p in self.points])
            dfeatures = {p: self.cfg.distill_lambda * g for p, g in zip(self.points, d_feats, strict=True)}
            metrics["distill_loss"] = d_loss
            loss += self.cfg.distill_lambda * d_loss
        self.student.backward(d_pred, cache, dfeatures)
        if tbs is not None:
            tbs.forget()
        return {"loss": loss, **metrics}
