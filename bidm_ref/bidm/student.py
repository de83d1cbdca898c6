"""The binary student: the teacher's UNet with its body layers (docs/METHOD.md §2) binarized, and the one
place a UNet gets its TBS mixer (docs/METHOD.md §5).

The student starts from the FP teacher: every teacher parameter is copied under the same
dotted name (weight and bias of the binarized layers included, so switching binarization
off reproduces the teacher exactly); the binarizers' own parameters (thresholds, K filters,
shortcut scales, ...) start at their documented init, or are re-derived from the copied weights
(XNOR++'s Gamma = mean |W| per output channel). The TBS table starts at its init (tbs.py).
"""

from __future__ import annotations

import numpy as np

from ..binary.methods import BinaryLayers, init_from_weights
from ..binary.variant import DEFAULT_VARIANT, LayerVariant
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..nn.factory import LayerFactory
from .config import BiDMConfig
from .tbs import attach_tbs


def build_unet(cfg: UNetConfig, body: LayerFactory, connections: int, num_timesteps: int,
               rng: np.random.Generator | None = None, tbs_layout: str = BiDMConfig.tbs_layout) -> UNet:
    """A UNet with `body` layers and its TBS mixer in `tbs_layout` if connections > 0 (seeded init unless `rng`:
    a loader overwrites it)."""
    model = UNet(cfg, rng=np.random.default_rng(0) if rng is None else rng, body=body)
    attach_tbs(model, connections, num_timesteps, tbs_layout)
    return model


def build_student(cfg: UNetConfig, method: str, teacher_params: dict[str, np.ndarray], rng: np.random.Generator,
                  connections: int = 0, num_timesteps: int | None = None,
                  variant: LayerVariant = DEFAULT_VARIANT, tbs_layout: str = BiDMConfig.tbs_layout) -> UNet:
    """A binary UNet of `method` (layers in `variant`), initialised from the teacher's parameters, with
    `connections` TBS connections (num_timesteps: the schedule's T, which TBS buckets; needed when connections > 0)."""
    student = build_unet(cfg, BinaryLayers(method, variant=variant), connections, num_timesteps, rng, tbs_layout)
    own = student.state_dict()
    missing = [name for name in teacher_params if name not in own]
    if missing:
        raise ValueError(f"teacher parameters {missing[:3]} have no place in the {method} student: "
                         "the teacher was trained with another model config")
    student.load_state_dict(teacher_params, strict=False)
    init_from_weights(student)
    return student
