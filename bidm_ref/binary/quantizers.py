"""1-bit quantizers: a forward value and the pseudo-gradient that training uses instead of sign' = 0.

Shapes: u is any array (activations [N, C, H, W] / [N, I], weights [O, C, kh, kw] / [O, I]);
value(u) and grad(u, dv) have u's shape.

A quantizer q has three functions:
    q(u)              the forward value (binary, possibly times a scale)
    q.grad(u, dv)     the pseudo-gradient dL/du given dL/dq (a vector-Jacobian product)
    q.surrogate(u)    a smooth function S with dS/du^T dv == q.grad(u, dv): the function whose
                      derivative the backward implements; finite-difference tests use
                      S(u) - S(u0) + q(u0) ("straight-through" value, surrogate slope)

sign(0) = +1 everywhere (bidm-ref convention; torch.sign(0) = 0 in the official code).
"""

from __future__ import annotations

import numpy as np


def sign(u: np.ndarray) -> np.ndarray:
    """+1 where u >= 0, -1 elsewhere (NaN too), in u's dtype: 2 * [u >= 0] - 1, three passes in place (np.where
    with scalar branches was ~20x slower on the training shapes)."""
    out = np.empty(np.shape(u), dtype=u.dtype)                                    # [...]
    np.greater_equal(u, 0, out=out)
    out *= 2
    out -= 1
    return out


class ApproxSign:
    """Bi-Real Net's ApproxSign (Liu et al. 2018, eq. 4; used by ReActNet and BiDM's `_BiAct`).

    forward:     sign(u)
    surrogate:   S(u) = -1 (u < -1);  u^2 + 2u (-1 <= u < 0);  -u^2 + 2u (0 <= u < 1);  1 (u >= 1)
    pseudo-grad: dS/du = 2 + 2u on [-1, 0), 2 - 2u on [0, 1), 0 outside
    """

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return sign(u)

    def grad(self, u: np.ndarray, dv: np.ndarray) -> np.ndarray:
        # 2 + 2u = 2 - 2|u| on [-1, 0) and 2 - 2u = 2 - 2|u| on [0, 1), both > 0 there and <= 0 outside: max(., 0)
        # is the slope, bit for bit the piecewise form, in one pass each
        slope = np.maximum(2 - 2 * np.abs(u), u.dtype.type(0))                    # [...]
        return dv * slope.astype(dv.dtype, copy=False)                            # [...]

    def surrogate(self, u: np.ndarray) -> np.ndarray:
        inner = np.where(u < 0, u * u + 2 * u, -u * u + 2 * u)                    # [...]
        return np.where(u < -1, -1, np.where(u < 1, inner, 1)).astype(u.dtype)


class ClippedSign:
    """sign with the clipped straight-through estimator (Hubara et al. 2016; XNOR-Net's activations).

    forward:     sign(u)
    surrogate:   S(u) = clip(u, -1, 1)
    pseudo-grad: dS/du = 1{|u| <= 1}
    """

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return sign(u)

    def grad(self, u: np.ndarray, dv: np.ndarray) -> np.ndarray:
        return dv * (np.abs(u) <= 1)                                              # [...]

    def surrogate(self, u: np.ndarray) -> np.ndarray:
        return np.clip(u, -1, 1)


class ScaledSignWeights:
    """Weights alpha_o * sign(W) with alpha_o = mean |W| over all axes but the first (output channel).

    XNOR-Net (Rastegari et al. 2016, eq. 6) and BiDM's BNNConv2d / BNNLinear:
    forward:     alpha * sign(W),  alpha [O] = mean_{c,kh,kw} |W[o]|  (a constant: no gradient)
    surrogate:   S(W) = clip(W, -1, 1)    (the official code's detach trick)
    pseudo-grad: dS/dW = 1{|W| <= 1}      (alpha does not multiply the gradient)
    """

    def scale(self, w: np.ndarray) -> np.ndarray:
        """alpha, shaped to broadcast against w: [O, 1, ...]."""
        return np.abs(w).mean(axis=tuple(range(1, w.ndim)), keepdims=True)       # [O, 1, (1, 1)]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return self.scale(w) * sign(w)                                            # [O, ...]

    def grad(self, w: np.ndarray, dv: np.ndarray) -> np.ndarray:
        return dv * (np.abs(w) <= 1)                                              # [O, ...]

    def surrogate(self, w: np.ndarray) -> np.ndarray:
        return np.clip(w, -1, 1)


