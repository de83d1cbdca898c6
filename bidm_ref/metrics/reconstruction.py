"""Reconstruction quality of the first-stage autoencoder: MSE and PSNR on a dataset split.

Dimensions: N images, C, H, W image.

Images are reconstructed through the posterior mean (x_rec = decode(mean(q(z | x))), deterministic, what
latent training sees) and both sides are mapped to [0, 1] after the reconstruction is clipped to [-1, 1]:

    mse  = mean over all pixels of (x_rec01 - x01)^2
    psnr = 10 log10(1 / mse)                    (dB, of the pooled MSE)

The whole image the autoencoder sees is scored (for Fashion-MNIST the 28x28 garment padded to 32x32 with
black, which the autoencoder also has to reproduce).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..loading.latent import decode_latents, encode_means
from ..models.autoencoder import Autoencoder


@dataclass(frozen=True)
class Reconstruction:
    images: int
    mse: float
    psnr: float


def reconstruct(ae: Autoencoder, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """decode(mean(q(z | x))) of images [N, C, H, W] in [-1, 1], clipped to [-1, 1]: [N, C, H, W]."""
    return np.clip(decode_latents(ae, encode_means(ae, images, progress)), -1, 1)


def alternating_rows(images: np.ndarray, reconstructions: np.ndarray, n: int, per_row: int = 8
                     ) -> tuple[np.ndarray, int]:
    """(grid images [2 * n', C, H, W], images per row): rows of originals, each followed by its reconstructions.

    n' = the largest multiple of the row length (min(per_row, n, N)) not above min(n, N): whole rows only."""
    per_row = min(per_row, n, len(images))
    n = min(n, len(images)) // per_row * per_row
    rows = [part for start in range(0, n, per_row)
            for part in (images[start:start + per_row], reconstructions[start:start + per_row])]
    return np.concatenate(rows), per_row                                          # [2n', C, H, W]


def reconstruction_quality(images: np.ndarray, reconstructions: np.ndarray) -> Reconstruction:
    """MSE and PSNR of reconstructions against images (both [N, C, H, W] in [-1, 1]) on the [0, 1] scale."""
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {images.shape} and reconstructions {reconstructions.shape} differ in shape")
    diff = (reconstructions.astype(np.float64) - images) / 2                      # [N, C, H, W], [0, 1] scale
    mse = float(np.mean(diff**2))
    return Reconstruction(len(images), mse, math.inf if mse == 0 else 10 * math.log10(1 / mse))
