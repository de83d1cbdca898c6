"""TBS cross-timestep connections (Zheng et al. 2024, §3.2; docs/METHOD.md §5).

The other half of TBS, the learnable activation binarizer (learnable K filter and threshold), is
BinaryConv2d in binary/bidm_layers.py (docs/METHOD.md §3).

Dimensions: N batch, C, H, W a mixed output, B = n_buckets, K the table's columns.

A mixing point p is a place of the UNet whose output TBS may rewrite: a unit b (an int, units numbered in
UNet forward order) or the upsample of decoder level L ("up.L.upsample"). Each connected point p has a
source point s(p), whose output of the previous sampling step is p's cache, and a column k(p) of the table
a [B, K]. With L_p(t) the point's own output at this step:

    j      = t // (T // B)                                   [N]  bucket of each image's timestep
    out_p  = (1 - a[j, k(p)]) * L_p(t) + a[j, k(p)] * cache_s(p)
    d L_p  = (1 - a[j, k(p)]) * d out_p
    d a[j, k(p)] += sum_{c,h,w} d out_p * (cache_s(p) - L_p)   (no gradient into the cache)

a is learnable and used raw (no sigmoid, as the code). Without a cache (the first sampling step, or the
no-cache training pass) out_p = L_p. Two layouts (--tbs-layout; docs/METHOD.md §11, item 2):
  last-units     (default): the last n decoder units, each its own source and its own column
                 k = b - (first connected unit), a [B, n] starting at 0.3 (the LDM code's choice);
  official-cifar the official CIFAR code: every unit of decoder level 1 (if that level has attention) mixes
                 with the cached output of up.2.upsample, up.1.upsample with its own, all in column 1 of
                 a [B, levels] starting at 0.0.

Sampling is recurrent: after every step `remember(outputs)` stores the (mixed) outputs of the source
points as the next step's cache; `forget()` starts a new trajectory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..models.unet import UNet, upsample_point
from ..nn.module import Module, inference
from .config import BiDMConfig

Point = int | str


class TBS(Module):
    """The mixer a student UNet calls after each mixing point (UNet.mixer); param `a` [n_buckets, columns].

    points: {connected point: (source point, column of a)}."""

    def __init__(self, points: dict[Point, tuple[Point, int]], columns: int, num_timesteps: int,
                 n_buckets: int = 100, init: float = 0.3) -> None:
        super().__init__()
        if num_timesteps % n_buckets:
            raise ValueError(f"TBS: T = {num_timesteps} is not divisible into {n_buckets} buckets")
        self.points = points
        self.sources = sorted({source for source, _ in points.values()}, key=str)
        self.bucket_size = num_timesteps // n_buckets
        self.add_param("a", np.full((n_buckets, columns), init, dtype=np.float32))
        self.cache: dict[Point, np.ndarray] | None = None

    @property
    def connections(self) -> int:
        """The number of connected points."""
        return len(self.points)

    def connected(self, p: Point) -> bool:
        return p in self.points

    def forget(self) -> None:
        """Start a new trajectory: the next forward mixes nothing."""
        self.cache = None

    def remember(self, outputs: Mapping[Point, np.ndarray] | list[np.ndarray]) -> None:
        """Keep the source points' (mixed) outputs of this step as the next step's cache (copies); `outputs` is
        UNet.point_outputs of a forward pass (a list of unit outputs does for unit sources)."""
        self.cache = {s: outputs[s].copy() for s in self.sources}

    def forward(self, p: Point, h: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, tuple | None]:
        if not self.connected(p) or self.cache is None:
            return h, None
        source, column = self.points[p]
        cached = self.cache[source]                                               # [N, C, H, W]
        if cached.shape != h.shape:
            raise ValueError(f"TBS cache of {source} has shape {cached.shape}, {p} gives {h.shape}: "
                             "the cache must come from the same batch")
        j = np.asarray(t) // self.bucket_size                                     # [N]
        a = self.params["a"][j, column].astype(h.dtype)[:, None, None, None]      # [N, 1, 1, 1]
        return (1 - a) * h + a * cached, (j, a, h, cached, column)                # [N, C, H, W]

    def backward(self, p: Point, dout: np.ndarray, cache: tuple | None) -> np.ndarray:
        if cache is None:
            return dout
        j, a, h, cached, column = cache
        da = np.sum(dout * (cached - h), axis=(1, 2, 3))                          # [N]
        np.add.at(self.grads["a"][:, column], j, da)
        return (1 - a) * dout                                                     # [N, C, H, W]


def last_units_tbs(num_units: int, first_decoder_unit: int, connections: int, num_timesteps: int,
                   n_buckets: int = 100) -> TBS:
    """The last-units layout: units num_units - connections .. num_units - 1, each mixed with its own output."""
    decoder_units = num_units - first_decoder_unit
    if not 1 <= connections <= decoder_units:
        raise ValueError(f"TBS connections must be in 1..{decoder_units} (the decoder's units), got {connections}")
    first = num_units - connections
    return TBS({b: (b, b - first) for b in range(first, num_units)}, connections, num_timesteps, n_buckets)


def official_cifar_tbs(student: UNet, num_timesteps: int) -> TBS:
    """The official CIFAR code's layout (module docstring) on `student`, which needs at least 3 levels and the same
    channels on levels 1 and 2 (up.2.upsample's output is level 1's cache)."""
    cfg = student.cfg
    if len(cfg.ch_mult) < 3 or cfg.ch_mult[1] != cfg.ch_mult[2]:
        raise ValueError(f"--tbs-layout official-cifar needs >= 3 levels with ch_mult[1] == ch_mult[2] (ddim's "
                         f"CIFAR-10 UNet), this model has ch_mult {cfg.ch_mult}: use --tbs-layout last-units")
    units, level1 = student.units(), student.up_units[1]
    points: dict[Point, tuple[Point, int]] = {upsample_point(1): (upsample_point(1), 1)}
    if level1[0].attn is not None:
        points |= {units.index(unit): (upsample_point(2), 1) for unit in level1}
    return TBS(points, len(cfg.ch_mult), num_timesteps, init=0.0)


def attach_tbs(student: UNet, connections: int, num_timesteps: int, layout: str = BiDMConfig.tbs_layout) -> TBS | None:
    """Give a student UNet a TBS mixer (child `tbs`) in `layout`; over its last `connections` decoder units for
    last-units (official-cifar: fixed positions, any connections > 0). Called by bidm/student.py: build_unet,
    the one builder of TBS students."""
    if connections == 0:
        return None
    if layout == "official-cifar":
        mixer = official_cifar_tbs(student, num_timesteps)
    else:
        units = student.units()
        first_decoder = len(units) - len(student.cfg.ch_mult) * (student.cfg.num_res_blocks + 1)
        mixer = last_units_tbs(len(units), first_decoder, connections, num_timesteps)
    student.mixer = student.add_child("tbs", mixer)
    return student.mixer

def sampling_eps_fn(model: UNet) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """eps(x_t, t) for a sampler (docs/METHOD.md §5.1), the forward run under inference() (no backward caches); a TBS
    student starts without cache and remembers every step's outputs."""
    if model.mixer is not None:
        model.mixer.forget()

    def eps_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with inference():
            eps, cache = model.forward(x, t)                                      # [N, C, H, W]
        if model.mixer is not None:
            model.mixer.remember(UNet.point_outputs(cache))
        return eps

    return eps_fn
