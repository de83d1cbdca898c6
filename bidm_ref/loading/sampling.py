"""Images from a loaded model: DDIM/DDPM in the model's space, then the autoencoder's decoder for a latent model.

Dimensions: N images, B batch, C, H, W image; Z, h, w latent.

`draw_batch` draws one batch b (diffusion/generate.py: its noise from default_rng([seed, b])) and, for a
latent model, decodes that batch alone; `draw_images` is every batch in order. `cli.py sample --workers K`
runs `draw_batch` on Dask workers (scaleout/sample_shards.py), so both give the same bytes.

`clip_x0` clips a pixel model's x0 prediction to the images' range [-1, 1]; a latent model's x0 is a scaled
latent with unit variance, not bounded by 1 (LDM does not clip it), so its samples ignore the flag. Clipping
latents had cut the latent teacher's confident share in half (results/README.md, "Latent sampling").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..bidm.tbs import sampling_eps_fn
from ..diffusion.generate import SampleConfig, batch_count, generate_batch, step_bar
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..models.autoencoder import Autoencoder
from ..models.unet import UNet
from .latent import autoencoder_of, decode_latents, latent_of


def decoder_of(run_config: dict[str, Any]) -> Autoencoder | None:
    """The autoencoder a latent model's samples are decoded with (None for a pixel model); refused before sampling."""
    latent = latent_of(run_config)
    return None if latent is None else autoencoder_of(latent)


def draw_batch(model: UNet, run_config: dict[str, Any], ae: Autoencoder | None, cfg: SampleConfig, b: int,
               callback: Callable[..., None] | None = None) -> np.ndarray:
    """Images [B, C, H, W] in about [-1, 1] (not clipped) of batch b; `ae` from `decoder_of(run_config)`."""
    shape = (model.cfg.in_channels, model.cfg.resolution, model.cfg.resolution)
    schedule = Schedule(ScheduleConfig(**run_config["schedule"]))
    if ae is not None:
        cfg = replace(cfg, clip_x0=False)                                         # latents are not in [-1, 1]
    x = generate_batch(lambda: sampling_eps_fn(model), shape, schedule, cfg, b, callback)  # [B, C, H, W] | [B, Z, h, w]
    if ae is None:
        return x
    return decode_latents(ae, x / np.float32(latent_of(run_config).scale))       # [B, C, H, W]


def draw_images(model: UNet, run_config: dict[str, Any], cfg: SampleConfig, progress: bool = True) -> np.ndarray:
    """Images [N, C, H, W] in about [-1, 1] (not clipped) of the model loaded with `run_config`."""
    ae = decoder_of(run_config)
    with step_bar(Schedule(ScheduleConfig(**run_config["schedule"])), cfg, progress) as bar:
        tick = lambda *_: bar.update(1)  # noqa: E731
        return np.concatenate([draw_batch(model, run_config, ae, cfg, b, tick) for b in range(batch_count(cfg))])
