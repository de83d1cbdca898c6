"""Draw images from a noise model: x_T ~ N(0, I) from the seed, then DDIM or DDPM, in batches.

Dimensions: N images, B batch, C, H, W image.
Batch b uses Generator default_rng([seed, b]) for its x_T and its sampler noise, so the images
do not depend on anything but (seed, batch size, model, sampler settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .samplers import EpsFn, sample_ddim, sample_ddpm, step_pairs
from .schedule import Schedule


@dataclass(frozen=True)
class SampleConfig:
    n: int = 64
    steps: int = 50
    eta: float = 0.0
    sampler: str = "ddim"
    seed: int = 0
    batch_size: int = 64
    clip_x0: bool = True  # clip the x0 prediction to [-1, 1] at every step (samplers.py); measured in results/README.md

    def __post_init__(self) -> None:
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler {self.sampler!r}: use ddim or ddpm")
        for name, flag, value in (("n", "--n", self.n), ("steps", "--steps", self.steps),
                                  ("batch_size", "--batch-size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}: pass {flag} 1 or more")
        if not 0 <= self.eta <= 1:  # NaN fails too; above 1 the DDIM step's c2 = sqrt(1 - a_n - c1^2) turns NaN
            raise ValueError(f"eta must be in [0, 1], got {self.eta}: pass --eta 0 (deterministic DDIM) to 1 "
                             "(DDPM-like)")


def generate(
    make_eps_fn: Callable[[], EpsFn],
    image_shape: tuple[int, int, int],
    schedule: Schedule,
    cfg: SampleConfig,
    progress: bool = True,
) -> np.ndarray:
    """Images [N, C, H, W] float32 (not clipped). `make_eps_fn()` gives a fresh model state per batch (TBS cache)."""
    out = []
    batches = range(0, cfg.n, cfg.batch_size)
    bar = tqdm(total=len(batches) * len(step_pairs(schedule.T, cfg.steps)), disable=not progress, unit="step")
    for b, start in enumerate(batches):
        rng = np.random.default_rng([cfg.seed, b])
        x_T = rng.standard_normal((min(cfg.batch_size, cfg.n - start), *image_shape)).astype(np.float32)  # [B, C, H, W]
        tick = lambda *_: bar.update(1)  # noqa: E731
        if cfg.sampler == "ddim":
            x0 = sample_ddim(make_eps_fn(), x_T, schedule, cfg.steps, cfg.eta, rng, callback=tick, clip_x0=cfg.clip_x0)
        else:
            x0 = sample_ddpm(make_eps_fn(), x_T, schedule, cfg.steps, rng, callback=tick, clip_x0=cfg.clip_x0)
        out.append(x0)
    bar.close()
    return np.concatenate(out)                                                    # [N, C, H, W]
