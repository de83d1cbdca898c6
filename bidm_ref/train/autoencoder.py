"""`cli.py train-ae`: train the first-stage autoencoder (models/autoencoder.py) with the shared Trainer.

Dimensions: B batch, C, H, W image, Z, h, w latent.

One step (the objective the Trainer calls; eps comes from the step's Generator, so runs resume
bit-identically like every other run):

    mean, logvar = encode(x0)                   # [B, Z, h, w] each
    z            = mean + exp(logvar / 2) * eps # [B, Z, h, w]
    x_rec        = decode(z)                    # [B, C, H, W]
    loss         = rec(x_rec, x0) + kl_weight * kl(mean, logvar)

The checkpoint is a "bidm-ckpt" file whose run config has an `autoencoder` section (no `model`),
so a UNet loader refuses it with a clear error and `load_autoencoder` refuses a UNet checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.batches import BatchSampler
from ..data.datasets import DataConfig, load_images
from ..models.autoencoder import (Autoencoder, AutoencoderConfig, kl_divergence, reconstruction_loss,
                                  reparameterize, reparameterize_backward)
from ..loading.latent import autoencoder_config
from .adam import AdamConfig
from .runfolder import claim_run_folder, resumed_common
from .trainer import TrainConfig, Trainer, run_config_dict


@dataclass(frozen=True)
class AutoencoderLossConfig:
    reconstruction: str = "l1"
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.reconstruction not in ("l1", "l2"):
            raise ValueError(f"unknown reconstruction loss {self.reconstruction!r}: use l1 or l2")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


class AutoencoderObjective:
    """Reconstruction + kl_weight * KL for one batch; forward and backward into the autoencoder's grads."""

    def __init__(self, ae: Autoencoder, cfg: AutoencoderLossConfig) -> None:
        self.ae = ae
        self.cfg = cfg

    def step(self, x0: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """Draw eps [B, Z, h, w] from the step's Generator, then `forward_backward`."""
        Z, h, w = self.ae.cfg.latent_shape
        eps = rng.standard_normal((len(x0), Z, h, w)).astype(x0.dtype)           # [B, Z, h, w]
        return self.forward_backward(x0, eps)

    def forward_backward(self, x0: np.ndarray, eps: np.ndarray) -> dict[str, float]:
        """The loss of x0 [B, C, H, W] with the sample noise eps [B, Z, h, w]; gradients added into the AE."""
        mean, logvar, c_enc = self.ae.encode(x0)                                  # [B, Z, h, w] each
        z, std = reparameterize(mean, logvar, eps)                                # [B, Z, h, w]
        x_rec, c_dec = self.ae.decode(z)                                          # [B, C, H, W]
        rec, dx_rec = reconstruction_loss(x_rec, x0, self.cfg.reconstruction)     # dx_rec [B, C, H, W]
        kl, dmean_kl, dlogvar_kl = kl_divergence(mean, logvar)                    # [B, Z, h, w] each
        w = self.cfg.kl_weight
        dz = self.ae.decode_backward(dx_rec, c_dec)                               # [B, Z, h, w]
        dmean, dlogvar = reparameterize_backward(dz, std, eps)                    # [B, Z, h, w] each
        self.ae.encode_backward(dmean + w * dmean_kl, dlogvar + w * dlogvar_kl, c_enc)
        mse = float(np.mean((x_rec.astype(np.float64) - x0) ** 2))
        return {"loss": rec + w * kl, "rec": rec, "kl": kl, "mse": mse}


def train_autoencoder(
    data_cfg: DataConfig,
    ae_cfg: AutoencoderConfig,
    loss_cfg: AutoencoderLossConfig,
    adam_cfg: AdamConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    force: bool = False,
) -> Trainer:
    """Train (or resume) the autoencoder on the dataset's training images; returns the trainer.

    The run folder is claimed first, as `cli.py train` does (runfolder.py); `force` starts over."""
    with claim_run_folder(train_cfg.out_dir, resume=resume, force=force):
        images = load_images(data_cfg)                                            # [N, C, H, W]
        if images.shape[1:] != (ae_cfg.in_channels, ae_cfg.resolution, ae_cfg.resolution):
            raise ValueError(f"data {data_cfg.name} has images {images.shape[1:]} but the autoencoder expects "
                             f"{(ae_cfg.in_channels, ae_cfg.resolution, ae_cfg.resolution)}: pick a matching preset")
        ae = Autoencoder(ae_cfg, rng=np.random.default_rng([train_cfg.seed, 0]))
        run_config = run_config_dict(autoencoder=ae_cfg, loss=loss_cfg, data=data_cfg, adam=adam_cfg, train=train_cfg)
        batches = BatchSampler(images, train_cfg.batch_size, train_cfg.seed, data_cfg.hflip)
        trainer = Trainer(ae, AutoencoderObjective(ae, loss_cfg), batches, train_cfg, adam_cfg, run_config)
        if resume:
            trainer.resume(trainer.ckpt_path)
        trainer.run(progress)
        return trainer


def resumed_autoencoder_arguments(out_dir: str, data_dir: str | None = None, **changes: Any) -> dict[str, Any]:
    """The keyword arguments of `train_autoencoder` that continue the run in `out_dir` (settings from its ckpt.h5).

    data_dir, changes: as run.resumed_arguments."""
    saved, arguments = resumed_common(out_dir, data_dir, changes)
    return {**arguments, "ae_cfg": autoencoder_config(saved, out_dir),
            "loss_cfg": AutoencoderLossConfig(**saved["loss"])}
