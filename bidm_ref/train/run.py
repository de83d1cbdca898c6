"""`cli.py train`: data, model (FP teacher or binary student), objective and trainer wired from configs.

FP:      model_cfg given; the UNet starts from its seeded init.
Student: StudentConfig names the method and the teacher checkpoint; the model config and the
         beta schedule come from the teacher, the student starts from the teacher's EMA weights.
The loss curve is appended to `out_dir/loss.tsv` (step, loss, grad_norm), so a resumed run
continues the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..data.batches import BatchSampler
from ..data.datasets import DataConfig, load_images
from ..diffusion.objective import DenoisingObjective
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..models.build import load_model
from ..models.config import UNetConfig
from ..models.student import build_student
from ..models.unet import UNet
from .adam import AdamConfig
from .trainer import TrainConfig, Trainer, run_config_dict


@dataclass(frozen=True)
class StudentConfig:
    method: str = "bidm"
    teacher: str = ""


def append_loss_curve(out_dir: str, history: list[dict[str, float]]) -> None:
    path = os.path.join(out_dir, "loss.tsv")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("step\tloss\tgrad_norm\n")
        for row in history:
            f.write(f"{row['step']}\t{row['loss']:.6f}\t{row['grad_norm']:.6f}\n")


def build_model(
    model_cfg: UNetConfig | None, schedule_cfg: ScheduleConfig, student: StudentConfig | None, seed: int
) -> tuple[UNet, ScheduleConfig]:
    """The model to train and the schedule it is trained with (a student takes both from its teacher)."""
    rng = np.random.default_rng([seed, 0])
    if student is None:
        if model_cfg is None:
            raise ValueError("an FP run needs a model config (--preset)")
        return UNet(model_cfg, rng=rng), schedule_cfg
    teacher, teacher_config = load_model(student.teacher, use_ema=True)
    if "student" in teacher_config:
        raise ValueError(f"{student.teacher} is a binary student, not an FP teacher: pass the teacher's checkpoint")
    return build_student(teacher.cfg, student.method, teacher.state_dict(), rng), ScheduleConfig(**teacher_config["schedule"])


def train(
    data_cfg: DataConfig,
    schedule_cfg: ScheduleConfig,
    adam_cfg: AdamConfig,
    train_cfg: TrainConfig,
    model_cfg: UNetConfig | None = None,
    student: StudentConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Trainer:
    """Train (or resume) with the denoising loss; returns the trainer (model, EMA and state live on it)."""
    model, schedule_cfg = build_model(model_cfg, schedule_cfg, student, train_cfg.seed)
    mcfg = model.cfg
    images = load_images(data_cfg)                                                # [N, C, H, W]
    if images.shape[1:] != (mcfg.in_channels, mcfg.resolution, mcfg.resolution):
        raise ValueError(
            f"data {data_cfg.name} has images {images.shape[1:]} but the model expects "
            f"{(mcfg.in_channels, mcfg.resolution, mcfg.resolution)}: pick a matching preset or teacher"
        )
    configs = dict(model=mcfg, data=data_cfg, schedule=schedule_cfg, adam=adam_cfg, train=train_cfg)
    if student is not None:
        configs["student"] = student
    run_config = run_config_dict(**configs)
    batches = BatchSampler(images, train_cfg.batch_size, train_cfg.seed, data_cfg.hflip)
    trainer = Trainer(model, DenoisingObjective(model, Schedule(schedule_cfg)), batches, train_cfg, adam_cfg, run_config)
    if resume:
        trainer.resume(trainer.ckpt_path)
    history = trainer.run(progress)
    append_loss_curve(train_cfg.out_dir, history)
    return trainer
