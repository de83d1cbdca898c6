"""`cli.py train`: data, model (FP teacher or binary student), objective and trainer wired from configs.

FP:      model_cfg given; the UNet starts from its seeded init.
Student: StudentConfig names the method and the teacher checkpoint; the model config and the
         beta schedule come from the teacher, the student starts from the teacher's EMA weights and
         trains with the BiDM objective (BiDMConfig: TBS connections, distillation; with 0
         connections and no distillation it is the plain noise loss).
Latent:  `latent_ae` (FP) trains on the scaled latents of that autoencoder; a student of a latent
         teacher trains on the teacher's latents (loading/latent.py). Nothing else changes.
The loss curve goes to `out_dir/loss.tsv` (see Trainer), so a resumed run continues the same file.
The run folder is claimed before any work (runfolder.py: one writer, no new run over an old one
unless `force`); `resumed_arguments` rebuilds every setting of a run from its checkpoint, so a
resumed run needs only its folder and the settings that may change (steps, ckpt_every, snapshot_every).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..bidm.config import PLAIN_NOISE_LOSS, BiDMConfig
from ..bidm.objective import BiDMObjective
from ..binary.variant import LayerVariant
from ..data.batches import BatchSampler
from ..data.datasets import DataConfig, load_images
from ..loading.latent import LatentConfig, latent_of, training_latents
from ..diffusion.objective import DenoisingObjective
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..loading.load import load_model
from ..loading.build import unet_config
from ..models.config import UNetConfig
from ..bidm.student import build_student
from ..models.unet import UNet
from .adam import AdamConfig
from .runfolder import claim_run_folder, resumed_common
from .trainer import Objective, TrainConfig, Trainer, run_config_dict


@dataclass(frozen=True)
class StudentConfig:
    """The binarization method, the teacher, and the layer variant (binary/methods.py: LayerVariant)."""

    method: str = "bidm"
    teacher: str = ""
    downsample_pad: str = LayerVariant.downsample_pad
    fp_shortcut: bool = LayerVariant.fp_shortcut


def load_teacher(path: str) -> tuple[UNet, dict]:
    """The FP teacher (EMA weights) and its run config; refuses a student checkpoint."""
    teacher, config = load_model(path, use_ema=True)
    if "student" in config:
        raise ValueError(f"{path} is a binary student, not an FP teacher: pass the teacher's checkpoint")
    return teacher, config


def build_objective(
    model_cfg: UNetConfig | None, schedule_cfg: ScheduleConfig, student: StudentConfig | None,
    bidm: BiDMConfig | None, seed: int,
) -> tuple[UNet, Objective, ScheduleConfig, LatentConfig | None]:
    """The model to train, its objective, schedule and (for a student) the teacher's latent section;
    a student takes model, schedule and latent space from its teacher."""
    rng = np.random.default_rng([seed, 0])
    if student is None:
        if model_cfg is None:
            raise ValueError("an FP run needs a model config (--preset)")
        model = UNet(model_cfg, rng=rng)
        return model, DenoisingObjective(model, Schedule(schedule_cfg)), schedule_cfg, None
    teacher, teacher_config = load_teacher(student.teacher)
    schedule_cfg = ScheduleConfig(**teacher_config["schedule"])
    model = build_student(teacher.cfg, student.method, teacher.state_dict(), rng, bidm.tbs_connections,
                          schedule_cfg.num_timesteps, LayerVariant.of_student(asdict(student)),
                          bidm.tbs_layout)
    return model, BiDMObjective(model, teacher, Schedule(schedule_cfg), bidm), schedule_cfg, latent_of(teacher_config)


def train(
    data_cfg: DataConfig,
    schedule_cfg: ScheduleConfig,
    adam_cfg: AdamConfig,
    train_cfg: TrainConfig,
    model_cfg: UNetConfig | None = None,
    student: StudentConfig | None = None,
    bidm: BiDMConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    latent_ae: str | None = None,
    force: bool = False,
) -> Trainer:
    """Train (or resume) with the denoising loss; returns the trainer (model, EMA and state live on it).

    The run folder train_cfg.out_dir is claimed first (runfolder.py); `force` starts over in a folder that
    holds a run."""
    with claim_run_folder(train_cfg.out_dir, resume=resume, force=force):
        if student is not None and bidm is None:
            bidm = PLAIN_NOISE_LOSS
        if student is not None and latent_ae is not None:
            raise ValueError("a student trains in its teacher's space (pixels or the teacher's latents): drop --latent")
        model, objective, schedule_cfg, inherited = build_objective(model_cfg, schedule_cfg, student, bidm,
                                                                    train_cfg.seed)
        mcfg = model.cfg
        latent = None
        if latent_ae is None and inherited is None:
            images = load_images(data_cfg)                                        # [N, C, H, W]
        else:
            images, latent = training_latents(data_cfg, latent_ae, inherited, progress)  # [N, Z, h, w]
        if images.shape[1:] != (mcfg.in_channels, mcfg.resolution, mcfg.resolution):
            raise ValueError(
                f"data {data_cfg.name} has {'latents' if latent else 'images'} {images.shape[1:]} but the model "
                f"expects {(mcfg.in_channels, mcfg.resolution, mcfg.resolution)}: pick a matching preset or teacher"
            )
        configs = dict(model=mcfg, data=data_cfg, schedule=schedule_cfg, adam=adam_cfg, train=train_cfg)
        if latent is not None:
            configs["latent"] = latent
        if student is not None:
            configs["student"] = student
            configs["bidm"] = bidm
        run_config = run_config_dict(**configs)
        batches = BatchSampler(images, train_cfg.batch_size, train_cfg.seed, data_cfg.hflip)
        trainer = Trainer(model, objective, batches, train_cfg, adam_cfg, run_config)
        if resume:
            trainer.resume(trainer.ckpt_path)
        trainer.run(progress)
        return trainer


def resumed_arguments(out_dir: str, data_dir: str | None = None, **changes: Any) -> dict[str, Any]:
    """The keyword arguments of `train` that continue the run in `out_dir`, every setting from its ckpt.h5.

    data_dir: where the dataset lives now (None: where it lived); changes: the TrainConfig fields that may
    differ (steps, ckpt_every, snapshot_every; Trainer.resumable_config).
    """
    saved, arguments = resumed_common(out_dir, data_dir, changes)
    arguments["schedule_cfg"] = ScheduleConfig(**saved["schedule"])
    if "student" in saved:
        return {**arguments, "student": StudentConfig(**saved["student"]), "bidm": BiDMConfig(**saved["bidm"])}
    return {**arguments, "model_cfg": unet_config(saved), "latent_ae": saved.get("latent", {}).get("autoencoder")}
