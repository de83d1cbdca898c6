"""The layer variant of a BinaryConv2d student: two official-code choices in place of this project's
(docs/METHOD.md §11, items 1 and 5). Apart from the layers (methods.py builds them) so that `cli.py` reads
the defaults without importing them. No arrays here (no dimension legend needed).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LayerVariant:
    """downsample_pad: "zero" (this project: the (0, 1, 0, 1) pad zero-pads the +-1 activations) or "official"
    (ddim and the official BiDM code: x is padded before the binarizer, a padded tap is sign(0 + tau));
    fp_shortcut: False drops the scaled FP shortcut (plain XNOR-Net). Defaults: this project's choices, and
    the behaviour of every checkpoint written before these options existed."""

    downsample_pad: str = "zero"
    fp_shortcut: bool = True

    def __post_init__(self) -> None:
        if self.downsample_pad not in ("zero", "official"):
            raise ValueError(f"unknown --downsample-pad {self.downsample_pad!r}: use zero or official")

    @classmethod
    def of_student(cls, student: dict[str, Any]) -> LayerVariant:
        """The variant of a run config's `student` section (keys absent in older checkpoints: the defaults)."""
        return cls(**{f.name: student[f.name] for f in fields(cls) if f.name in student})


DEFAULT_VARIANT = LayerVariant()
