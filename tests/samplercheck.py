"""What a TBS student's sampler passes between steps: the mixer's cache before each step and each step's outputs."""

from __future__ import annotations

import numpy as np

from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.diffusion.samplers import sample_ddim
from bidm_ref.diffusion.schedule import Schedule
from bidm_ref.models.unet import UNet


def sampler_caches(student: UNet, x_T: np.ndarray, steps: int) -> tuple[list[dict | None], list[dict]]:
    """(the mixer's cache at the start of each DDIM step (None: no cache), every feature point's output of each
    step), recorded around the student's forward during one trajectory from x_T."""
    eps_fn = sampling_eps_fn(student)
    caches, outputs = [], []
    original = student.forward

    def recording_forward(x, t, rng=None):
        caches.append(None if student.mixer.cache is None else dict(student.mixer.cache))
        out, cache = original(x, t, rng)
        outputs.append({p: h.copy() for p, h in UNet.point_outputs(cache).items()})
        return out, cache

    student.forward = recording_forward
    try:
        sample_ddim(eps_fn, x_T, Schedule(), steps)
    finally:
        del student.forward
    return caches, outputs
