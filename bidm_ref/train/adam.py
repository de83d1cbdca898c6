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

Defaults are ermongroup/ddim's CIFAR-10 config (lr 2e-4, eps 1e-8, weight_decay 0,
amsgrad false); its grad_clip 1.0 belongs to the trainer (see clip.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..storage.checkpoint import AdamState, check_same_arrays


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


class Adam:
    """Adam over a dict of parameter arrays; state: step count `t`, moments `m`, `v` (same dtype as params)."""

    def __init__(self, config: AdamConfig = AdamConfig()) -> None:
        self.config = config
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """One Adam update of every parameter, in place (formula in the module docstring)."""
        check_same_arrays(params, grads, "gradients")
        if self.t == 0 and not self.m:
            self.m = {name: np.zeros_like(p) for name, p in params.items()}  # [P] each
            self.v = {name: np.zeros_like(p) for name, p in params.items()}  # [P] each
        check_same_arrays(params, self.m, "Adam first moments")
        check_same_arrays(params, self.v, "Adam second moments")
        cfg = self.config
        self.t += 1
        bias_correction1 = 1 - cfg.beta1**self.t
        bias_correction2 = 1 - cfg.beta2**self.t
        step_size = cfg.lr / bias_correction1
        bias_correction2_sqrt = math.sqrt(bias_correction2)
        for name, p in params.items():
            grad = grads[name]                                        # [P]
            if cfg.weight_decay != 0:
                grad = grad + cfg.weight_decay * p                    # [P]
            m, v = self.m[name], self.v[name]                         # [P], [P]
            m += (1 - cfg.beta1) * (grad - m)
            v *= cfg.beta2
            v += ((1 - cfg.beta2) * grad) * grad
            denom = np.sqrt(v) / bias_correction2_sqrt + cfg.eps      # [P]
            p += (-step_size * m) / denom

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
