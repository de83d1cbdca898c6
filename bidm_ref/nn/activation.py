"""Pointwise activations. Shapes: any; y has the shape of x.

SiLU (swish): y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) with s = sigmoid(x).

The forward and backward are Numba kernels over the flat array (prange; an element's value does not
depend on the thread count). They compile with LLVM's `afn` flag, which lets it vectorise exp with its
own approximation (within 1 ulp of float32); `silu_ref` and `silu_backward_ref` are the NumPy twins
(scipy's expit) the tests compare them with. The backward recomputes sigmoid(x) instead of caching it.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.special import expit

from .module import Module

FAST_EXP = {"afn", "contract"}  # vectorised exp; no assumptions about NaN or infinity


@numba.njit(cache=True, fastmath=FAST_EXP, inline="always")
def silu_scalar(v, one):  # pragma: no cover - compiled
    """v * sigmoid(v) = v / (1 + exp(-v)); `one` is 1 in v's dtype (no float64 promotion)."""
    return v / (one + np.exp(-v))


@numba.njit(cache=True, fastmath=FAST_EXP, inline="always")
def silu_grad_scalar(v, one):  # pragma: no cover - compiled
    """d silu / dv = s + v s (1 - s), s = sigmoid(v)."""
    s = one / (one + np.exp(-v))
    return s + v * s * (one - s)


@numba.njit(cache=True, parallel=True, fastmath=FAST_EXP)
def silu_kernel(x, y, one):  # pragma: no cover - compiled
    """y = silu(x), both flat [M]; `one` is 1 in their dtype."""
    for i in numba.prange(x.size):
        y[i] = silu_scalar(x[i], one)


@numba.njit(cache=True, parallel=True, fastmath=FAST_EXP)
def silu_backward_kernel(x, dy, dx, one):  # pragma: no cover - compiled
    """dx = dy * silu'(x), all flat [M]; `one` is 1 in their dtype."""
    for i in numba.prange(x.size):
        dx[i] = dy[i] * silu_grad_scalar(x[i], one)


def silu_ref(x: np.ndarray) -> np.ndarray:
    """NumPy twin of silu_kernel (scipy's expit: no overflow for large |x|)."""
    return x * expit(x)


def silu_backward_ref(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """NumPy twin of silu_backward_kernel."""
    s = expit(x)
    return dy * (s + x * s * (1 - s))


def flat(a: np.ndarray) -> np.ndarray:
    """A C-contiguous 1-D view (a copy only when `a` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


class SiLU(Module):
    """x * sigmoid(x), ddim's `nonlinearity`; the cache is x."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.empty(x.shape, dtype=x.dtype)                                      # [...]
        silu_kernel(flat(x), y.reshape(-1), x.dtype.type(1))
        return y, x

    def backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        dx = np.empty(x.shape, dtype=dy.dtype)                                    # [...]
        silu_backward_kernel(flat(x), flat(dy.astype(x.dtype, copy=False)), dx.reshape(-1), x.dtype.type(1))
        return dx
