"""Stateless, deterministic mini-batches: batch(step) depends only on (seed, step).

Dimensions: N images in the data set, B batch size, C channels, H, W spatial.

The training stream is the concatenation of one permutation of 0..N-1 per epoch,

    perm_e = np.random.default_rng([seed, e]).permutation(N)

and batch `step` is the B consecutive stream positions g = step*B + j (j = 0..B-1), where
position g holds image perm_{g // N}[g % N]. A batch may therefore span an epoch boundary
(its tail comes from the next epoch's permutation) and no image is dropped; when B divides N
every epoch is covered by exactly N / B batches that see each image once.

With hflip, image j of batch `step` is mirrored left-right (along W) iff
np.random.default_rng([seed, step, 1]).random(B)[j] < 0.5.

Because nothing is carried from one call to the next, a run resumed at step s draws the same
batches as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLIP_STREAM = 1  # third seed word of the flip generator: [seed, step, 1] never equals a permutation seed [seed, epoch]


@dataclass(frozen=True, eq=False)
class BatchSampler:
    """Deterministic batches of `images` [N, C, H, W]; see the module docstring for the order."""

    images: np.ndarray = field(repr=False)  # [N, C, H, W]
    batch_size: int
    seed: int
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty [N, C, H, W] array, got shape {self.images.shape}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {self.seed}")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def permutation(self, epoch: int) -> np.ndarray:
        """perm_epoch: int64 [N], the order of the images in that epoch."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)  # [N]

    def indices(self, step: int) -> np.ndarray:
        """Image indices of batch `step`: int64 [B], position g = step*B + j -> perm_{g // N}[g % N]."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)  # [B]
        epochs = positions // self.num_images  # [B]
        indices = np.empty(self.batch_size, dtype=np.int64)  # [B]
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch  # [B]
            indices[in_epoch] = self.permutation(int(epoch))[positions[in_epoch] % self.num_images]
        return indices

    def flips(self, step: int) -> np.ndarray:
        """bool [B]: which images of batch `step` are mirrored (all False without hflip)."""
        if not self.hflip:
            return np.zeros(self.batch_size, dtype=bool)  # [B]
        return np.random.default_rng([self.seed, step, FLIP_STREAM]).random(self.batch_size) < 0.5  # [B]

    def batch(self, step: int) -> np.ndarray:
        """The images of batch `step`, flipped as drawn: a new array [B, C, H, W]."""
        batch = self.images[self.indices(step)]  # [B, C, H, W]
        flips = self.flips(step)  # [B]
        batch[flips] = batch[flips, :, :, ::-1]
        return batch
