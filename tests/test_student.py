"""Binary student UNet: teacher reproduction in full mode, whole-model surrogate FD, training and loading."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.binary.methods import METHODS, binary_layers, set_binarize
from bidm_ref.data.datasets import DataConfig
from bidm_ref.diffusion.schedule import ScheduleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.models.config import UNetConfig
from bidm_ref.bidm.student import build_student
from bidm_ref.models.unet import UNet
from bidm_ref.train.adam import AdamConfig
from bidm_ref.train.run import StudentConfig, train
from bidm_ref.train.trainer import TrainConfig
from binarycheck import away_from_kinks, surrogate_mode
from fdcheck import check_module
from test_trainer import MICRO, write_idx_dataset

SMALL = UNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                   in_channels=1, out_ch=1, resolution=8, groups=2)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_student_in_full_mode_reproduces_the_teacher(method):
    teacher = UNet(SMALL, rng=np.random.default_rng(0))
    student = build_student(SMALL, method, teacher.state_dict(), np.random.default_rng(1))
    set_binarize(student, False)
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t = np.array([5, 900])
    np.testing.assert_array_equal(student.forward(x, t)[0], teacher.forward(x, t)[0])
    set_binarize(student, True)
    assert not np.array_equal(student.forward(x, t)[0], teacher.forward(x, t)[0])


def test_binarized_layers_are_the_body_layers_of_bidm_md():
    student = build_student(SMALL, "bidm", UNet(SMALL, rng=np.random.default_rng(0)).state_dict(),
                            np.random.default_rng(1))
    names = {name for name, _ in binary_layers(student)}
    assert {"down.0.block.0.conv1", "down.0.block.0.conv2", "down.0.block.0.temb_proj", "down.0.downsample.conv",
            "down.1.attn.0.q", "mid.attn_1.proj_out", "up.1.upsample.conv", "up.0.block.1.conv2"} <= names
    fp = {"conv_in", "conv_out", "temb.dense.0", "up.0.block.0.nin_shortcut", "norm_out"}
    assert not names & fp


@pytest.mark.parametrize("method", ["bidm", "xnor"])
def test_whole_binary_unet_surrogate_fd(method):
    rng = np.random.default_rng(3)
    student = build_student(SMALL, method, UNet(SMALL, rng=rng).state_dict(), rng)
    for name, p in student.named_parameters():
        if name.endswith(("tau", "shortcut_scale", "k_bias")):
            p[...] = rng.standard_normal(p.shape) * 0.2
    x = away_from_kinks(rng.standard_normal((2, 1, 8, 8)))
    t = np.array([3, 600])
    with surrogate_mode(student):
        check_module(student, [x], lambda x: student.forward(x, t), rng, rtol=1e-4)


def test_student_training_and_loading(tmp_path):
    write_idx_dataset(tmp_path)
    data = DataConfig(name="fashion-mnist", data_dir=str(tmp_path))
    teacher_cfg = TrainConfig(steps=2, batch_size=4, out_dir=str(tmp_path / "teacher"))
    train(data, ScheduleConfig(), AdamConfig(), teacher_cfg, model_cfg=MICRO, progress=False)
    student_cfg = TrainConfig(steps=3, batch_size=4, out_dir=str(tmp_path / "student"))
    trainer = train(data, ScheduleConfig(), AdamConfig(), student_cfg,
                    student=StudentConfig("bidm", str(tmp_path / "teacher" / "ckpt.h5")), progress=False)
    assert trainer.step == 3
    model, config = load_model(str(tmp_path / "student" / "ckpt.h5"))
    assert config["student"]["method"] == "bidm" and binary_layers(model)
    assert "down.0.block.0.conv1.tau" in model.state_dict()
    with pytest.raises(ValueError, match="not an FP teacher"):
        train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, out_dir=str(tmp_path / "x")),
              student=StudentConfig("xnor", str(tmp_path / "student" / "ckpt.h5")), progress=False)


def test_xnorpp_gamma_rederived_from_teacher_weights():
    teacher = UNet(SMALL, rng=np.random.default_rng(0))
    student = build_student(SMALL, "xnorpp", teacher.state_dict(), np.random.default_rng(1))
    w = teacher.state_dict()["down.0.block.0.conv1.weight"]
    np.testing.assert_allclose(student.state_dict()["down.0.block.0.conv1.gamma_out"],
                               np.abs(w).mean(axis=(1, 2, 3)), rtol=1e-6)


def test_trainer_anneals_reste_exponent(tmp_path):
    from bidm_ref.binary.reste import reste_exponent
    from bidm_ref.data.batches import BatchSampler
    from bidm_ref.diffusion.objective import DenoisingObjective
    from bidm_ref.diffusion.schedule import Schedule
    from bidm_ref.train.trainer import Trainer, run_config_dict

    student = build_student(SMALL, "reste", UNet(SMALL, rng=np.random.default_rng(0)).state_dict(),
                            np.random.default_rng(1))
    cfg = TrainConfig(steps=4, batch_size=2, out_dir=str(tmp_path))
    images = np.random.default_rng(2).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    trainer = Trainer(student, DenoisingObjective(student, Schedule()), BatchSampler(images, 2, 0), cfg,
                      AdamConfig(), run_config_dict(model=SMALL, train=cfg))
    layer = dict(student.named_modules())["down.0.block.0.conv1"]
    for step in range(3):
        trainer.train_step()
        assert layer.act.o == reste_exponent(step / 4, layer.o_end)
