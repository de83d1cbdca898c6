"""Build the UNet of a run config (the JSON dict stored in every checkpoint).

A run config is {"model": UNetConfig fields, "schedule": ..., ...}; tuples come back as lists.
A binary student's run config also has {"student": {"method": ..., "teacher": path}} and
{"bidm": BiDMConfig fields}; a student with TBS connections gets its TBS mixer back.
This module builds float models (FP, or a binary student simulated in float); a packed student is
packed.py's, and load.py picks between the two for a file.
"""

from __future__ import annotations

from typing import Any

from ..bidm.student import build_unet
from ..bidm.config import BiDMConfig
from ..binary.methods import BinaryLayers
from ..binary.variant import LayerVariant
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..nn.factory import DENSE
from ..storage.checkpoint import Checkpoint


def unet_config(run_config: dict[str, Any]) -> UNetConfig:
    """The UNetConfig of a run config (lists turned back into tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in run_config["model"].items()}
    return UNetConfig(**fields)


def tbs_connections(run_config: dict[str, Any]) -> int:
    """The TBS connections of a run config (0 for an FP model or a student without TBS)."""
    return run_config.get("bidm", {}).get("tbs_connections", 0)


def tbs_layout(run_config: dict[str, Any]) -> str:
    """The TBS layout of a run config (checkpoints written before the option: the default, last-units)."""
    return run_config.get("bidm", {}).get("tbs_layout", BiDMConfig.tbs_layout)


def model_from_checkpoint(ckpt: Checkpoint, where: str, use_ema: bool = True) -> UNet:
    """The float UNet (FP or binary student) of a loaded, not packed checkpoint, with its EMA weights or raw params."""
    student = ckpt.config.get("student")
    body = DENSE if student is None else BinaryLayers(student["method"], variant=LayerVariant.of_student(student))
    model = build_unet(unet_config(ckpt.config), body, tbs_connections(ckpt.config),
                       ckpt.config["schedule"]["num_timesteps"], tbs_layout=tbs_layout(ckpt.config))
    model.load_state_dict(ckpt.weights(use_ema)[1])
    return model