class LayerScaledSignWeights:
    """Weights E * sign(W) with one scale E = mean |W| over the whole tensor (DoReFa-Net's 1-bit weights).

    Zhou et al. 2016, §2.2 (binarized weights): forward r_o = sign(r_i) * E(|r_i|), backward
    dc/dr_i = dc/dr_o; the official tensorpack code takes E under stop_gradient and overrides
    sign's gradient by the identity:
    forward:     E * sign(W),  E = mean |W| over all axes (a scalar, a constant: no gradient)
    surrogate:   S(W) = W
    pseudo-grad: dS/dW = 1     (identity STE, no clipping)
    """

    def scale(self, w: np.ndarray) -> np.ndarray:
        """E, a 0-d array in w's dtype."""
        return np.abs(w).mean()                                                   # []

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return self.scale(w) * sign(w)                                            # [O, ...]

    def grad(self, w: np.ndarray, dv: np.ndarray) -> np.ndarray:
        return dv                                                                 # [O, ...]

    def surrogate(self, w: np.ndarray) -> np.ndarray:
        return w


class RectifiedSign:
    """ReSTE's rectified straight-through estimator (Wu et al. 2023): sign forward, a power function backward.

    ReSTE (the forward/backward equations of its official README): the estimator is the power
    function f(u) = sign(u) |u|^(1/o), o >= 1 (o = 1 is the STE, o -> infinity is sign itself),
    with backward f'(u) = (1/o) |u|^(1/o - 1). The official code
    (DravenALG/ReSTE, `Binary_ReSTE`) bounds this slope twice, and so do we:
      - |u| > t = 1.5: slope 0 (the clipped STE's range, widened);
      - |u| <= m = 0.1 (the code's `interval`): f' -> infinity at 0, so the slope there is the secant
        m^(1/o) / m of f over [0, m], i.e. f is replaced by the straight line through (0, 0) and (m, f(m)).
    forward:     sign(u)
    surrogate:   S(u) = sign(u) g(min(|u|, t)),  g(a) = a m^(1/o - 1) (a <= m),  a^(1/o) (a > m)
    pseudo-grad: dS/du = m^(1/o - 1) (|u| <= m),  (1/o) |u|^(1/o - 1) (m < |u| <= t),  0 (|u| > t)
    `o` is annealed during training by the owning layer's set_progress (reste.py).
    """

    def __init__(self, o: float = 1.0, t: float = 1.5, m: float = 0.1) -> None:
        self.o, self.t, self.m = o, t, m

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return sign(u)

    def grad(self, u: np.ndarray, dv: np.ndarray) -> np.ndarray:
        a = np.abs(u)                                                             # [...]
        power = np.maximum(a, self.m) ** (1 / self.o - 1) / self.o                # [...]
        slope = np.where(a <= self.m, self.m ** (1 / self.o - 1), power)          # [...]
        return dv * np.where(a <= self.t, slope, 0).astype(dv.dtype)              # [...]

    def surrogate(self, u: np.ndarray) -> np.ndarray:
        a = np.minimum(np.abs(u), self.t)                                         # [...]
        g = np.where(a <= self.m, a * self.m ** (1 / self.o - 1), np.maximum(a, self.m) ** (1 / self.o))  # [...]
        return (np.sign(u) * g).astype(u.dtype)                                   # [...]
