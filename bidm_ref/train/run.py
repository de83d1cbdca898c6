"""`cli.py train` for the FP teacher: data, model, objective and trainer wired from the configs.

The loss curve is appended to `out_dir/loss.tsv` (step, loss, grad_norm), so a resumed run
continues the same file.
"""

from __future__ import annotations

import os

import numpy as np

from ..data.batches import BatchSampler
from ..data.datasets import DataConfig, load_images
from ..diffusion.objective import DenoisingObjective
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..models.config import UNetConfig
from ..models.unet import UNet
from .adam import AdamConfig
from .trainer import TrainConfig, Trainer, run_config_dict


def append_loss_curve(out_dir: str, history: list[dict[str, float]]) -> None:
    path = os.path.join(out_dir, "loss.tsv")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("step\tloss\tgrad_norm\n")
        for row in history:
            f.write(f"{row['step']}\t{row['loss']:.6f}\t{row['grad_norm']:.6f}\n")


def train_teacher(
    model_cfg: UNetConfig,
    data_cfg: DataConfig,
    schedule_cfg: ScheduleConfig,
    adam_cfg: AdamConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
) -> Trainer:
    """Train (or resume) the FP UNet; returns the trainer (model, EMA and history live on it)."""
    images = load_images(data_cfg)                                                # [N, C, H, W]
    if images.shape[1:] != (model_cfg.in_channels, model_cfg.resolution, model_cfg.resolution):
        raise ValueError(
            f"data {data_cfg.name} has images {images.shape[1:]} but the model expects "
            f"{(model_cfg.in_channels, model_cfg.resolution, model_cfg.resolution)}: pick a matching preset"
        )
    model = UNet(model_cfg, rng=np.random.default_rng([train_cfg.seed, 0]))
    run_config = run_config_dict(model=model_cfg, data=data_cfg, schedule=schedule_cfg, adam=adam_cfg, train=train_cfg)
    batches = BatchSampler(images, train_cfg.batch_size, train_cfg.seed, data_cfg.hflip)
    trainer = Trainer(model, DenoisingObjective(model, Schedule(schedule_cfg)), batches, train_cfg, adam_cfg, run_config)
    if resume:
        trainer.resume(trainer.ckpt_path)
    history = trainer.run(progress)
    append_loss_curve(train_cfg.out_dir, history)
    return trainer
