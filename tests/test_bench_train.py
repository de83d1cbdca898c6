"""bench/bench_train.py without PyTorch (CI has none): the project's rows are timed, no ratio is invented."""

from __future__ import annotations

import sys
from unittest import mock

from bench.bench_train import PROJECT, TORCH, TrainCase, bench_case


def test_without_torch_the_bench_times_the_project_alone_and_reports_no_ratio():
    with mock.patch.dict(sys.modules, {"torch": None}):                           # `import torch` raises ImportError
        rows, ratios = bench_case(TrainCase("tiny", 2, 2), repeats=1)
    assert ratios == {}
    assert [(row["name"], row["impl"]) for row in rows] == [("fp_train_step", PROJECT), ("sampling_forward", PROJECT)]
    assert all(row["median_s"] > 0 and row["repeats"] == 1 for row in rows)
    assert TORCH not in {row["impl"] for row in rows}
