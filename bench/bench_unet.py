"""Whole-model sampling step: the FP UNet (float32) vs the packed BiDM student, same preset and batch.

Dimensions: N batch, C, H, W image (the preset's in_channels and resolution).
Run: `python -m bench.bench_unet [repeats] [--json PATH]` or `python cli.py bench --what unet`.
Models (seeded random init; timings do not depend on the values):
    float32 FP UNet              UNet(preset), the teacher (presets tiny, latent: the 8x8x4 latent UNet, cifar10)
    packed BiDM student          packed_twin of the BiDM student built from that teacher (build_student)
                                 with TBS over 2 decoder units (BiDM's default): popcount convs and linears
    float-sim BiDM student       the same student on its float-simulated binary layers (what training runs)
One step = one call of the sampler's eps function (sampling_eps_fn: UNet forward, TBS remember) at
t = T/2 on x ~ N(0, I) [N, C, H, W]; the warm-up call primes the TBS cache, so every timed step mixes as
in the sampler's steady state. Implementations of a case are timed interleaved (bench_kernels.time_interleaved).
Ratios (same run): packed_vs_fp_unet_step = geometric mean over the cifar10 cases (N = 1, 8) of FP median
/ packed median; per case `packed_vs_fp_unet_step_<preset>_n<N>` and `simulated_vs_fp_unet_step_...`.
Threads: as bench_kernels (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS). On a machine whose cores other
processes use, Numba's default OpenMP layer makes every parallel region wait for a descheduled worker
(~10 ms per kernel launch, hundreds of launches per step): measure with NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1, or NUMBA_THREADING_LAYER=workqueue, and report which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.models.config import preset
from bidm_ref.loading.packed import packed_twin
from bidm_ref.bidm.student import build_student
from bidm_ref.models.unet import UNet

from .bench_kernels import geometric_mean, time_interleaved
from .timing import bench_main

TIMESTEPS = 1000
TBS_CONNECTIONS = 2
FP, PACKED, SIMULATED = "float32 FP UNet", "packed BiDM student", "float-sim BiDM student"


@dataclass(frozen=True)
class StepCase:
    preset: str
    batch: int

    def label(self) -> str:
        cfg = preset(self.preset)
        return f"{self.preset} N{self.batch} C{cfg.in_channels} {cfg.resolution}x{cfg.resolution}"


UNET_CASES = [StepCase(p, n) for p in ("tiny", "latent", "cifar10") for n in (1, 8)]


def step_models(preset_name: str) -> dict[str, UNet]:
    """The three models of the module docstring for a preset."""
    cfg = preset(preset_name)
    rng = np.random.default_rng(0)
    teacher = UNet(cfg, rng=rng)
    student = build_student(cfg, "bidm", teacher.state_dict(), rng, TBS_CONNECTIONS, TIMESTEPS)
    return {FP: teacher, PACKED: packed_twin(student, "bidm", TIMESTEPS), SIMULATED: student}


def bench_case(case: StepCase, models: dict[str, UNet], repeats: int) -> list[dict]:
    """One row per model: median and min seconds of one sampling step; extra key load_1min."""
    cfg = models[FP].cfg
    x = np.random.default_rng(1).standard_normal((case.batch, cfg.in_channels, cfg.resolution, cfg.resolution))
    x = x.astype(np.float32)                                                      # [N, C, H, W]
    t = np.full(case.batch, TIMESTEPS // 2)                                       # [N]
    eps_fns = {impl: sampling_eps_fn(model) for impl, model in models.items()}
    timings = time_interleaved({impl: lambda fn=fn: fn(x, t) for impl, fn in eps_fns.items()}, repeats)
    extra = {"load_1min": os.getloadavg()[0]}
    return [{"name": "unet_sampling_step", "shape": case.label(), "impl": impl, **timings[impl], **extra}
            for impl in models]


def speedup(results: list[dict], case: StepCase, impl: str) -> float:
    """FP median / `impl` median of one case."""
    median = {(row["shape"], row["impl"]): row["median_s"] for row in results}
    return median[(case.label(), FP)] / median[(case.label(), impl)]


def bench_unet(repeats: int = 5, cases: list[StepCase] = UNET_CASES) -> tuple[list[dict], dict]:
    """(result rows in the bench/timing.py format, ratios) for `cases`; see the module docstring."""
    results = []
    for preset_name in dict.fromkeys(case.preset for case in cases):
        models = step_models(preset_name)
        results += [row for case in cases if case.preset == preset_name for row in bench_case(case, models, repeats)]
    ratios = {}
    for case in cases:
        ratios[f"packed_vs_fp_unet_step_{case.preset}_n{case.batch}"] = speedup(results, case, PACKED)
        ratios[f"simulated_vs_fp_unet_step_{case.preset}_n{case.batch}"] = speedup(results, case, SIMULATED)
    cifar = [speedup(results, case, PACKED) for case in cases if case.preset == "cifar10"]
    if cifar:
        ratios["packed_vs_fp_unet_step"] = geometric_mean(cifar)
    return results, ratios


if __name__ == "__main__":
    bench_main("one sampling step: FP UNet vs packed BiDM student", bench_unet, 5)
