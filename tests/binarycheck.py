"""Finite-difference checks of straight-through backwards against their surrogates.

A binary layer's backward is the exact derivative of the layer with every quantizer q replaced
by its straight-through surrogate around the current point u0:
    q_st(u) = q(u0) + S(u) - S(u0)        (value q(u0) at u0, slope S'(u))
`surrogate_mode(layer)` swaps each quantizer attribute of every sub-layer for such a wrapper,
so `fdcheck.check_module` then checks the hand-written pseudo-gradients.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def away_from_kinks(a: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Push values off 0 and +-1 (sign and clip kinks) so finite differences never straddle one."""
    a = np.where(np.abs(a) < margin, margin, a)
    return np.where(np.abs(np.abs(a) - 1) < margin, a + 2 * margin * np.sign(a), a)


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
