"""Exponential moving average of the parameters, as ermongroup/ddim's EMAHelper.

Dimensions: P, the shape of one parameter (any). Parameters and shadows are dicts dotted
name -> array; the shadow of a name has the parameter's shape and dtype.

    register(params):   shadow = copy of p                  (once, before training)
    update(params):     shadow = (1 - decay) * p + decay * shadow   (after every optimizer step)

so after k updates with a constant p, shadow = p + decay^k * (shadow_0 - p). The arithmetic
order is ddim's: `(1 - mu) * p + mu * shadow`, scalars rounded to the parameter dtype.
Evaluation uses the shadow weights: `copy_to(params)` overwrites the parameters (ddim's
`ema(module)`), `with ema.swapped_into(params):` does so only inside the block and restores
the trained weights afterwards, also on error.

`update` runs one Numba pass per parameter (`ema_update_kernel`, the same two products and sum per
element as the NumPy twin `ema_update_ref`, so the same bytes), threaded from adam.PARALLEL_MIN elements.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from ..nn.threaded import threaded_kernel
from ..storage.checkpoint import check_same_arrays
from .adam import PARALLEL_MIN, flat_view


def _ema_kernel(elements):
    """ema_update_kernel with `elements` prange or range (nn/threaded.py)."""

    def ema_update_kernel(shadow, p, one_minus_decay, decay):  # pragma: no cover - compiled
        """shadow = (1 - decay) * p + decay * shadow, flat [P], in place; scalars in p's dtype."""
        for i in elements(p.size):
            shadow[i] = one_minus_decay * p[i] + decay * shadow[i]

    return ema_update_kernel


ema_update_kernel = threaded_kernel(_ema_kernel, PARALLEL_MIN)


def ema_update(shadow: np.ndarray, p: np.ndarray, decay: float) -> None:
    """shadow = (1 - decay) * p + decay * shadow in place (ema_update_kernel)."""
    cast = p.dtype.type
    kernel = ema_update_kernel.for_work(p.size)
    kernel(flat_view(shadow, "EMA shadow"), np.ascontiguousarray(p).reshape(-1), cast(1.0 - decay), cast(decay))


def ema_update_ref(shadow: np.ndarray, p: np.ndarray, decay: float) -> None:
    """NumPy twin of ema_update."""
    shadow[...] = (1.0 - decay) * p + decay * shadow


class EMA:
    """Shadow copies of the parameters, averaged with weight `decay` (ddim's mu, default 0.9999)."""

    def __init__(self, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow: dict[str, np.ndarray] = {}

    def register(self, params: Mapping[str, np.ndarray]) -> None:
        """Start the average at the current parameters (copies)."""
        self.shadow = {name: np.array(p) for name, p in params.items()}  # [P] each

    def update(self, params: Mapping[str, np.ndarray]) -> None:
        """shadow = (1 - decay) * p + decay * shadow, in place, for every parameter."""
        self._check(params)
        for name, p in params.items():
            ema_update(self.shadow[name], p, self.decay)

    def copy_to(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite the parameter arrays in place with the shadow values."""
        self._check(params)
        for name, p in params.items():
            p[...] = self.shadow[name]

    @contextmanager
    def swapped_into(self, params: Mapping[str, np.ndarray]) -> Iterator[None]:
        """Inside the block the parameters hold the shadow values; afterwards their own values again."""
        saved = {name: np.array(p) for name, p in params.items()}        # [P] each
        self.copy_to(params)
        try:
            yield
        finally:
            for name, p in params.items():
                p[...] = saved[name]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The shadow arrays by dotted name (the arrays themselves, not copies)."""
        return self.shadow

    def load_state_dict(self, shadow: Mapping[str, np.ndarray]) -> None:
        """Restore the shadows (copied); later calls check them against the parameters."""
        self.shadow = {name: np.array(arr) for name, arr in shadow.items()}

    def _check(self, params: Mapping[str, np.ndarray]) -> None:
        if not self.shadow:
            raise ValueError("EMA has no shadow weights: call EMA.register(params) before update or copy_to")
        check_same_arrays(params, self.shadow, "EMA shadows")
