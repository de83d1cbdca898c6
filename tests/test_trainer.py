"""Trainer: bit-identical resume, checkpoint contents, loss decreases on a trivial data set, CLI wiring."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace

import h5py
import numpy as np
import pytest

from bidm_ref.bidm.config import BiDMConfig

from bidm_ref.data.batches import BatchSampler
from bidm_ref.data.datasets import DataConfig
from bidm_ref.diffusion.objective import DenoisingObjective
from bidm_ref.diffusion.schedule import Schedule, ScheduleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.models.config import UNetConfig
from bidm_ref.models.unet import UNet
from bidm_ref.train.adam import AdamConfig
from bidm_ref.storage.checkpoint import load_checkpoint
from bidm_ref.train.run import StudentConfig, WarmStart, build_objective, resumed_arguments, train
from bidm_ref.train.trainer import TrainConfig, Trainer, ema_decay_at, lr_at, run_config_dict

MICRO = UNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1,
                   in_channels=1, out_ch=1, resolution=32, groups=2)


def write_idx_dataset(folder, n=24, split="train"):
    """A Fashion-MNIST-shaped IDX pair (images + labels of `split`: train or t10k, gzipped) with simple blobs."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, 20, 2)
        images[i, r : r + 8, c : c + 8] = 255
    with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def micro_teacher(folder, train_images=24, test_images=12):
    """IDX train/test fixtures in `folder` and a 1-step MICRO teacher trained on them -> (DataConfig, ckpt path)."""
    write_idx_dataset(folder, n=train_images, split="train")
    if test_images:
        write_idx_dataset(folder, n=test_images, split="t10k")
    data = DataConfig(name="fashion-mnist", data_dir=str(folder))
    train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, batch_size=4, out_dir=str(folder / "t")),
          model_cfg=MICRO, progress=False)
    return data, str(folder / "t" / "ckpt.h5")


def make_trainer(out_dir, steps, lr_decay_from=None):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (10, 1, 32, 32)).astype(np.float32)
    model = UNet(MICRO, rng=np.random.default_rng(2))
    cfg = TrainConfig(steps=steps, batch_size=4, seed=3, ckpt_every=2, out_dir=str(out_dir),
                      lr_decay_from=lr_decay_from)
    adam = AdamConfig(lr=1e-3)
    run_config = run_config_dict(model=MICRO, schedule=ScheduleConfig(), adam=adam, train=cfg)
    return Trainer(model, DenoisingObjective(model, Schedule()), BatchSampler(images, 4, 3), cfg, adam, run_config)


def test_resume_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "a", 4)
    straight.run(progress=False)
    first = make_trainer(tmp_path / "b", 2)
    first.run(progress=False)
    resumed = make_trainer(tmp_path / "b", 4)
    resumed.resume(str(tmp_path / "b" / "ckpt.h5"))
    assert resumed.step == 2
    resumed.run(progress=False)
    for name, p in straight.model.named_parameters():
        np.testing.assert_array_equal(p, resumed.model.state_dict()[name], err_msg=name)
    for name, s in straight.ema.shadow.items():
        np.testing.assert_array_equal(s, resumed.ema.shadow[name], err_msg=name)
    curve_a = (tmp_path / "a" / "loss.tsv").read_text().splitlines()
    curve_b = (tmp_path / "b" / "loss.tsv").read_text().splitlines()
    assert curve_b == curve_a and [row.split("\t")[0] for row in curve_b[1:]] == ["1", "2", "3", "4"]
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.h5")
    assert ckpt.step == 4 and ckpt.optim.t == 4 and ckpt.config["model"]["ch"] == 4


def test_resume_refuses_another_model_config(tmp_path):
    make_trainer(tmp_path, 1).run(progress=False)
    other = make_trainer(tmp_path, 2)
    other.run_config = {**other.run_config, "model": {**other.run_config["model"], "ch": 8}}
    with pytest.raises(ValueError, match="model.ch"):
        other.resume(str(tmp_path / "ckpt.h5"))


def test_ema_warmup_schedule():
    cfg = TrainConfig()
    assert ema_decay_at(cfg, 0) == pytest.approx(0.1)
    assert ema_decay_at(cfg, 90) == pytest.approx(0.91)
    assert ema_decay_at(cfg, 10**6) == 0.9999
    assert ema_decay_at(TrainConfig(ema_warmup=False), 0) == 0.9999


def test_lr_decay_schedule():
    assert [lr_at(TrainConfig(steps=4), 1e-3, s) for s in range(4)] == [1e-3] * 4
    decayed = [lr_at(TrainConfig(steps=10, lr_decay_from=6), 8.0, s) for s in range(10)]
    assert decayed == [8.0] * 7 + [6.0, 4.0, 2.0]                              # s = 6 is the last full-rate step
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="--lr-decay-from below --steps"):
            TrainConfig(steps=10, lr_decay_from=bad)


