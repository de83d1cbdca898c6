"""Sinusoidal timestep embedding, ddim's `get_timestep_embedding` (Transformer-style, [sin | cos]).

Dimensions: N batch, D embedding size, half = D // 2.

    freq_i = exp(-log(10000) * i / (half - 1)),  i = 0..half-1
    emb    = [sin(t * freq), cos(t * freq)]  (+ one zero column when D is odd)

Computed in float64 and cast to `dtype` (ddim computes in float32; the float64 values are the
reference a port should match within float32 rounding). No gradient: t is an integer.
"""

from __future__ import annotations

import numpy as np


def timestep_embedding(t: np.ndarray, dim: int, dtype: np.dtype = np.float32) -> np.ndarray:
    """t [N] integer timesteps -> [N, dim] embedding."""
    t = np.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: t must be 1-D [N], got shape {t.shape}")
    if dim < 4:
        raise ValueError(f"timestep_embedding: dim must be >= 4 (half - 1 > 0), got {dim}")
    half = dim // 2
    freq = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / (half - 1))  # [half]
    arg = t.astype(np.float64)[:, None] * freq[None, :]                           # [N, half]
    emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)                      # [N, 2*half]
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))                                       # [N, dim]
    return emb.astype(dtype)
