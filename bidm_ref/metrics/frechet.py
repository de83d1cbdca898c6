"""Frechet distance between Gaussians fitted to feature sets, and one-pass feature statistics.

Dimensions: N feature vectors, B a batch of them, D feature dimension.

Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2):

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1^1/2 S2 S1^1/2)^1/2 )

Both square roots are taken of symmetric positive semi-definite matrices by a symmetric
eigendecomposition (`numpy.linalg.eigh`): A = V diag(l) V^T -> A^1/2 = V diag(sqrt(l)) V^T, and
tr(M^1/2) = sum(sqrt(eigvalsh(M))). Round-off can make eigenvalues of a PSD matrix slightly
negative (about -1e-12 * max eigenvalue); they are clamped to 0 before the square root. This is
real arithmetic throughout, so unlike scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid, ADM) there are
no complex parts to discard. tr((S1^1/2 S2 S1^1/2)^1/2) = tr((S1 S2)^1/2) because the two
matrices are similar.

FeatureStats accumulates mean and covariance in float64 in one pass (Chan et al.'s pairwise
merge of (count, mean, M2) with M2 = sum (x - mean)(x - mean)^T, the batch form of Welford's
update), so no feature matrix is ever held whole and no large sum-of-squares cancels:

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2 = M2_a + M2_b + delta delta^T * n_a n_b / n
    cov = M2 / (n - 1)          (unbiased, as np.cov and the ADM / pytorch-fid evaluators)

`add` merges a batch, `merge` another FeatureStats with the same formula: `cli.py eval --workers K` has each
shard's statistics made on a Dask worker and merges them here in shard order (metrics/evaluate.py), so the
result does not depend on the worker count or on the order shards finish in.
"""

from __future__ import annotations

import numpy as np

SYMMETRY_RTOL = 1e-6  # covariances from matrix products are symmetric only up to round-off


class FeatureStats:
    """Running float64 mean and covariance of feature vectors added in batches [B, D]."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.mean_acc = np.zeros(dim)          # [D]
        self.m2 = np.zeros((dim, dim))         # [D, D]

    def add(self, batch: np.ndarray) -> None:
        """Merge a batch [B, D] into the statistics."""
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.add: expected a batch [B, {self.dim}], got shape {batch.shape}")
        if not np.all(np.isfinite(batch)):
            raise ValueError("FeatureStats.add: the batch contains NaN or inf features (diverged model or broken images?)")
        if batch.shape[0] == 0:
            return
        part = FeatureStats(self.dim)
        x = batch.astype(np.float64)           # [B, D]
        part.count = batch.shape[0]
        part.mean_acc = x.mean(axis=0)         # [D]
        centered = x - part.mean_acc           # [B, D]
        part.m2 = centered.T @ centered        # [D, D]
        self.merge(part)

    def merge(self, other: FeatureStats) -> None:
        """Merge another FeatureStats (e.g. one shard's, computed elsewhere) into these: the formula above."""
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: dimension {other.dim} into {self.dim}")
        if other.count == 0:
            return
        n = self.count + other.count
        delta = other.mean_acc - self.mean_acc  # [D]
        self.mean_acc += delta * (other.count / n)
        self.m2 += other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        self.count = n

    @property
    def mean(self) -> np.ndarray:
        """Mean vector [D]."""
        self.require(1)
        return self.mean_acc.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance [D, D] (divides by N - 1)."""
        self.require(2)
        return self.m2 / (self.count - 1)

    def require(self, n: int) -> None:
        """Raise a one-line ValueError unless at least n vectors were added."""
        if self.count < n:
            raise ValueError(f"FeatureStats: {self.count} feature vectors seen, need at least {n}")


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix [D, D] by eigh; negative round-off eigenvalues -> 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)   # [D], [D, D]
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T  # [D, D]


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1^1/2 S2 S1^1/2)^1/2) = sum of sqrt of the (clamped) eigenvalues."""
    root1 = psd_sqrt(sigma1)                   # [D, D]
    inner = root1 @ sigma2 @ root1             # [D, D]
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)  # [D]
    return float(np.sqrt(np.clip(eigvals, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2); mu [D], sigma [D, D]; computed in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)              # [D]
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)  # [D, D]
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        shapes = f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        raise ValueError(f"frechet_distance: shapes {shapes} are not [D], [D, D], [D], [D, D]")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if np.abs(sigma - sigma.T).max() > SYMMETRY_RTOL * np.abs(sigma).max():
            raise ValueError(f"frechet_distance: {name} is not symmetric, so not a covariance matrix")
    diff = mu1 - mu2                           # [D]
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_of_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """FD between the Gaussians fitted to two FeatureStats."""
    return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)
