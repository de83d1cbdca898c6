"""Packed vs float-simulated BiDM student: how closely 1-bit inference reproduces the model training ran.

Dimensions: N images, C, H, W image (what the model samples: pixels, or latents before decoding).
Run: `python -m bench.bench_agreement [--json PATH]`, `python cli.py bench --what agreement`, or on a trained float
student: `python cli.py bench --what agreement --student runs/bidm/ckpt.h5` (its EMA weights).
Models: the float-simulated student (what `cli.py train` runs) and its packed twin (loading/packed.packed_twin: the
same weights packed to 1-bit words); without --student, the seeded random BiDM student of the tiny preset that
bench_unet times (TBS over 2 decoder units). Both draw from the same x_T (SampleConfig seed 0, DDIM, eta 0):
    eps_max_diff        max |eps_packed - eps_float| of the first sampler step       (eps_max_abs: max |eps_float|)
    equal_pixel_share   after AGREE_STEPS steps, the share of equal uint8 pixels of the N images (a latent
                        student's are decoded by its autoencoder first)
The two paths differ by float rounding alone: the popcount sums are exact integers, the float path sums
+-1 * alpha products in another order. TBS carries a difference from step to step, so the pixel share, not the
step-1 eps, is what a user sees. Deterministic for given weights: no timings, no threads involved.
"""

from __future__ import annotations

import numpy as np

from bidm_ref.binary.packed_layers import packed_layers
from bidm_ref.data.images import to_uint8
from bidm_ref.diffusion.generate import SampleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.loading.packed import packed_twin, refuse_unpackable
from bidm_ref.loading.sampling import decoder_of, draw_batch
from bidm_ref.models.autoencoder import Autoencoder
from bidm_ref.models.unet import UNet

from .bench_unet import PACKED, SIMULATED, TIMESTEPS, step_models
from .timing import bench_main

AGREE_STEPS = 50  # sampler steps of the pixel comparison (issue 18's protocol)
AGREE_IMAGES = 16  # N


def sampled(model: UNet, run_config: dict, ae: Autoencoder | None, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """(eps [N, C, H, W] of the sampler's first step, uint8 images [N, H, W, C] at the end) of batch 0 of `cfg`."""
    first: list[np.ndarray] = []
    keep_first = lambda step, t, x, eps: first.append(eps.copy()) if step == 0 else None  # noqa: E731
    images = draw_batch(model, run_config, ae, cfg, 0, keep_first)               # [N, C, H, W]
    return first[0], to_uint8(np.clip(images, -1, 1))


def agreement(student: UNet, packed: UNet, run_config: dict, n: int = AGREE_IMAGES, steps: int = AGREE_STEPS) -> dict:
    """{eps_max_diff, eps_max_abs, equal_pixel_share} of a float student and its packed twin (module docstring)."""
    cfg = SampleConfig(n=n, steps=steps, eta=0.0, seed=0, batch_size=n)
    ae = decoder_of(run_config)
    eps_float, pixels_float = sampled(student, run_config, ae, cfg)               # [N, C, H, W], [N, H, W, C]
    eps_packed, pixels_packed = sampled(packed, run_config, ae, cfg)              # [N, C, H, W], [N, H, W, C]
    return {"eps_max_diff": float(np.max(np.abs(eps_packed - eps_float))), "eps_max_abs": float(np.max(np.abs(eps_float))),
            "equal_pixel_share": float(np.mean(pixels_float == pixels_packed))}


def trained_pair(path: str) -> tuple[UNet, UNet, dict]:
    """(float student, packed twin, run config) of a float student checkpoint of `cli.py train`."""
    student, run_config = load_model(path)
    if "student" not in run_config:
        raise ValueError(f"{path} is not a binary student: pass the checkpoint of `cli.py train --method bidm`")
    if packed_layers(student):
        raise ValueError(f"{path} is already packed: pass the float student checkpoint it was exported from")
    refuse_unpackable(run_config, path)
    method = run_config["student"]["method"]
    return student, packed_twin(student, method, run_config["schedule"]["num_timesteps"]), run_config


def bench_agreement(repeats: int = 0, student_path: str | None = None) -> tuple[list[dict], dict]:
    """(no timing rows, the agreement entries) of a trained student, or of the random tiny one; `repeats` unused
    (every suite takes it)."""
    if student_path is None:
        models = step_models("tiny")
        pair = (models[SIMULATED], models[PACKED], {"schedule": {"num_timesteps": TIMESTEPS}})
        label = "tiny_random"
    else:
        pair, label = trained_pair(student_path), "student"
    return [], {f"agreement_{label}_{key}": value for key, value in agreement(*pair).items()}


if __name__ == "__main__":
    bench_main("packed vs float-simulated BiDM student: step-1 eps and pixels after 50 steps", bench_agreement, 0)
