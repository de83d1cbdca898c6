"""`cli.py train`: data, model (FP teacher or binary student), objective and trainer wired from configs.

FP:      model_cfg given; the UNet starts from its seeded init, or (WarmStart, `cli.py train --init W`) from
         the EMA weights of an earlier FP run or export, with a fresh optimizer and EMA: how a teacher's training
         goes on where its checkpoint with the optimizer state is gone (e.g. on another machine).
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
from ..storage.checkpoint import load_step
from ..storage.hashing import arrays_sha256
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


@dataclass(frozen=True)
class WarmStart:
    """The weights an FP run starts from: a checkpoint or export (its EMA weights), their arrays' sha256 (which
    weights exactly: hashing.arrays_sha256 of the state dict) and the step they were saved at."""

    weights: str
    arrays_sha256: str
    step: int

    @classmethod
    def of(cls, path: str) -> WarmStart:
        model, _ = load_fp_weights(path, "starting point (--init)")
        return cls(path, arrays_sha256(model.state_dict()), load_step(path))


def load_fp_weights(path: str, role: str) -> tuple[UNet, dict]:
    """The FP UNet (EMA weights) of a checkpoint or export and its run config (with "step"); refuses a student."""
    model, config = load_model(path, use_ema=True)
    if "student" in config:
        raise ValueError(f"{path} is a binary student, not an FP {role}: pass an FP checkpoint or export")
    return model, config


def warm_started(model_cfg: UNetConfig | None, start: WarmStart) -> UNet:
    """The UNet holding `start`'s weights; refuses another model config or weights that changed since WarmStart.of."""
    model, _ = load_fp_weights(start.weights, "starting point (--init)")
    if model_cfg is not None and model.cfg != model_cfg:
        raise ValueError(f"--init {start.weights} holds the model {model.cfg}, not the --preset's {model_cfg}: "
                         "drop --preset (the model comes from the --init weights) or pass that file's preset")
    if arrays_sha256(model.state_dict()) != start.arrays_sha256:
        raise ValueError(f"--init {start.weights} changed while the run started (its weights no longer hash to "
                         f"{start.arrays_sha256}): start the run again")
    return model


def load_teacher(path: str) -> tuple[UNet, dict]:
    """The FP teacher (EMA weights) and its run config; refuses a student checkpoint."""
    return load_fp_weights(path, "teacher")


def build_objective(
    model_cfg: UNetConfig | None, schedule_cfg: ScheduleConfig, student: StudentConfig | None,
    bidm: BiDMConfig | None, seed: int, start: WarmStart | None = None,
) -> tuple[UNet, Objective, ScheduleConfig, LatentConfig | None]:
    """The model to train, its objective, schedule and (for a student) the teacher's latent section;
    a student takes model, schedule and latent space from its teacher; an FP run with `start` its model."""
    rng = np.random.default_rng([seed, 0])
    if student is None:
        if start is not None:
            model = warm_started(model_cfg, start)
        elif model_cfg is None:
            raise ValueError("an FP run needs a model config (--preset)")
        else:
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
    warm_start: WarmStart | None = None,
) -> Trainer:
    """Train (or resume) with the denoising loss; returns the trainer (model, EMA and state live on it).
    warm_start (FP only): the weights the run starts from (a resumed run records it and loads its checkpoint).

    The run folder train_cfg.out_dir is claimed first (runfolder.py); `force` starts over in a folder that
    holds a run."""
    with claim_run_folder(train_cfg.out_dir, resume=resume, force=force):
        if student is not None and bidm is None:
            bidm = PLAIN_NOISE_LOSS
        if student is not None and latent_ae is not None:
            raise ValueError("a student trains in its teacher's space (pixels or the teacher's latents): drop --latent")
        if student is not None and warm_start is not None:
            raise ValueError("a student starts from its teacher (--teacher): drop --init")
        model, objective, schedule_cfg, inherited = build_objective(model_cfg, schedule_cfg, student, bidm,
                                                                    train_cfg.seed, None if resume else warm_start)
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
        if warm_start is not None:
            configs["init"] = warm_start
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
    warm_start = WarmStart(**saved["init"]) if "init" in saved else None
    return {**arguments, "model_cfg": unet_config(saved), "latent_ae": saved.get("latent", {}).get("autoencoder"),
            "warm_start": warm_start}
