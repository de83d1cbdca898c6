"""Finite-difference checks of straight-through backwards against their surrogates.

A binary layer's backward is the exact derivative of the layer with every quantizer q replaced
by its straight-through surrogate around the current point u0:
    q_st(u) = q(u0) + S(u) - S(u0)        (value q(u0) at u0, slope S'(u))
`surrogate_mode(layer)` swaps each quantizer attribute of every sub-layer for such a wrapper,
so `fdcheck.check_module` then checks the hand-written pseudo-gradients. Surrogates have kinks
(clip at +-1, ReSTE's +-0.1 and +-1.5, |W| at 0): `away_from_kinks` and `randomise` keep the
checked values a margin away from them, so no central difference straddles one.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def away_from_kinks(a: np.ndarray, margin: float = 1e-3, kinks: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Push values off 0 and off +-k for every k in `kinks` (sign and clip kinks) so finite differences never
    straddle one."""
    a = np.where(np.abs(a) < margin, margin, a)
    for k in kinks:
        a = np.where(np.abs(np.abs(a) - k) < margin, a + 2 * margin * np.sign(a), a)
    return a


def randomise(layer, rng: np.random.Generator, kinks: tuple[float, ...] = (1.0,)) -> None:
    """Move every parameter off its init (and off the kinks) so all terms of the backward are exercised."""
    for name, p in layer.named_parameters():
        p[...] = away_from_kinks(rng.standard_normal(p.shape) * (0.6 if name.endswith("weight") else 0.3), kinks=kinks)


class StraightThrough:
    """q's value frozen at the first input seen, q's surrogate slope around it."""

    def __init__(self, q) -> None:
        self.q = q
        self.u0 = None

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if self.u0 is None:
            self.u0 = u.copy()
        return self.q(self.u0) + self.q.surrogate(u) - self.q.surrogate(self.u0)

    def __getattr__(self, name):
        return getattr(self.q, name)


def is_quantizer(value) -> bool:
    return callable(value) and hasattr(value, "grad") and hasattr(value, "surrogate")


@contextmanager
def surrogate_mode(model):
    swapped = []
    for _, module in model.named_modules():
        for attr, value in list(vars(module).items()):
            if is_quantizer(value):
                setattr(module, attr, StraightThrough(value))
                swapped.append((module, attr, value))
    assert swapped, "no quantizer found: the layer would be checked without its straight-through estimator"
    try:
        yield
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)

