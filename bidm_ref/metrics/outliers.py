"""Synthetic outliers: noise images the FD-clf classifier learns to be unsure about (Outlier Exposure).

Dimensions: N images, C channels, S x S pixels (S divisible by 8), values in [-1, 1], float32.

Outlier Exposure (Hendrycks, Mazeika and Dietterich, "Deep Anomaly Detection with Outlier Exposure", ICLR
2019, eq. 1) adds to the classifier's loss lambda * E_{x ~ outliers}[CE(uniform, softmax(f(x)))], so that
images from no class get a flat softmax instead of a confident one. A classifier trained on the real images
alone is confident (top p > 0.9) on 33% of uniform noise, 72% of clipped Gaussian noise and 96% of +-1
noise (the committed results/flagship/classifier.h5, measured 2026-12-01): the confident share then counts
a binarized model's noise-like samples as garments. The outliers here are what a failing W1A1 sampler
draws: pixel noise (uniform, clipped Gaussian, +-1) and blob noise (the same, drawn on an (S/b) x (S/b) grid
and repeated b x b, b in 2, 4, 8), one kind per image in equal shares.
"""

from __future__ import annotations

import numpy as np

KINDS = ("uniform", "gaussian", "binary", "uniform blobs", "binary blobs")
BLOB_SIZES = (2, 4, 8)


def noise(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """Pixel noise of `kind` (its first word: uniform | gaussian | binary) in [-1, 1], float32 `shape`."""
    base = kind.split()[0]
    if base == "uniform":
        return rng.uniform(-1, 1, shape).astype(np.float32)
    if base == "gaussian":
        return np.clip(rng.standard_normal(shape), -1, 1).astype(np.float32)
    if base == "binary":
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.float32)
    raise ValueError(f"unknown outlier kind {kind!r}: pick one of {', '.join(KINDS)}")


def outlier_images(rng: np.random.Generator, kind: str, n: int, channels: int, size: int) -> np.ndarray:
    """n images [n, C, S, S] of one kind; blob kinds draw a blob size per image."""
    if not kind.endswith("blobs"):
        return noise(rng, kind, (n, channels, size, size))
    images = np.empty((n, channels, size, size), dtype=np.float32)                # [n, C, S, S]
    for i, b in enumerate(rng.choice(BLOB_SIZES, n)):
        grid = noise(rng, kind, (channels, size // b, size // b))                 # [C, S/b, S/b]
        images[i] = grid.repeat(b, axis=1).repeat(b, axis=2)                      # [C, S, S]
    return images


def synthetic_outliers(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    """n outliers [n, C, S, S], the kinds in equal shares (the first n % len(KINDS) kinds one more), shuffled."""
    if size % max(BLOB_SIZES):
        raise ValueError(f"outlier images need a size divisible by {max(BLOB_SIZES)}, got {size}")
    counts = [n // len(KINDS) + (k < n % len(KINDS)) for k in range(len(KINDS))]
    images = np.concatenate([outlier_images(rng, kind, count, channels, size) for kind, count in zip(KINDS, counts)])
    return images[rng.permutation(n)]                                             # [n, C, S, S]