def test_lr_decay_changes_only_the_steps_after_its_start(tmp_path):
    def losses(out, decay_from):
        return [row["loss"] for row in make_trainer(out, 4, decay_from).run(progress=False)]

    constant, decayed = losses(tmp_path / "a", None), losses(tmp_path / "b", 1)
    assert decayed[:3] == constant[:3] and decayed[3] != constant[3]          # step 2's update is the first below lr


def test_train_teacher_from_idx_files_and_sample_loader(tmp_path):
    write_idx_dataset(tmp_path)
    data = DataConfig(name="fashion-mnist", data_dir=str(tmp_path))
    cfg = TrainConfig(steps=30, batch_size=8, seed=0, ckpt_every=100, out_dir=str(tmp_path / "run"))
    trainer = train(data, ScheduleConfig(), AdamConfig(lr=3e-3), cfg, model_cfg=MICRO, progress=False)
    rows = (tmp_path / "run" / "loss.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss\tgrad_norm" and len(rows) == 31
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    model, config = load_model(str(tmp_path / "run" / "ckpt.h5"))
    np.testing.assert_array_equal(model.state_dict()["conv_out.bias"], trainer.ema.shadow["conv_out.bias"])
    assert config["data"]["name"] == "fashion-mnist"


def test_train_teacher_rejects_channel_mismatch(tmp_path):
    write_idx_dataset(tmp_path)
    data = DataConfig(name="fashion-mnist", data_dir=str(tmp_path))
    rgb = UNetConfig(**{**MICRO.__dict__, "in_channels": 3, "out_ch": 3})
    with pytest.raises(ValueError, match="expects"):
        train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, out_dir=str(tmp_path)), model_cfg=rgb, progress=False)


def test_a_student_checkpoint_with_the_old_spd_lambda_key_loads_and_resumes_with_its_lambda(tmp_path):
    """Checkpoints written before the rename say `spd_lambda`: a resume must read it as distill_lambda (0.25 here,
    not the default 4), so the resumed run equals a straight one, and the file still loads as a model."""
    data, teacher = micro_teacher(tmp_path)
    bidm = BiDMConfig.for_method("bidm", distill_lambda=0.25)
    assert bidm.distill_lambda != BiDMConfig.distill_lambda

    def student_run(folder, steps):
        train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=steps, batch_size=4, out_dir=str(folder)),
              student=StudentConfig(method="bidm", teacher=teacher), bidm=bidm, progress=False)
        return str(folder / "ckpt.h5")

    straight, old = student_run(tmp_path / "straight", 3), student_run(tmp_path / "old", 2)
    with h5py.File(old, "r+") as h5:
        config = json.loads(h5.attrs["config"])
        config["bidm"]["spd_lambda"] = config["bidm"].pop("distill_lambda")
        h5.attrs["config"] = json.dumps(config, sort_keys=True)
    assert "distill_lambda" not in load_checkpoint(old).config["bidm"]
    model, _ = load_model(old)
    assert model.mixer is not None and model.mixer.connections == bidm.tbs_connections
    arguments = resumed_arguments(str(tmp_path / "old"), steps=3)
    assert arguments["bidm"] == bidm
    train(**arguments, progress=False)
    resumed = load_checkpoint(old)
    for name, value in load_checkpoint(straight).params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    assert resumed.config["bidm"]["distill_lambda"] == 0.25


def test_warm_start_begins_at_the_init_weights_records_them_and_resumes(tmp_path):
    data, ckpt = micro_teacher(tmp_path)
    start = WarmStart.of(ckpt)
    assert start.step == 1 and len(start.arrays_sha256) == 64
    init_weights = load_model(ckpt)[0].state_dict()                               # the EMA weights
    model, *_ = build_objective(None, ScheduleConfig(), None, None, seed=5, start=start)
    assert model.cfg == MICRO
    for name, value in init_weights.items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
    out = tmp_path / "warm"
    trainer = train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=2, batch_size=4, out_dir=str(out)),
                    warm_start=start, progress=False)
    assert trainer.adam.t == 2                                                    # a fresh optimizer
    assert load_checkpoint(out / "ckpt.h5").config["init"] == {"weights": ckpt, "arrays_sha256": start.arrays_sha256,
                                                               "step": 1}
    resumed = train(**resumed_arguments(str(out), steps=3), progress=False)      # the init file is not read again
    assert resumed.step == 3


def test_warm_start_refuses_another_preset_changed_weights_and_a_student(tmp_path):
    data, ckpt = micro_teacher(tmp_path)
    start = WarmStart.of(ckpt)
    with pytest.raises(ValueError, match="drop --preset"):
        build_objective(replace(MICRO, ch=8), ScheduleConfig(), None, None, seed=0, start=start)
    with pytest.raises(ValueError, match="changed while the run started"):
        build_objective(None, ScheduleConfig(), None, None, seed=0, start=replace(start, arrays_sha256="0" * 64))
    with pytest.raises(ValueError, match="drop --init"):
        train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, batch_size=4, out_dir=str(tmp_path / "s")),
              student=StudentConfig(method="xnor", teacher=ckpt), warm_start=start, progress=False)
