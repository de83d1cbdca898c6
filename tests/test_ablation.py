"""The ablation runner on fixtures: rows train, sample and score; finished rows are not rerun."""

from __future__ import annotations

import json
import os

from bidm_ref.bidm.ablation import AblationConfig, ablation_rows, run_ablation
from bidm_ref.data.datasets import DataConfig
from bidm_ref.diffusion.schedule import ScheduleConfig
from bidm_ref.train.adam import AdamConfig
from bidm_ref.train.run import train
from bidm_ref.train.trainer import TrainConfig
from test_trainer import MICRO, write_idx_dataset


def test_rows_cover_the_paper_table():
    names = [row.name for row in ablation_rows(6)]
    assert names[:6] == ["FP", "XNOR (Vanilla)", "XNOR++", "DoReFa", "ReActNet", "ReSTE"]
    assert "BiDM, TBS all (6)" in names and len({row.slug for row in ablation_rows(6)}) == len(names)


def test_ablation_runs_scores_and_resumes(tmp_path):
    write_idx_dataset(tmp_path, n=24, split="train")
    write_idx_dataset(tmp_path, n=12, split="t10k")
    data = DataConfig(name="fashion-mnist", data_dir=str(tmp_path))
    train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, batch_size=4, out_dir=str(tmp_path / "t")),
          model_cfg=MICRO, progress=False)
    cfg = AblationConfig(teacher=str(tmp_path / "t" / "ckpt.h5"), out=str(tmp_path / "res"), steps=2, batch_size=4,
                         n_samples=4, sample_steps=2, eval_images=12, classifier_steps=2)
    table = run_ablation(cfg, data, only=["fp", "bidm"], progress=False)
    assert "| FP | 32/32 | 0 | none | - |" in table and "| BiDM | 1/1 | 2 | spd |" in table
    assert "| ReSTE | 1/1 | 0 | none | pending | | |" in table
    result = tmp_path / "res" / "rows" / "bidm" / "result.json"
    stamp = os.path.getmtime(result)
    scores = json.loads(result.read_text())
    assert scores["fd_clf"] >= 0 and scores["final_loss"] > 0
    assert (tmp_path / "res" / "rows" / "bidm" / "samples.png").exists()
    run_ablation(cfg, data, only=["fp", "bidm"], progress=False)
    assert os.path.getmtime(result) == stamp
    assert (tmp_path / "res" / "ablation.md").read_text() == table
