"""Pointwise activations. Shapes: any; y has the shape of x.

SiLU (swish): y = x * sigmoid(x);  dy/dx = s + x * s * (1 - s) with s = sigmoid(x).

Forward and backward are one fused Numba pass each (`silu_forward_kernel`, `silu_backward_kernel`; twins
`silu_forward_ref`, `silu_backward_ref`). The forward's exp is fastexp.fast_exp, which vectorises: on 1M
float32 values one pass writing s and y took 0.39 ms against 1.26 ms for the NumPy passes it replaces
(negate, exp, add, reciprocal; then x * s), one thread each (docs/ENGINE.md, "GroupNorm, SiLU, attention").
The cache is (x, s).
"""

from __future__ import annotations

import numpy as np

from .fastexp import SERIAL_ELEMENTS, fast_exp, fast_exp_ref
from .module import Module
from .threaded import threaded_kernel


def _silu_forward_kernel(elements):
    """silu_forward_kernel with `elements` prange or range (threaded.py)."""

    def silu_forward_kernel(x, s, y, one):  # pragma: no cover - compiled
        """s = 1 / (1 + exp(-x)), y = x s, all flat [M]; `one` is 1 in x's dtype (keeps the arithmetic float32)."""
        for i in elements(x.size):
            s[i] = one / (one + fast_exp(-x[i]))
            y[i] = x[i] * s[i]

    return silu_forward_kernel


silu_forward_kernel = threaded_kernel(_silu_forward_kernel, SERIAL_ELEMENTS, error_model="numpy")


def silu_forward_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of silu_forward_kernel: (y, s)."""
    s = np.reciprocal(1 + fast_exp_ref(-x)).astype(x.dtype)                      # [...]
    return x * s, s


def _silu_backward_kernel(elements):
    """silu_backward_kernel with `elements` prange or range (threaded.py)."""

    def silu_backward_kernel(x, s, dy, dx):  # pragma: no cover - compiled
        """dx = dy * (s + x s (1 - s)), all flat [M] (s = sigmoid(x))."""
        for i in elements(x.size):
            dx[i] = dy[i] * (s[i] + x[i] * s[i] * (1 - s[i]))

    return silu_backward_kernel


silu_backward_kernel = threaded_kernel(_silu_backward_kernel, SERIAL_ELEMENTS, fastmath={"contract"})


def silu_backward_ref(x: np.ndarray, s: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """NumPy twin of silu_backward_kernel."""
    return dy * (s + x * s * (1 - s))


def flat(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous 1-D view in `dtype` (a copy only when `a` is not contiguous or of another dtype)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


class SiLU(Module):
    """x * sigmoid(x), ddim's `nonlinearity`."""

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        x = np.ascontiguousarray(x)                                               # [...]
        s, y = np.empty_like(x), np.empty_like(x)                                 # [...] each
        silu_forward_kernel.for_work(x.size)(x.reshape(-1), s.reshape(-1), y.reshape(-1), x.dtype.type(1))
        return y, (x, s)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        x, s = cache
        dx = np.empty(x.shape, dtype=x.dtype)                                     # [...]
        silu_backward_kernel.for_work(x.size)(flat(x, x.dtype), flat(s, x.dtype), flat(dy, x.dtype), dx.reshape(-1))
        return dx
