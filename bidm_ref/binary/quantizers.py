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
    """+1 where u >= 0, -1 elsewhere, in u's dtype."""
    return np.where(u >= 0, 1, -1).astype(u.dtype)


class ApproxSign:
    """Bi-Real Net's ApproxSign (Liu et al. 2018, eq. 4; used by ReActNet and BiDM's `_BiAct`).

    forward:     sign(u)
    surrogate:   S(u) = -1 (u < -1);  u^2 + 2u (-1 <= u < 0);  -u^2 + 2u (0 <= u < 1);  1 (u >= 1)
    pseudo-grad: dS/du = 2 + 2u on [-1, 0), 2 - 2u on [0, 1), 0 outside
    """

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return sign(u)

    def grad(self, u: np.ndarray, dv: np.ndarray) -> np.ndarray:
        slope = np.where(u < 0, 2 + 2 * u, 2 - 2 * u)                             # [...]
        return dv * np.where(np.abs(u) < 1, slope, 0).astype(dv.dtype)            # [...]

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
