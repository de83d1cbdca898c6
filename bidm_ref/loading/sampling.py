"""Images from a loaded model: DDIM/DDPM in the model's space, then the autoencoder's decoder for a latent model.

Dimensions: N images, C, H, W image; Z, h, w latent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bidm.tbs import sampling_eps_fn
from ..diffusion.generate import SampleConfig, generate
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..models.unet import UNet
from .latent import autoencoder_of, decode_latents, latent_of


def draw_images(model: UNet, run_config: dict[str, Any], cfg: SampleConfig, progress: bool = True) -> np.ndarray:
    """Images [N, C, H, W] in about [-1, 1] (not clipped) of the model loaded with `run_config`."""
    latent = latent_of(run_config)
    ae = None if latent is None else autoencoder_of(latent)  # refused before sampling, not after
    shape = (model.cfg.in_channels, model.cfg.resolution, model.cfg.resolution)
    schedule = Schedule(ScheduleConfig(**run_config["schedule"]))
    x = generate(lambda: sampling_eps_fn(model), shape, schedule, cfg, progress)  # [N, C, H, W] | [N, Z, h, w]
    if ae is None:
        return x
    return decode_latents(ae, x / np.float32(latent.scale))                       # [N, C, H, W]
