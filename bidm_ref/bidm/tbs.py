"""TBS cross-timestep connections (Zheng et al. 2024, §3.2; docs/METHOD.md §5).

The other half of TBS, the learnable activation binarizer (learnable K filter and threshold), is
BinaryConv2d in binary/bidm_layers.py (docs/METHOD.md §3).

Dimensions: N batch, C, H, W a unit's output, n the number of connected units, B = n_buckets.

For the last n units of the decoder (units are numbered in UNet forward order), with L_b(t) the
unit's own output at this sampling step and cache_b its (mixed) output at the previous step:

    j      = t // (T // B)                                   [N]  bucket of each image's timestep
    out_b  = (1 - a[j, k]) * L_b(t) + a[j, k] * cache_b       k = b - first connected unit
    d L_b  = (1 - a[j, k]) * d out_b
    d a[j, k] += sum_{c,h,w} d out_b * (cache_b - L_b)        (no gradient into the cache)

a [B, n] is learnable, initialised to 0.3 (paper) and used raw (no sigmoid, as the code).
Without a cache (the first sampling step, or the no-cache training pass) out_b = L_b.

Sampling is recurrent: after every step `remember(features)` stores the mixed outputs of the
connected units as the next step's cache; `forget()` starts a new trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..models.unet import UNet
from ..nn.module import Module


class TBS(Module):
    """The mixer a student UNet calls after each unit (UNet.mixer); param `a` [n_buckets, n]."""

    def __init__(self, num_units: int, first_decoder_unit: int, connections: int, num_timesteps: int,
                 n_buckets: int = 100, init: float = 0.3) -> None:
        super().__init__()
        decoder_units = num_units - first_decoder_unit
        if not 1 <= connections <= decoder_units:
            raise ValueError(f"TBS connections must be in 1..{decoder_units} (the decoder's units), got {connections}")
        if num_timesteps % n_buckets:
            raise ValueError(f"TBS: T = {num_timesteps} is not divisible into {n_buckets} buckets")
        self.first = num_units - connections
        self.bucket_size = num_timesteps // n_buckets
        self.add_param("a", np.full((n_buckets, connections), init, dtype=np.float32))
        self.cache: dict[int, np.ndarray] | None = None

    @property
    def connections(self) -> int:
        return self.params["a"].shape[1]

    def connected(self, b: int) -> bool:
        return b >= self.first

    def forget(self) -> None:
        """Start a new trajectory: the next forward mixes nothing."""
        self.cache = None

    def remember(self, features: list[np.ndarray]) -> None:
        """Keep the connected units' (mixed) outputs of this step as the next step's cache (copies)."""
        self.cache = {b: features[b].copy() for b in range(self.first, len(features))}

    def forward(self, b: int, h: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, tuple | None]:
        if not self.connected(b) or self.cache is None:
            return h, None
        cached = self.cache[b]                                                    # [N, C, H, W]
        if cached.shape != h.shape:
            raise ValueError(f"TBS cache of unit {b} has shape {cached.shape}, the unit gives {h.shape}: "
                             "the cache must come from the same batch")
        j = np.asarray(t) // self.bucket_size                                     # [N]
        a = self.params["a"][j, b - self.first].astype(h.dtype)[:, None, None, None]  # [N, 1, 1, 1]
        return (1 - a) * h + a * cached, (j, a, h, cached)                        # [N, C, H, W]

    def backward(self, b: int, dout: np.ndarray, cache: tuple | None) -> np.ndarray:
        if cache is None:
            return dout
        j, a, h, cached = cache
        da = np.sum(dout * (cached - h), axis=(1, 2, 3))                          # [N]
        np.add.at(self.grads["a"][:, b - self.first], j, da)
        return (1 - a) * dout                                                     # [N, C, H, W]


def attach_tbs(student: UNet, connections: int, num_timesteps: int) -> TBS | None:
    """Give a student UNet a TBS mixer over its last `connections` decoder units (child `tbs`); called by
    bidm/student.py: build_unet, the one builder of TBS students."""
    if connections == 0:
        return None
    units = student.units()
    first_decoder = len(units) - len(student.cfg.ch_mult) * (student.cfg.num_res_blocks + 1)
    student.mixer = student.add_child("tbs", TBS(len(units), first_decoder, connections, num_timesteps))
    return student.mixer


def sampling_eps_fn(model: UNet) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """eps(x_t, t) for a sampler (docs/METHOD.md §5.1); a TBS student starts without cache and remembers every
    step's outputs."""
    if model.mixer is not None:
        model.mixer.forget()

    def eps_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        eps, cache = model.forward(x, t)                                          # [N, C, H, W]
        if model.mixer is not None:
            model.mixer.remember(UNet.unit_features(cache))
        return eps

    return eps_fn
