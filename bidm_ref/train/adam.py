"""Adam, as torch.optim.Adam (amsgrad=False, L2 weight decay added to the gradient).

Dimensions: P, the shape of one parameter (any); every array of one name has shape P and
the parameter's dtype. Parameters, gradients and moments are plain dicts dotted name -> array
(`dict(module.named_parameters())`, `dict(module.named_grads())`), and `step` updates the
parameter arrays IN PLACE, so the model that owns them sees the new values.

With step count t = 1, 2, ... (incremented before the update):

    g     = grad + wd * p                          (L2 penalty, not AdamW's decoupled decay)
    m     = beta1 * m + (1 - beta1) * g
    v     = beta2 * v + (1 - beta2) * g^2
    m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)
    p     = p - lr * m_hat / (sqrt(v_hat) + eps)

The float arithmetic follows torch's single-tensor path (the CPU default) operation by
operation: m is updated as torch's `lerp_` does, m + (1 - beta1) * (g - m); v as
`mul_(beta2).addcmul_(g, g, 1 - beta2)`, v * beta2 + ((1 - beta2) * g) * g; the bias corrections
bc1 = 1 - beta1^t, bc2 = 1 - beta2^t and step_size = lr / bc1 are Python floats (float64);
denom = sqrt(v) / sqrt(bc2) + eps; p += (-step_size * m) / denom (`addcdiv_`). Scalars are
rounded to the parameter dtype before use, as torch does. Agreement with torch is to
rounding, not bitwise: torch's vectorized CPU kernels fuse some multiply-adds, NumPy does not.

Each parameter is updated by one Numba pass (`adam_update_kernel`: g, m, v and p per element, no fused
multiply-adds) instead of a dozen NumPy passes with temporaries: inside a cifar10 training step 87 ms -> 20 ms
with two threads (docs/ENGINE.md, "Optimizer"). Arrays of PARALLEL_MIN elements
and more run on every Numba thread, smaller ones on the calling thread (a parallel launch costs more than
a bias's update). The update is elementwise, so the bytes do not depend on the thread count, and they
equal the NumPy twin's (`adam_update_ref`, the same operations in the same order; tests/test_adam.py).

Defaults are ermongroup/ddim's CIFAR-10 config (lr 2e-4, eps 1e-8, weight_decay 0,
amsgrad false); its grad_clip 1.0 belongs to the trainer (see clip.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..nn.threaded import threaded_kernel
from ..storage.checkpoint import AdamState, check_same_arrays

PARALLEL_MIN = 1 << 15  # elements from which an update runs on every Numba thread (module docstring)


@dataclass(frozen=True)
class AdamConfig:
    """Adam hyperparameters (torch.optim.Adam's names; betas split into beta1, beta2)."""

    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"Adam lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"Adam {name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps >= 0 or not self.weight_decay >= 0:
            raise ValueError(f"Adam eps and weight_decay must be >= 0, got {self.eps}, {self.weight_decay}")


@dataclass(frozen=True)
class AdamScalars:
    """The scalars of step t (module docstring), rounded to the parameter dtype in `for_dtype`."""

    weight_decay: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    neg_step_size: float                                              # -lr / bc1
    bias_correction2_sqrt: float                                      # sqrt(bc2)
    eps: float

    @staticmethod
    def at_step(cfg: AdamConfig, t: int, lr: float) -> AdamScalars:
        return AdamScalars(cfg.weight_decay, 1 - cfg.beta1, cfg.beta2, 1 - cfg.beta2, -(lr / (1 - cfg.beta1**t)),
                           math.sqrt(1 - cfg.beta2**t), cfg.eps)

    def for_dtype(self, dtype: np.dtype) -> tuple:
        cast = np.dtype(dtype).type
        return tuple(cast(getattr(self, name)) for name in self.__dataclass_fields__)


def _adam_kernel(elements):
    """adam_update_kernel with `elements` prange or range (nn/threaded.py)."""

    def adam_update_kernel(p, grad, m, v, weight_decay, one_minus_beta1, beta2, one_minus_beta2, neg_step_size,
                           bias_correction2_sqrt, eps):  # pragma: no cover - compiled
        """One Adam step of flat p, m, v [P] in place from grad [P]; scalars in p's dtype (AdamScalars)."""
        for i in elements(p.size):
            g = grad[i] + weight_decay * p[i] if weight_decay != 0 else grad[i]
            m[i] = m[i] + one_minus_beta1 * (g - m[i])
            v[i] = v[i] * beta2 + (one_minus_beta2 * g) * g
            p[i] = p[i] + (neg_step_size * m[i]) / (np.sqrt(v[i]) / bias_correction2_sqrt + eps)

    return adam_update_kernel


# error_model="numpy": a zero denominator gives inf as in NumPy instead of raising, and without the check the
# serial loop vectorises (tiny preset 1.87 -> 0.91 ms per step)
adam_update_kernel = threaded_kernel(_adam_kernel, PARALLEL_MIN, error_model="numpy")


def flat_view(a: np.ndarray, what: str) -> np.ndarray:
    """The 1-D view of a C-contiguous array the update writes through; a one-line error for any other."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} {list(a.shape)} is not C-contiguous, so an in-place update would not reach it: "
                         "store parameters, moments and shadows as contiguous arrays (np.ascontiguousarray)")
    return a.reshape(-1)


def adam_update(p: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, scalars: AdamScalars) -> None:
    """One Adam step of p, m, v in place (adam_update_kernel; grad may be any layout of p's shape and dtype)."""
    kernel = adam_update_kernel.for_work(p.size)
    kernel(flat_view(p, "parameter"), np.ascontiguousarray(grad, dtype=p.dtype).reshape(-1),
           flat_view(m, "first moment"), flat_view(v, "second moment"), *scalars.for_dtype(p.dtype))


def adam_update_ref(p: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, scalars: AdamScalars) -> None:
    """NumPy twin of adam_update: the module docstring's operations as whole-array passes, in place."""
    s = scalars
    if s.weight_decay != 0:
        grad = grad + s.weight_decay * p                              # [P]
    m += s.one_minus_beta1 * (grad - m)
    v *= s.beta2
    v += (s.one_minus_beta2 * grad) * grad
    denom = np.sqrt(v) / s.bias_correction2_sqrt + s.eps              # [P]
    p += (s.neg_step_size * m) / denom


class Adam:
    """Adam over a dict of parameter arrays; state: step count `t`, moments `m`, `v` (same dtype as params)."""

    def __init__(self, config: AdamConfig = AdamConfig()) -> None:
        self.config = config
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """One Adam update of every parameter, in place (formula in the module docstring), at `lr` (a schedule's
        rate of this step; default: the config's)."""
        check_same_arrays(params, grads, "gradients")
        if self.t == 0 and not self.m:
            self.m = {name: np.zeros_like(p) for name, p in params.items()}  # [P] each
            self.v = {name: np.zeros_like(p) for name, p in params.items()}  # [P] each
        check_same_arrays(params, self.m, "Adam first moments")
        check_same_arrays(params, self.v, "Adam second moments")
        self.t += 1
        scalars = AdamScalars.at_step(self.config, self.t, self.config.lr if lr is None else lr)
        for name, p in params.items():
            adam_update(p, grads[name], self.m[name], self.v[name], scalars)

    def state_dict(self) -> AdamState:
        """The optimizer state (the moment arrays themselves, not copies)."""
        return AdamState(t=self.t, m=self.m, v=self.v)

    def load_state_dict(self, state: AdamState) -> None:
        """Restore t, m, v (copied); the next `step` checks them against the parameters."""
        if state.t < 0:
            raise ValueError(f"Adam step count must be >= 0, got {state.t}")
        check_same_arrays(state.m, state.v, "Adam second moments", against="the first moments")
        self.t = int(state.t)
        self.m = {name: np.array(arr) for name, arr in state.m.items()}
        self.v = {name: np.array(arr) for name, arr in state.v.items()}
