"""Parameter initialisers (float32, drawn from an explicit Generator for determinism)."""

from __future__ import annotations

import numpy as np


def uniform_fan_in(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default Conv2d/Linear init (kaiming_uniform, a=sqrt(5))."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)
