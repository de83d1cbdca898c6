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
    clip_x0: bool = True  # clip the x0 prediction to [-1, 1] at every step (samplers.py; pixel models only:
    #                       loading/sampling.py); measured in results/README.md

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


# `cli.py sample`'s defaults. SampleConfig's own sampler (DDIM, eta 0: deterministic, as ddim; 50 steps) is the
# protocol of the tables (`score` with 50 steps, `ablate` and `curve` with their own step counts); for drawing
# pictures DDIM 200 steps with eta 1 was better on a validation seed (7; the tables and `sample` use seed 0),
# 256 samples, FD-clf / confident share: teacher 1.01 / 43% -> 0.35 / 58%, BiDM student 11.0 / 9.8% -> 3.2 / 17.6%
# (results/README.md, "Sampler").
SAMPLE_COMMAND = SampleConfig(steps=200, eta=1.0)


def batch_count(cfg: SampleConfig) -> int:
    """Batches of cfg.batch_size images that make up cfg.n images (the last one may be smaller)."""
    return -(-cfg.n // cfg.batch_size)


def generate_batch(
    make_eps_fn: Callable[[], EpsFn],
    image_shape: tuple[int, int, int],
    schedule: Schedule,
    cfg: SampleConfig,
    b: int,
    callback: Callable[..., None] | None = None,
) -> np.ndarray:
    """Images [B, C, H, W] float32 of batch b (images b*B .. min((b+1)*B, N) - 1) from Generator default_rng([seed, b]).

    A batch is the unit `cli.py sample` shards over Dask workers (README "Sampling on a Dask cluster"):
    its images depend on (model, seed, b, batch size, sampler settings) only. `make_eps_fn()` gives a fresh
    model state (TBS cache); `callback` sees every sampler step."""
    if not 0 <= b < batch_count(cfg):
        raise ValueError(f"batch {b} is outside 0..{batch_count(cfg) - 1} of {cfg.n} images in batches of {cfg.batch_size}")
    rng = np.random.default_rng([cfg.seed, b])
    start = b * cfg.batch_size
    x_T = rng.standard_normal((min(cfg.batch_size, cfg.n - start), *image_shape)).astype(np.float32)  # [B, C, H, W]
    if cfg.sampler == "ddim":
        return sample_ddim(make_eps_fn(), x_T, schedule, cfg.steps, cfg.eta, rng, callback=callback, clip_x0=cfg.clip_x0)
    return sample_ddpm(make_eps_fn(), x_T, schedule, cfg.steps, rng, callback=callback, clip_x0=cfg.clip_x0)


def step_bar(schedule: Schedule, cfg: SampleConfig, progress: bool) -> tqdm:
    """A progress bar over every sampler step of every batch."""
    return tqdm(total=batch_count(cfg) * len(step_pairs(schedule.T, cfg.steps)), disable=not progress, unit="step")


def generate(
    make_eps_fn: Callable[[], EpsFn],
    image_shape: tuple[int, int, int],
    schedule: Schedule,
    cfg: SampleConfig,
    progress: bool = True,
) -> np.ndarray:
    """Images [N, C, H, W] float32 (not clipped): every batch of `generate_batch`, in order."""
    with step_bar(schedule, cfg, progress) as bar:
        tick = lambda *_: bar.update(1)  # noqa: E731
        batches = [generate_batch(make_eps_fn, image_shape, schedule, cfg, b, tick) for b in range(batch_count(cfg))]
    return np.concatenate(batches)                                                # [N, C, H, W]
