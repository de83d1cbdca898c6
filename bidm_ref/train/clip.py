"""Global gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ (L2 norm, error_if_nonfinite).

Dimensions: P, the shape of one gradient (any). Gradients are a dict dotted name -> array
(`dict(module.named_grads())`) and are scaled IN PLACE.

    norm  = sqrt(sum over all arrays and elements of g^2)      (accumulated in float64)
    coef  = max_norm / (norm + 1e-6)
    g     = g * coef     for every gradient, when coef < 1 (i.e. norm + 1e-6 > max_norm)

As torch, the 1e-6 keeps the division finite and makes the clipped norm land just below
max_norm. The returned value is the norm before clipping. A NaN or Inf norm means training
diverged: FloatingPointError, gradients untouched. Differences to torch: the sum of squares is
accumulated in float64 whatever the gradient dtype (torch uses the gradient dtype); the
scale factor is rounded to the gradient dtype as torch's multiply does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

CLIP_EPS = 1e-6


def global_grad_norm(grads: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all gradients taken together, accumulated in float64."""
    squares = sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())
    return math.sqrt(squares)


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ~max_norm; return the norm before."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = global_grad_norm(grads)
    if not math.isfinite(norm):
        raise FloatingPointError(
            f"training diverged: the gradient norm is {norm} (NaN/Inf gradient); lower the learning rate"
        )
    coef = max_norm / (norm + CLIP_EPS)
    if coef < 1.0:
        for g in grads.values():
            g *= coef                                                  # [P]
    return norm
