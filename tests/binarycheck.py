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
    """q's value frozen at the point u0 a call is near, q's surrogate slope around it.

    A layer may quantize several different inputs in one loss evaluation (BiDM's cache pass and
    main pass); each first-seen input becomes an anchor u0, and a later call uses the anchor within
    `tol` of it (finite-difference perturbations are ~1e-5, distinct inputs differ by far more).
    """

    def __init__(self, q, tol: float = 1e-3) -> None:
        self.q = q
        self.tol = tol
        self.anchors: list[np.ndarray] = []

    def anchor(self, u: np.ndarray) -> np.ndarray:
        for u0 in self.anchors:
            if u0.shape == u.shape and np.max(np.abs(u0 - u), initial=0.0) <= self.tol:
                return u0
        self.anchors.append(u.copy())
        return self.anchors[-1]

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u0 = self.anchor(u)
        return self.q(u0) + self.q.surrogate(u) - self.q.surrogate(u0)

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

