"""Random draws of golden cases: float32-representable numbers kept away from the binarizers' kinks.

Dimensions: any shape given by the caller; shift broadcasts against it (e.g. tau [C, 1, 1] for x [N, C, H, W]).

Every drawn value is a float32 number stored as float64, so a float32 port loads params and inputs
exactly. Values that are binarized (or cross a pseudo-gradient's kink) are kept MARGIN = 1e-3 away from
every point in KINKS, so no port's rounding can move them across: 0 (sign), +-1 (ApproxSign, clipped
STE), +-0.1 and +-1.5 (ReSTE's m and t). Cases that pin sign(0) place exact zeros on purpose.

`random_params(module, rng)` gives every parameter of a module a value that exercises it: GroupNorm
affine away from (1, 0), binary layers' thresholds, K filters and scales away from their init, binary
weights N(0, 0.7^2) (so the clipped STE cuts some), TBS mixing weights spread; other float layers keep
their own (torch default) init.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..bidm.tbs import TBS
from ..nn.groupnorm import GroupNorm
from ..nn.module import Module

MARGIN = 1e-3
KINKS = (0.0, -0.1, 0.1, -1.0, 1.0, -1.5, 1.5)
WEIGHT_SCALE = 0.7

Sampler = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def f32(values: np.ndarray) -> np.ndarray:
    """Round to float32 and return as float64 (exactly representable in both)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def normal(rng: np.random.Generator, shape: tuple[int, ...] | int, scale: float = 1.0, mean: float = 0.0) -> np.ndarray:
    return f32(mean + scale * rng.standard_normal(shape))


def uniform(low: float, high: float) -> Sampler:
    """A sampler of U(low, high) float32 numbers."""
    return lambda rng, shape: f32(rng.uniform(low, high, shape))


def near(u: np.ndarray, points: Iterable[float], margin: float = MARGIN) -> np.ndarray:
    """True where u is within `margin` of any of `points`."""
    out = np.zeros(np.shape(u), dtype=bool)                                       # [...]
    for p in points:
        out |= np.abs(u - p) < margin
    return out


def away(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0, shift: np.ndarray | float = 0.0,
         points: Iterable[float] = KINKS) -> np.ndarray:
    """N(0, scale^2) float32 numbers x with x + shift at least MARGIN from every point (bad ones redrawn)."""
    points = tuple(points)
    x = normal(rng, shape, scale)                                                 # [...]
    for _ in range(100):
        bad = near(x + shift, points)                                             # [...]
        if not bad.any():
            return x
        x[bad] = normal(rng, int(bad.sum()), scale)
    raise RuntimeError("golden draw: could not keep values away from the kinks; use a larger scale")


def binary_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Latent binary weights N(0, 0.7^2), away from the kinks (some beyond |W| = 1, cut by the clipped STE)."""
    return away(rng, shape, WEIGHT_SCALE)


BINARY_PARAMS: dict[str, Sampler] = {
    "weight": binary_weights,
    "tau": uniform(-0.3, 0.3),
    "k_weight": uniform(0.05, 0.25),
    "k_bias": uniform(-0.1, 0.1),
    "shortcut_scale": uniform(0.2, 0.5),
    "rprelu_gamma": uniform(-0.1, 0.1),
    "rprelu_beta": uniform(0.1, 0.4),
    "rprelu_zeta": uniform(-0.1, 0.1),
    "gamma_out": uniform(0.5, 1.5),
    "gamma_h": uniform(0.5, 1.5),
    "gamma_w": uniform(0.5, 1.5),
}
NORM_PARAMS: dict[str, Sampler] = {
    "weight": lambda rng, shape: normal(rng, shape, 0.2, mean=1.0),
    "bias": lambda rng, shape: normal(rng, shape, 0.2),
}
MIXER_PARAMS: dict[str, Sampler] = {"a": uniform(0.1, 0.6)}


def samplers_for(module: Module) -> dict[str, Sampler]:
    """The samplers of a module's own parameters (empty: keep its init)."""
    if isinstance(module, GroupNorm):
        return NORM_PARAMS
    if hasattr(module, "binarize"):
        return BINARY_PARAMS
    if isinstance(module, TBS):
        return MIXER_PARAMS
    return {}


def random_params(module: Module, rng: np.random.Generator, only: set[str] | None = None) -> dict[str, np.ndarray]:
    """float64 values for every parameter (or those in `only`), by dotted name, in named_parameters order."""
    out = {}
    for prefix, child in module.named_modules():
        samplers = samplers_for(child)
        for pname, value in child.params.items():
            name = f"{prefix}.{pname}" if prefix else pname
            if only is not None and name not in only:
                continue
            out[name] = samplers[pname](rng, value.shape) if pname in samplers else f32(value)
    return out
