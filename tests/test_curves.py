"""Snapshots during training and learning curves (experiments/curves.py, `cli.py curve`) on a micro run and IDX fixture."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest

import cli
from bidm_ref.experiments import curves
from bidm_ref.experiments.curves import COLUMNS, CurveConfig, CurvePoint, curve, snapshots
from bidm_ref.data.datasets import DataConfig, load_images
from bidm_ref.diffusion.generate import SampleConfig
from bidm_ref.metrics.classifier import FeatureClassifier, confident_share, fd_clf, load_classifier, save_classifier
from bidm_ref.loading.load import load_model
from bidm_ref.storage.checkpoint import load_checkpoint
from test_trainer import make_trainer, write_idx_dataset


def test_snapshots_hold_the_ema_weights_of_their_step(tmp_path):
    trainer = make_trainer(tmp_path / "run", 5)
    trainer.cfg = replace(trainer.cfg, snapshot_every=2)
    shadows = {}
    while trainer.step < 5:
        trainer.train_step()
        if trainer.step % 2 == 0:
            trainer.snapshot()
            shadows[trainer.step] = {k: v.copy() for k, v in trainer.ema.state_dict().items()}
    assert [step for step, _ in snapshots(str(tmp_path / "run"))] == [2, 4]
    for step, path in snapshots(str(tmp_path / "run")):
        ckpt = load_checkpoint(path)
        assert ckpt.step == step and ckpt.optim is None and ckpt.ema is None
        for name, value in shadows[step].items():
            np.testing.assert_array_equal(ckpt.params[name], value)
        load_model(path)                                                          # samplable as it is


def test_trainer_run_writes_snapshots_every_k_steps(tmp_path):
    trainer = make_trainer(tmp_path / "run", 6)
    trainer.cfg = replace(trainer.cfg, snapshot_every=3)
    trainer.run(progress=False)
    assert [step for step, _ in snapshots(str(tmp_path / "run"))] == [3, 6]


def test_a_run_without_snapshots_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--snapshot-every"):
        snapshots(str(tmp_path))


def test_curve_measures_each_snapshot_once_and_plots(tmp_path):
    write_idx_dataset(tmp_path, n=24, split="t10k")
    trainer = make_trainer(tmp_path / "run", 4)
    trainer.cfg = replace(trainer.cfg, snapshot_every=2)
    trainer.run(progress=False)
    classifier = tmp_path / "clf.h5"
    save_classifier(FeatureClassifier(1, 10, rng=np.random.default_rng(0)), str(classifier), "fixture", 0.1)
    cfg = CurveConfig(SampleConfig(n=6, steps=2, seed=0, batch_size=6),
                      DataConfig(name="fashion-mnist", data_dir=str(tmp_path), split="test", limit=12))
    drawn_images = []
    real_draw = curves.draw_images

    def draw_and_keep(*args):
        drawn_images.append(np.clip(real_draw(*args), -1, 1))
        return drawn_images[-1]

    with mock.patch.object(curves, "draw_images", side_effect=draw_and_keep):
        points = curve(str(tmp_path / "run"), str(classifier), cfg, progress=False)
    assert [p.step for p in points] == [2, 4]
    model, reference = load_classifier(str(classifier)), load_images(cfg.reference)
    for point, images in zip(points, drawn_images):                           # each point measures its own samples
        assert point.fd_clf == pytest.approx(fd_clf(model, images, reference), rel=1e-6)
        assert point.confident == confident_share(model, images)
    with mock.patch.object(curves, "draw_images", side_effect=AssertionError("cached points are not redrawn")):
        again = curve(str(tmp_path / "run"), str(classifier), cfg, progress=False)
    assert again == [CurvePoint(p.step, round(p.fd_clf, 6), round(p.confident, 6)) for p in points]
    tsv = tmp_path / "run" / "curve.tsv"
    settings, columns, *rows = tsv.read_text().splitlines()
    assert columns == COLUMNS
    tsv.write_text("\n".join([settings, "step\tfd_clf", *(row.rsplit("\t", 1)[0] for row in rows)]) + "\n")
    assert curves.read_curve(str(tsv), settings[2:]) == {}                    # the older two-column layout: measured again
    other = CurveConfig(SampleConfig(n=6, steps=3, seed=0, batch_size=6), cfg.reference)
    assert curves.read_curve(str(tmp_path / "run" / "curve.tsv"), "other settings") == {}
    assert len(curve(str(tmp_path / "run"), str(classifier), other, progress=False)) == 2  # new settings: remeasured
    another = tmp_path / "clf2.h5"
    save_classifier(FeatureClassifier(1, 10, rng=np.random.default_rng(1)), str(another), "fixture", 0.1)
    with mock.patch.object(curves, "draw_images", wraps=curves.draw_images) as drawn:
        curve(str(tmp_path / "run"), str(another), other, progress=False)        # another classifier: measured again
    assert drawn.call_count == 2

    png = tmp_path / "curve.png"
    assert cli.main(["curve", str(tmp_path / "run"), "--classifier", str(tmp_path / "clf.h5"), "--out", str(png),
                     "--n", "6", "--sample-steps", "2", "--eta", "1", "--data-dir", str(tmp_path),
                     "--reference-images", "12"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"eta": 1.0' in tsv.read_text().splitlines()[0]                   # the settings line: eta 1 measured anew
    assert cli.main(["curve", str(tmp_path / "run"), "--classifier", str(tmp_path / "clf.h5"),
                     "--labels", "a", "b"]) == 2


def test_train_classifier_command_writes_a_loadable_classifier(tmp_path, capsys):
    from bidm_ref.metrics.classifier import load_classifier

    write_idx_dataset(tmp_path, n=32)
    write_idx_dataset(tmp_path, n=20, split="t10k")
    out = tmp_path / "clf.h5"
    assert cli.main(["train-classifier", "--out", str(out), "--steps", "3", "--data-dir", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert load_checkpoint(str(out)).config["classifier"]["dataset"] == "fashion-mnist"
    load_classifier(str(out))
