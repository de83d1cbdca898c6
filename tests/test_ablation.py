"""The ablation runner on fixtures: rows train, sample and score; finished rows are not rerun."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bidm_ref.experiments import ablation
from bidm_ref.experiments.ablation import AblationConfig, ablation_rows, run_ablation
from test_trainer import micro_teacher


def test_rows_cover_the_paper_table():
    names = [row.name for row in ablation_rows(6)]
    assert names[:6] == ["FP", "XNOR (Vanilla)", "XNOR++", "DoReFa", "ReActNet", "ReSTE"]
    assert "BiDM, TBS all (6)" in names and len({row.slug for row in ablation_rows(6)}) == len(names)
    assert [row.slug for row in ablation_rows(6)][1:3] == ["xnor_vanilla", "xnorpp"]


def test_unknown_row_is_refused_before_any_work(tmp_path):
    data, teacher = micro_teacher(tmp_path, train_images=8, test_images=0)
    cfg = AblationConfig(teacher=teacher, out=str(tmp_path / "res"))
    with pytest.raises(ValueError, match=r"unknown ablation rows \['xnor\+\+'\]: choose from fp, xnor_vanilla"):
        run_ablation(cfg, data, only=["xnor++"], progress=False)
    assert not (tmp_path / "res").exists()


def test_ablation_runs_scores_and_resumes(tmp_path):
    data, teacher = micro_teacher(tmp_path)
    cfg = AblationConfig(teacher=teacher, out=str(tmp_path / "res"), steps=2, batch_size=4,
                         n_samples=4, sample_steps=2, eval_images=12, classifier_steps=2,
                         inception=str(tmp_path / "no_inception.h5"))
    table = run_ablation(cfg, data, only=["fp", "bidm"], progress=False)
    assert "| FP | 32/32 | 0 | none | - |" in table and "| BiDM | 1/1 | 2 | spd |" in table
    assert "| ReSTE | 1/1 | 0 | none | pending | | | | | | |" in table
    assert table.count("| - | - | - | - |") == 2  # no Inception weights: those columns stay empty
    result = tmp_path / "res" / "rows" / "bidm" / "result.json"
    stamp = os.path.getmtime(result)
    scores = json.loads(result.read_text())
    assert scores["fd_clf"] >= 0 and scores["final_loss"] > 0
    assert (tmp_path / "res" / "rows" / "bidm" / "samples.png").exists()
    run_ablation(cfg, data, only=["fp", "bidm"], progress=False)
    assert os.path.getmtime(result) == stamp
    assert (tmp_path / "res" / "ablation.md").read_text() == table


def test_inception_columns_filled_when_weights_exist(tmp_path, monkeypatch):
    data, teacher = micro_teacher(tmp_path)
    weights = tmp_path / "inception.h5"
    weights.write_bytes(b"stand-in: compute_metrics is replaced below")
    calls = []

    def fake_metrics(samples, reference, metrics, inception_path, cache_dir, progress):
        calls.append((samples.dtype, samples.shape, reference.name, metrics, inception_path))
        return {"fid": 12.25, "sfid": 3.5, "precision": 0.5, "recall": 0.25}

    monkeypatch.setattr(ablation, "compute_metrics", fake_metrics)
    cfg = AblationConfig(teacher=teacher, out=str(tmp_path / "res"), steps=1, batch_size=4,
                         n_samples=4, sample_steps=2, eval_images=12, classifier_steps=2, inception=str(weights),
                         fid_reference_images=12)
    table = run_ablation(cfg, data, only=["fp"], progress=False)
    assert calls == [(np.uint8, (4, 32, 32, 1), "fashion-mnist-test-12", ("fid", "sfid", "pr"), str(weights))]
    assert "| 12.2 | 3.5 | 0.500 | 0.250 |" in table
