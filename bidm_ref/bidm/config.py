"""The config of the method, apart from the code that uses it (so `cli.py` reads its defaults without
importing the models).

BiDMConfig: the student objective (objective.py; docs/METHOD.md §7 and §5.2): TBS connections and
training gap and layout (docs/METHOD.md §11, item 2), the distillation (SPD, L2 or none), its weight lambda (distill_lambda, the weight of
whichever distillation loss), the feature positions it compares (distill_positions, §11 item 3) and SPD's patches and map.
No arrays here (no dimension legend needed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..binary.variant import LayerVariant

TBS_LAYOUTS = ("last-units", "official-cifar")  # bidm/tbs.py; the first is the default
DISTILL_POSITIONS = ("units", "official")  # objective.py: distill_points; the first is the default
RENAMED = {"spd_lambda": "distill_lambda"}  # old run-config key -> BiDMConfig field


@dataclass(frozen=True)
class BiDMConfig:
    tbs_connections: int = 2
    tbs_train_gap: int = 1
    tbs_layout: str = TBS_LAYOUTS[0]
    distill: str = "spd"
    distill_lambda: float = 4.0
    distill_positions: str = DISTILL_POSITIONS[0]
    spd_patches: int = 4
    spd_variant: str = "gram"

    @classmethod
    def for_method(cls, method: str, tbs_connections: int | None = None, distill: str | None = None,
                   **rest) -> BiDMConfig:
        """The objective a student of `method` trains with by default: BiDM gets TBS with 2 connections and SPD,
        every other method the plain noise loss; explicit tbs_connections / distill (not None) and `rest` win."""
        full = method == "bidm"
        return cls(tbs_connections=(2 if full else 0) if tbs_connections is None else tbs_connections,
                   distill=distill or ("spd" if full else "none"), **rest)

    @classmethod
    def from_saved(cls, saved: dict) -> BiDMConfig:
        """The config of a run config's `bidm` section. A checkpoint written before the rename calls
        distill_lambda `spd_lambda`."""
        return cls(**{RENAMED.get(key, key): value for key, value in saved.items()})

    def __post_init__(self) -> None:
        if self.tbs_layout not in TBS_LAYOUTS:
            raise ValueError(f"unknown --tbs-layout {self.tbs_layout!r}: use {' or '.join(TBS_LAYOUTS)}")
        if self.distill_positions not in DISTILL_POSITIONS:
            raise ValueError(f"unknown --distill-positions {self.distill_positions!r}: use "
                             f"{' or '.join(DISTILL_POSITIONS)}")
        if self.distill not in ("spd", "l2", "none"):
            raise ValueError(f"unknown --distill {self.distill!r}: use spd, l2 or none")
        if self.tbs_connections < 0 or self.tbs_train_gap < 1:
            raise ValueError("--tbs-connections must be >= 0 and --tbs-train-gap >= 1")


PLAIN_NOISE_LOSS = BiDMConfig(tbs_connections=0, distill="none")  # a baseline student: the denoising loss only


def current_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run config with its `bidm` and `student` sections (if any) as today's code writes them: old keys renamed,
    fields added since the checkpoint was written at their defaults (the behaviour it was trained with)."""
    current = dict(config)
    if "bidm" in config:
        current["bidm"] = asdict(BiDMConfig.from_saved(config["bidm"]))
    if "student" in config:
        current["student"] = {**config["student"], **asdict(LayerVariant.of_student(config["student"]))}
    return current
