"""`cli.py score`: cells per (model, seed), the seed spread in the table, resume, refusal of mixed protocols."""

from __future__ import annotations

import json
import os
from unittest import mock

import numpy as np
import pytest

from bidm_ref.experiments import scoring
from bidm_ref.experiments.config import ScoreConfig
from bidm_ref.experiments.scoring import score_models, spread
from bidm_ref.data.images import load_npz_batch
from bidm_ref.metrics.classifier import FeatureClassifier, save_classifier
from test_trainer import micro_teacher


@pytest.fixture
def setting(tmp_path, monkeypatch):
    """A 1-step MICRO teacher, a random classifier, and compute_metrics replaced by a seed-revealing fake."""
    data, teacher = micro_teacher(tmp_path, train_images=16)
    classifier = tmp_path / "clf.h5"
    save_classifier(FeatureClassifier(1, 10, rng=np.random.default_rng(0)), str(classifier), "fashion-mnist", 0.1)

    def fake_metrics(samples, reference, metrics, inception_path, cache_dir, progress):
        fid = float(samples.astype(np.float64).mean())                            # differs between seeds
        return {"fid": fid, "sfid": 2 * fid, "precision": 0.5, "recall": 0.25, "n_reference": 12}

    monkeypatch.setattr(scoring, "compute_metrics", fake_metrics)
    cfg = ScoreConfig(classifier=str(classifier), n=3, seeds=(0, 1), sample_steps=2, reference_images=12)
    return data, cfg, teacher, tmp_path / "score"


def test_spread_is_mean_and_range():
    assert spread([1.0, 3.0], 1) == "2.0 (1.0-3.0)"
    assert spread([0.25], 3) == "0.250"


def test_cells_table_and_resume(setting):
    data, cfg, teacher, out = setting
    table = score_models({"FP": teacher}, cfg, data, str(out), progress=False)
    cells = [json.loads((out / "FP" / f"seed-{seed}.json").read_text()) for seed in (0, 1)]
    batches = [load_npz_batch(out / "FP" / f"samples-seed-{seed}.npz") for seed in (0, 1)]
    assert batches[0].shape == (3, 32, 32, 1) and not np.array_equal(batches[0], batches[1])
    fids = [cell["fid"] for cell in cells]
    assert fids[0] != fids[1]
    assert f"| FP | 2 of 2 | {np.mean(fids):.2f} ({min(fids):.2f}-{max(fids):.2f}) |" in table
    assert all(cell["fd_clf"] >= 0 and 0 <= cell["confident"] <= 1 and cell["s_per_image"] > 0 for cell in cells)
    assert "| real test images | - |" in table
    stamp = os.path.getmtime(out / "FP" / "seed-0.json")
    untouched = AssertionError("a finished run loads no model or reference images (only the classifier's weights)")
    with mock.patch.object(scoring, "load_model", side_effect=untouched), \
            mock.patch.object(scoring, "load_images", side_effect=untouched):
        assert score_models({"FP": teacher}, cfg, data, str(out), progress=False) == table   # nothing recomputed
    assert os.path.getmtime(out / "FP" / "seed-0.json") == stamp


def test_the_same_seed_draws_the_same_samples(setting, tmp_path):
    data, cfg, teacher, out = setting
    one = ScoreConfig(**{**cfg.__dict__, "seeds": (1,)})
    score_models({"FP": teacher}, one, data, str(tmp_path / "a"), progress=False)
    score_models({"FP": teacher}, cfg, data, str(out), progress=False)
    assert (tmp_path / "a" / "FP" / "samples-seed-1.npz").read_bytes() == (out / "FP" / "samples-seed-1.npz").read_bytes()


def test_a_cell_of_another_protocol_is_refused(setting):
    data, cfg, teacher, out = setting
    score_models({"FP": teacher}, ScoreConfig(**{**cfg.__dict__, "seeds": (0,)}), data, str(out), progress=False)
    with pytest.raises(ValueError, match="seed-0.json was made with"):
        score_models({"FP": teacher}, ScoreConfig(**{**cfg.__dict__, "n": 4}), data, str(out), progress=False)
    cell_path = out / "FP" / "seed-0.json"
    cell = json.loads(cell_path.read_text())
    assert (cell["sampler"], cell["eta"], cell["clip_x0"]) == ("ddim", 0.0, True)  # SampleConfig's defaults, recorded
    for key, other in (("eta", 1.0), ("clip_x0", False), ("sampler", "ddpm")):
        cell_path.write_text(json.dumps({**cell, key: other}))                  # a cell of another sampler
        with pytest.raises(ValueError, match="seed-0.json was made with"):
            score_models({"FP": teacher}, ScoreConfig(**{**cfg.__dict__, "seeds": (0,)}), data, str(out), progress=False)


def test_scoring_one_model_keeps_the_rows_of_models_scored_before(setting):
    data, cfg, teacher, out = setting
    score_models({"FP": teacher}, cfg, data, str(out), progress=False)
    table = score_models({"FP again": teacher}, cfg, data, str(out), progress=False)
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["| model", "| FP again", "| FP", "| real test images"]


def test_pending_rows_and_bad_input(setting):
    data, cfg, teacher, out = setting
    text = scoring.write_score_table(str(out), ["FP"], cfg)
    assert "| FP | 0 of 2 | pending |" in text
    with pytest.raises(FileNotFoundError, match="'BiDM'"):
        score_models({"BiDM": str(out / "missing.h5")}, cfg, data, str(out), progress=False)
    with pytest.raises(ValueError, match="distinct --seeds"):
        ScoreConfig(classifier="c.h5", seeds=(0, 0))


def test_cli_score_refuses_a_model_without_a_label(capsys):
    import cli

    assert cli.main(["score", "runs/bidm/ckpt.h5", "--classifier", "c.h5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LABEL=CHECKPOINT" in err[0]


def test_other_classifier_weights_recompute_the_classifier_columns_from_the_saved_samples(setting, tmp_path):
    data, cfg, teacher, out = setting
    score_models({"FP": teacher}, cfg, data, str(out), progress=False)
    before = json.loads((out / "FP" / "seed-0.json").read_text())
    other = tmp_path / "other.h5"
    save_classifier(FeatureClassifier(1, 10, rng=np.random.default_rng(7)), str(other), "fashion-mnist", 0.1)
    other_cfg = ScoreConfig(**{**cfg.__dict__, "classifier": str(other)})
    untouched = AssertionError("only the classifier columns are recomputed: no model is loaded, nothing is sampled")
    with mock.patch.object(scoring, "load_model", side_effect=untouched):
        score_models({"FP": teacher}, other_cfg, data, str(out), progress=False)
    after = json.loads((out / "FP" / "seed-0.json").read_text())
    assert after["classifier_sha256"] != before["classifier_sha256"] and after["fd_clf"] != before["fd_clf"]
    assert {k: v for k, v in after.items() if k not in scoring.CLASSIFIER_KEYS} == \
        {k: v for k, v in before.items() if k not in scoring.CLASSIFIER_KEYS}
    fresh = tmp_path / "fresh"                                                    # the same numbers as a new cell
    score_models({"FP": teacher}, other_cfg, data, str(fresh), progress=False)
    assert json.loads((fresh / "FP" / "seed-0.json").read_text())["fd_clf"] == after["fd_clf"]
    (out / "FP" / "samples-seed-1.npz").unlink()
    with pytest.raises(FileNotFoundError, match="delete the json"):
        score_models({"FP": teacher}, cfg, data, str(out), progress=False)
