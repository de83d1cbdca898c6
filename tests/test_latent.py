"""Latent diffusion end to end on an IDX fixture: train-ae -> train --latent -> student -> sample, export and
sample packed; the latent section, the scale, the cache and the one-line errors."""

from __future__ import annotations

import glob
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import cli
from bidm_ref.data.datasets import DataConfig, load_images
from bidm_ref.diffusion.generate import SampleConfig, generate
from bidm_ref.diffusion.schedule import Schedule, ScheduleConfig
from bidm_ref.storage.hashing import arrays_sha256, file_sha256
from bidm_ref.loading.load import load_model
from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.metrics.reconstruction import alternating_rows, reconstruct, reconstruction_quality
from bidm_ref.loading.latent import decode_latents, encode_means, load_autoencoder, training_latents
from bidm_ref.loading.sampling import draw_images
from bidm_ref.storage.checkpoint import load_checkpoint
from test_trainer import write_idx_dataset

TRAIN = ["--steps", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    """An autoencoder, a latent FP teacher and a BiDM student of it, two steps each, on 24 fixture images."""
    root = tmp_path_factory.mktemp("latent")
    write_idx_dataset(root)
    data = ["--data-dir", str(root)]
    ae, teacher, student = root / "ae" / "ckpt.h5", root / "teacher" / "ckpt.h5", root / "student" / "ckpt.h5"
    assert cli.main(["train-ae", *data, *TRAIN, "--out", str(ae.parent)]) == 0
    assert cli.main(["train", "--latent", str(ae), *data, *TRAIN, "--out", str(teacher.parent)]) == 0
    assert cli.main(["train", "--method", "bidm", "--teacher", str(teacher), *data, *TRAIN,
                     "--out", str(student.parent)]) == 0
    return root, ae, teacher, student


def test_teacher_trains_on_unit_variance_latents_of_its_autoencoder(latent_runs):
    root, ae_path, teacher_path, _ = latent_runs
    model, config = load_model(str(teacher_path))
    latent = config["latent"]
    assert latent["autoencoder"] == str(ae_path) and latent["sha256"] == file_sha256(ae_path)
    assert latent["weights_sha256"] == arrays_sha256(load_autoencoder(str(ae_path)).state_dict())
    assert (model.cfg.in_channels, model.cfg.resolution) == (4, 8)  # f4: 32x32x1 -> 8x8x4
    ae = load_autoencoder(str(ae_path))
    images = load_images(DataConfig(data_dir=str(root)))                          # [24, 1, 32, 32]
    means = encode_means(ae, images)                                              # [24, 4, 8, 8]
    assert latent["scale"] == pytest.approx(1 / means.astype(np.float64).std(), rel=1e-6)
    scaled, _ = training_latents(DataConfig(data_dir=str(root)), str(ae_path), None, progress=False)
    # the latents were cached by the teacher's run, under the thread count cli.main chose from the machine's load then;
    # another count may round the convs' sums otherwise (runtime.py, "Determinism"): float32 rounding, not more
    expected = means * np.float32(latent["scale"])                                # [24, 4, 8, 8]
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert scaled.astype(np.float64).std() == pytest.approx(1.0, rel=1e-5)
    assert len(glob.glob(str(ae_path.parent / "latents-*.npz"))) == 1  # the encoded training set is cached


def test_student_inherits_the_teachers_latent_space(latent_runs):
    _, _, teacher_path, student_path = latent_runs
    student, config = load_model(str(student_path))
    assert config["latent"] == load_checkpoint(str(teacher_path)).config["latent"]
    assert config["student"]["method"] == "bidm" and student.mixer is not None


def test_sampling_decodes_latents_with_the_named_autoencoder(latent_runs):
    _, ae_path, teacher_path, _ = latent_runs
    model, config = load_model(str(teacher_path))
    cfg = SampleConfig(n=3, steps=2, seed=4, batch_size=2)
    images = draw_images(model, config, cfg, progress=False)
    z = generate(lambda: sampling_eps_fn(model), (4, 8, 8), Schedule(ScheduleConfig(**config["schedule"])),
                 replace(cfg, clip_x0=False), progress=False)                     # [3, 4, 8, 8] (latents: unclipped)
    ae, scale = load_autoencoder(str(ae_path)), np.float32(config["latent"]["scale"])
    expected = np.concatenate([decode_latents(ae, z[:2] / scale), decode_latents(ae, z[2:] / scale)])  # per batch of 2
    assert images.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(images, expected)


def test_a_latent_models_x0_is_not_clipped(latent_runs):
    """Scaled latents have unit variance: clip_x0 (the images' [-1, 1]) must not touch them."""
    _, _, teacher_path, _ = latent_runs
    model, config = load_model(str(teacher_path))
    cfg = SampleConfig(n=2, steps=3, seed=1, batch_size=2, eta=1.0)
    unclipped = draw_images(model, config, replace(cfg, clip_x0=False), progress=False)
    np.testing.assert_array_equal(draw_images(model, config, cfg, progress=False), unclipped)
    z = generate(lambda: sampling_eps_fn(model), (4, 8, 8), Schedule(ScheduleConfig(**config["schedule"])),
                 replace(cfg, clip_x0=False), progress=False)                     # [2, 4, 8, 8]
    assert np.abs(z).max() > 1                                                    # clipping would have changed it
    ae, scale = load_autoencoder(config["latent"]["autoencoder"]), np.float32(config["latent"]["scale"])
    np.testing.assert_array_equal(unclipped, decode_latents(ae, z / scale))


def test_cli_samples_packed_latent_student_as_pixels_deterministically(latent_runs, capsys):
    root, _, _, student_path = latent_runs
    packed = root / "packed.h5"
    assert cli.main(["export", "--weights", str(student_path), "--out", str(packed)]) == 0
    npzs = []
    for name in ("a", "b"):
        npzs.append(root / f"{name}.npz")
        assert cli.main(["sample", "--weights", str(packed), "--n", "2", "--steps", "2", "--out",
                         str(root / f"{name}.png"), "--npz", str(npzs[-1])]) == 0
    a, b = (np.load(p)["arr_0"] for p in npzs)
    assert a.shape == (2, 32, 32, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_latent_errors_are_one_line(latent_runs, tmp_path, capsys):
    root, ae_path, teacher_path, _ = latent_runs
    data = ["--data-dir", str(root)]

    def error_of(argv: list[str]) -> str:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
        return err

    out = ["--out", str(tmp_path / "x")]
    assert "drop --latent" in error_of(["train", "--method", "xnor", "--teacher", str(teacher_path), "--latent",
                                        str(ae_path), *data, *TRAIN, *out])
    assert "not an autoencoder checkpoint" in error_of(["train", "--latent", str(teacher_path), *data, *TRAIN, *out])
    assert "--hflip" in error_of(["train", "--latent", str(ae_path), "--hflip", *data, *TRAIN, *out])
    assert "no model config" in error_of(["sample", "--weights", str(ae_path), "--n", "1", "--steps", "1"])
    other = tmp_path / "other"
    assert cli.main(["train-ae", *data, *TRAIN, "--seed", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    sample = ["sample", "--weights", str(teacher_path), "--n", "1", "--steps", "1", "--out", str(tmp_path / "s.png")]
    original = ae_path.read_bytes()
    try:  # the teacher's autoencoder file replaced by another autoencoder, then missing
        ae_path.write_bytes((other / "ckpt.h5").read_bytes())
        assert "is not the autoencoder this model was trained on" in error_of(sample)
        ae_path.unlink()
        assert "does not exist" in error_of(sample)
    finally:
        ae_path.write_bytes(original)
    assert not (tmp_path / "s.png").exists()


def test_reconstruction_quality_by_hand():
    images = np.full((2, 1, 2, 2), -1.0, np.float32)
    quality = reconstruction_quality(images, images + 0.2)                        # 0.1 off on the [0, 1] scale
    assert quality.mse == pytest.approx(0.01) and quality.psnr == pytest.approx(20.0)
    assert reconstruction_quality(images, images).psnr == float("inf")
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_quality(images, images[:1])


def test_alternating_rows_put_each_row_of_originals_above_its_reconstructions():
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)                  # image i holds the value i
    grid, per_row = alternating_rows(images, images + 100, 10, per_row=4)
    assert per_row == 4                                                           # 10 -> two whole rows of 4
    assert grid[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 4, 5, 6, 7, 104, 105, 106, 107]
    grid, per_row = alternating_rows(images[:3], images[:3] + 100, 32)
    assert per_row == 3 and grid[:, 0, 0, 0].tolist() == [0, 1, 2, 100, 101, 102]


def test_cli_eval_ae_prints_psnr_and_writes_the_grid(latent_runs, capsys):
    root, ae_path, _, _ = latent_runs
    write_idx_dataset(root, n=10, split="t10k")
    grid = root / "recon.png"
    assert cli.main(["eval-ae", "--weights", str(ae_path), "--data-dir", str(root), "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    images = load_images(DataConfig(data_dir=str(root), split="test"))
    quality = reconstruction_quality(images, reconstruct(load_autoencoder(str(ae_path)), images))
    assert f"10 images: MSE {quality.mse:.6f}" in out and f"PSNR {quality.psnr:.2f} dB" in out
    assert Image.open(grid).size == (8 * 34 + 2, 2 * 34 + 2)  # whole rows of 8: 8 originals, their reconstructions


def test_exported_autoencoder_is_its_ema_copy(latent_runs, capsys):
    root, ae_path, _, _ = latent_runs
    slim = root / "ae_slim.h5"
    assert cli.main(["export", "--weights", str(ae_path), "--out", str(slim)]) == 0
    ckpt = load_checkpoint(str(slim))
    assert ckpt.ema is None and ckpt.optim is None and ckpt.config == load_checkpoint(str(ae_path)).config
    exported, trained = load_autoencoder(str(slim)), load_autoencoder(str(ae_path))
    for (name, a), (_, b) in zip(exported.named_parameters(), trained.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_latent_model_exported_beside_its_autoencoder_samples_from_any_folder(latent_runs, tmp_path, monkeypatch,
                                                                                capsys):
    """cli.py export --autoencoder: the export names the AE's slim copy relative to its own folder, pinned by the
    weights; it samples what the trained model samples, from another working folder too."""
    root, ae_path, teacher_path, student_path = latent_runs
    ship, elsewhere = tmp_path / "ship", tmp_path / "elsewhere"
    ship.mkdir()
    elsewhere.mkdir()
    assert cli.main(["export", "--weights", str(ae_path), "--out", str(ship / "ae.h5")]) == 0
    for source, name in ((teacher_path, "teacher.h5"), (student_path, "bidm.h5")):
        assert cli.main(["export", "--weights", str(source), "--out", str(ship / name), "--autoencoder",
                         str(ship / "ae.h5")]) == 0
        latent = load_checkpoint(str(ship / name)).config["latent"]
        assert latent["autoencoder"] == "ae.h5" and latent["weights_sha256"] == load_checkpoint(
            str(teacher_path)).config["latent"]["weights_sha256"]
    cfg = SampleConfig(n=2, steps=2, seed=3, batch_size=2)
    expected = draw_images(*load_model(str(teacher_path)), cfg, progress=False)
    monkeypatch.chdir(elsewhere)
    np.testing.assert_array_equal(draw_images(*load_model(str(ship / "teacher.h5")), cfg, progress=False), expected)
    assert cli.main(["sample", "--weights", str(ship / "bidm.h5"), "--n", "1", "--steps", "1", "--out", "s.png"]) == 0

    other = tmp_path / "other"
    assert cli.main(["train-ae", "--data-dir", str(root), *TRAIN, "--seed", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    assert cli.main(["export", "--weights", str(teacher_path), "--out", str(ship / "t2.h5"), "--autoencoder",
                     str(other / "ckpt.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds other weights" in err and "\n" not in err and not (ship / "t2.h5").exists()
    assert cli.main(["export", "--weights", str(ae_path), "--out", str(ship / "a2.h5"), "--autoencoder",
                     str(ship / "ae.h5")]) == 2
    assert "not a latent diffusion model" in capsys.readouterr().err
    (ship / "ae.h5").unlink()  # an export never replaces a file
    assert cli.main(["export", "--weights", str(other / "ckpt.h5"), "--out", str(ship / "ae.h5")]) == 0
    assert cli.main(["sample", "--weights", str(ship / "teacher.h5"), "--n", "1", "--steps", "1"]) == 2
    assert "is not the autoencoder this model was trained on" in capsys.readouterr().err
