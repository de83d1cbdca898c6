"""Improved precision and recall: the k-NN manifold estimator of Kynkaanniemi et al. (NeurIPS 2019).

Dimensions: N real feature vectors, M generated ones, D feature dimension, R rows per block.

Each set's manifold is the union of balls around its points; the radius of point x is the
distance to its k-th nearest neighbour in its own set, not counting x itself (k = 3, as
openai/guided-diffusion's evaluator). With d the Euclidean distance:

    precision = (1/M) sum_j [ exists i: d(g_j, r_i) <= radius_real(r_i) ]
    recall    = (1/N) sum_i [ exists j: d(r_i, g_j) <= radius_gen(g_j)  ]

The comparison is inclusive (<=), as in the ADM evaluator. Distances are computed as squared
Euclidean distances |u|^2 - 2 u.v + |v|^2 in float64 (clamped at 0), in row blocks of R so that
a block [R, N] stays under `memory_bytes`; squaring is monotone, so balls and radii are the
same as with plain distances. (ADM computes the distances in float16 with a float32 fallback,
so its values can differ in the last digits.) Duplicated points count as neighbours at
distance 0, as there.
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 3
DEFAULT_MEMORY_BYTES = 2**27  # 128 MiB per distance block


def block_rows(n_cols: int, memory_bytes: int) -> int:
    """Rows per block so that a float64 block [R, n_cols] fits in memory_bytes (at least 1)."""
    return max(1, memory_bytes // (8 * max(n_cols, 1)))


def squared_distances(a: np.ndarray, b: np.ndarray, b_sq_norms: np.ndarray) -> np.ndarray:
    """|a_i - b_j|^2 for a [R, D], b [N, D] (b_sq_norms [N]) -> [R, N], float64, >= 0."""
    a_sq = np.einsum("rd,rd->r", a, a)                       # [R]
    d2 = a_sq[:, None] - 2.0 * (a @ b.T) + b_sq_norms[None, :]  # [R, N]
    return np.maximum(d2, 0.0, out=d2)


def as_features(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a feature matrix [n, D] and return it as float64."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty feature matrix [n, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: features contain NaN or inf")
    return np.asarray(x, dtype=np.float64)


def manifold_radii(features: np.ndarray, k: int = DEFAULT_K, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """Squared distance of each point [N, D] to its k-th nearest other point -> [N]."""
    x = as_features(features, "manifold_radii")              # [N, D]
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"manifold_radii: {n} points cannot have a {k}-th nearest neighbour; need more than {k}")
    sq_norms = np.einsum("nd,nd->n", x, x)                   # [N]
    radii = np.empty(n)                                       # [N]
    step = block_rows(n, memory_bytes)
    for start in range(0, n, step):
        d2 = squared_distances(x[start : start + step], x, sq_norms)  # [R, N]
        radii[start : start + step] = np.partition(d2, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def fraction_inside(
    points: np.ndarray, centers: np.ndarray, radii: np.ndarray, memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> float:
    """Fraction of points [P, D] within (<=) the ball of at least one center [Q, D] (squared radii [Q])."""
    p = as_features(points, "fraction_inside points")        # [P, D]
    c = as_features(centers, "fraction_inside centers")      # [Q, D]
    if radii.shape != (c.shape[0],) or p.shape[1] != c.shape[1]:
        raise ValueError(f"fraction_inside: points {p.shape}, centers {c.shape}, radii {radii.shape} do not fit")
    sq_norms = np.einsum("qd,qd->q", c, c)                   # [Q]
    inside = 0
    step = block_rows(c.shape[0], memory_bytes)
    for start in range(0, p.shape[0], step):
        d2 = squared_distances(p[start : start + step], c, sq_norms)  # [R, Q]
        inside += int(np.count_nonzero((d2 <= radii[None, :]).any(axis=1)))
    return inside / p.shape[0]


def precision_recall(
    real: np.ndarray, generated: np.ndarray, k: int = DEFAULT_K, memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> tuple[float, float]:
    """(precision, recall) of generated features [M, D] against real features [N, D]."""
    real_radii = manifold_radii(real, k, memory_bytes)      # [N]
    gen_radii = manifold_radii(generated, k, memory_bytes)  # [M]
    precision = fraction_inside(generated, real, real_radii, memory_bytes)
    recall = fraction_inside(real, generated, gen_radii, memory_bytes)
    return precision, recall
