"""The binary student: the teacher's UNet with its body layers (docs/METHOD.md §2) binarized.

The student starts from the FP teacher: every teacher parameter is copied under the same
dotted name (weight and bias of the binarized layers included, so switching binarization
off reproduces the teacher exactly); the binarizers' own parameters (thresholds, K filters,
shortcut scales, ...) start at their documented init, or are re-derived from the copied weights
(XNOR++'s Gamma = mean |W| per output channel).
"""

from __future__ import annotations

import numpy as np

from ..binary.methods import BinaryLayers, init_from_weights
from .config import UNetConfig
from .unet import UNet


def build_student(cfg: UNetConfig, method: str, teacher_params: dict[str, np.ndarray], rng: np.random.Generator) -> UNet:
    """A binary UNet of `method`, initialised from the teacher's parameters."""
    student = UNet(cfg, rng=rng, body=BinaryLayers(method))
    own = student.state_dict()
    missing = [name for name in teacher_params if name not in own]
    if missing:
        raise ValueError(f"teacher parameters {missing[:3]} have no place in the {method} student: "
                         "the teacher was trained with another model config")
    student.load_state_dict(teacher_params, strict=False)
    init_from_weights(student)
    return student
