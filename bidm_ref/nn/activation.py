"""Pointwise activations. Shapes: any; y has the shape of x.

SiLU (swish): y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) with s = sigmoid(x).

sigmoid runs on NumPy's vectorised exp, in place (NumPy's SIMD exp is ~7x faster than scipy's expit and
than the scalar exp a Numba kernel gets, docs/ENGINE.md); the backward is one fused Numba pass
(`silu_backward_kernel`, twin `silu_backward_ref`). The cache is (x, s).
"""

from __future__ import annotations

import numba
import numpy as np

from .module import Module


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in x's dtype; exp overflows to inf for very negative x, which gives exactly 0."""
    s = np.negative(x)                                                            # [...]
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1
    return np.reciprocal(s, out=s)


@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def silu_backward_kernel(x, s, dy, dx):  # pragma: no cover - compiled
    """dx = dy * (s + x s (1 - s)), all flat [M] (s = sigmoid(x))."""
    for i in numba.prange(x.size):
        dx[i] = dy[i] * (s[i] + x[i] * s[i] * (1 - s[i]))


def silu_backward_ref(x: np.ndarray, s: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """NumPy twin of silu_backward_kernel."""
    return dy * (s + x * s * (1 - s))


def flat(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous 1-D view in `dtype` (a copy only when `a` is not contiguous or of another dtype)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


class SiLU(Module):
    """x * sigmoid(x), ddim's `nonlinearity`."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        s = sigmoid(x)                                                            # [...]
        return x * s, (x, s)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, s = cache
        dx = np.empty(x.shape, dtype=x.dtype)                                     # [...]
        silu_backward_kernel(flat(x, x.dtype), flat(s, x.dtype), flat(dy, x.dtype), dx.reshape(-1))
        return dx
