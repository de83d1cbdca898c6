"""The float engine against PyTorch: one FP training step and one sampling forward per preset, and the BiDM step.

Dimensions: B batch, C, H, W image (the preset's in_channels and resolution).
Run: `python -m bench.bench_train [repeats] [--json PATH]` or `python cli.py bench --what train`.
Cases (seeded random weights and images; timings do not depend on the values):
    fp_train_step       tiny B32, latent B64, cifar10 B8: one whole optimizer step as the Trainer runs it
                        (batch, t and eps draw, forward, backward, grad-norm clip, Adam, EMA)
    sampling_forward    tiny B64, latent B64, cifar10 B8: one eps evaluation of the sampler at t = T/2
    bidm_student_step   tiny B16: the BiDM step (3 passes: TBS cache, FP teacher, student; TBS 2 + SPD), no
                        PyTorch twin (PyTorch has no BiDM layers)
PyTorch twin (only when torch is importable; `pip install -e '.[torch]'`, README "Speed"): ddim's UNet in
PyTorch eager (bench/torch_unet.py) holding the same weights, checked to give the same eps before it is
timed; its training step is zero_grad, forward, the same loss, backward, clip_grad_norm_, torch.optim.Adam
and ddim's EMA update, on the same batch. torch gets as many intra-op threads as the engine's BLAS, and runs in a
process of its own with the environment this one found (bench/torch_worker.py: PyTorch's OpenMP runtime would
otherwise read the wait policy `import bidm_ref` sets). Project and PyTorch calls of a case are timed interleaved
(bench_kernels.time_interleaved, each after a SETTLE_S pause), so a change in load hits both. Ratios (same run):
`<case>_vs_torch_<preset>` = project median / PyTorch median (lower is better; 1.0 = PyTorch's speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bidm_ref.bidm.config import BiDMConfig
from bidm_ref.bidm.objective import BiDMObjective
from bidm_ref.data.batches import BatchSampler
from bidm_ref.diffusion.objective import DenoisingObjective
from bidm_ref.diffusion.schedule import Schedule
from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.models.config import preset
from bidm_ref.bidm.student import build_student
from bidm_ref.models.unet import UNet
from bidm_ref.runtime import current_policy
from bidm_ref.train.adam import AdamConfig
from bidm_ref.train.trainer import Objective, TrainConfig, Trainer

from .bench_kernels import time_interleaved
from .timing import bench_main
from .torch_worker import TorchWorker, torch_installed

PROJECT, TORCH = "bidm-ref (NumPy + Numba)", "PyTorch eager"
TIMESTEPS = 1000
SETTLE_S = 0.05  # sleep before each timed call: the other process's spinning threads (libgomp's 300,000 rounds) stop


@dataclass(frozen=True)
class TrainCase:
    """A preset with its training and sampling batch sizes (issue 16's cases)."""

    preset: str
    train_batch: int
    sample_batch: int

    def label(self, batch: int) -> str:
        cfg = preset(self.preset)
        return f"{self.preset} B{batch} C{cfg.in_channels} {cfg.resolution}x{cfg.resolution}"


TRAIN_CASES = [TrainCase("tiny", 32, 64), TrainCase("latent", 64, 64), TrainCase("cifar10", 8, 8)]
BIDM_CASE = TrainCase("tiny", 16, 16)


def random_images(preset_name: str, count: int) -> np.ndarray:
    """`count` seeded images in [-1, 1], [count, C, H, W] float32 (the training set of a bench trainer)."""
    cfg = preset(preset_name)
    rng = np.random.default_rng(2)
    return rng.uniform(-1, 1, (count, cfg.in_channels, cfg.resolution, cfg.resolution)).astype(np.float32)


def bench_trainer(model: UNet, objective: Objective, preset_name: str, batch: int) -> Trainer:
    """A Trainer over 4 batches of random images (never checkpointed: the bench calls train_step only)."""
    batches = BatchSampler(random_images(preset_name, 4 * batch), batch, seed=0, hflip=False)
    cfg = TrainConfig(steps=10**6, batch_size=batch, out_dir="unused-bench-run")
    return Trainer(model, objective, batches, cfg, AdamConfig(), run_config={})


def sample_input(cfg, batch: int) -> np.ndarray:
    """x ~ N(0, I) [batch, C, H, W] float32, seed 1."""
    return np.random.default_rng(1).standard_normal((batch, cfg.in_channels, cfg.resolution, cfg.resolution)).astype(
        np.float32)


def rows(name: str, label: str, timings: dict[str, dict]) -> list[dict]:
    return [{"name": name, "shape": label, "impl": impl, **timing} for impl, timing in timings.items()]


def bench_case(case: TrainCase, repeats: int) -> tuple[list[dict], dict]:
    """Result rows and ratios of one preset: the training step and the sampling forward, each vs PyTorch (in its own
    process, torch_worker.py, timed in turn with the project's calls after a SETTLE_S pause)."""
    cfg = preset(case.preset)
    teacher = UNet(cfg, rng=np.random.default_rng(0))
    trainer = bench_trainer(teacher, DenoisingObjective(teacher, Schedule()), case.preset, case.train_batch)
    x = sample_input(cfg, case.sample_batch)                                      # [B, C, H, W]
    t = np.full(case.sample_batch, TIMESTEPS // 2)                                # [B]
    eps_fn = sampling_eps_fn(teacher)
    train_runs = {PROJECT: trainer.train_step}
    sample_runs = {PROJECT: lambda: eps_fn(x, t)}
    worker = None
    if torch_installed():
        worker = TorchWorker(case.preset, case.train_batch, case.sample_batch, current_policy().blas_threads)
        train_runs[TORCH], sample_runs[TORCH] = (lambda: worker.run("train")), (lambda: worker.run("sample"))
    try:
        results = rows("fp_train_step", case.label(case.train_batch), time_interleaved(train_runs, repeats, SETTLE_S))
        results += rows("sampling_forward", case.label(case.sample_batch),
                        time_interleaved(sample_runs, repeats, SETTLE_S))
    finally:
        if worker is not None:
            worker.close()
    ratios = {}
    if worker is not None:
        for name in ("fp_train_step", "sampling_forward"):
            median = {row["impl"]: row["median_s"] for row in results if row["name"] == name}
            ratios[f"{name}_vs_torch_{case.preset}"] = median[PROJECT] / median[TORCH]
    return results, ratios


def bench_bidm_step(repeats: int, case: TrainCase = BIDM_CASE) -> list[dict]:
    """The BiDM student step (TBS 2 connections + SPD, BiDMConfig's defaults) on `case`'s preset and train batch."""
    cfg = preset(case.preset)
    rng = np.random.default_rng(0)
    teacher = UNet(cfg, rng=rng)
    bidm = BiDMConfig()
    student = build_student(cfg, "bidm", teacher.state_dict(), rng, bidm.tbs_connections, TIMESTEPS)
    trainer = bench_trainer(student, BiDMObjective(student, teacher, Schedule(), bidm), case.preset, case.train_batch)
    return rows("bidm_student_step", case.label(case.train_batch), time_interleaved({PROJECT: trainer.train_step},
                                                                                    repeats))


def bench_train(repeats: int = 5, cases: list[TrainCase] = TRAIN_CASES) -> tuple[list[dict], dict]:
    """(result rows in the bench/timing.py format, ratios); see the module docstring."""
    results, ratios = bench_bidm_step(repeats), {}
    for case in cases:
        more_rows, more_ratios = bench_case(case, repeats)
        results += more_rows
        ratios.update(more_ratios)
    return results, ratios


if __name__ == "__main__":
    bench_main("FP training step and sampling forward vs PyTorch; the BiDM step", bench_train, 5)
