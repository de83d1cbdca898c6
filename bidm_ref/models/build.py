"""Build a UNet from a run config (the JSON dict stored in every checkpoint) and load checkpoints.

A run config is {"model": UNetConfig fields, "schedule": ..., ...}; tuples come back as lists.
A binary student's run config also has {"student": {"method": ..., "teacher": path}}.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..binary.methods import BinaryLayers
from ..nn.factory import DENSE
from ..train.checkpoint import load_checkpoint
from .config import UNetConfig
from .unet import UNet


def unet_config(run_config: dict[str, Any]) -> UNetConfig:
    """The UNetConfig of a run config (lists turned back into tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in run_config["model"].items()}
    return UNetConfig(**fields)


def load_model(path: str, use_ema: bool = True) -> tuple[UNet, dict[str, Any]]:
    """The UNet (FP or binary student) of a checkpoint with its EMA weights (or raw params) and run config."""
    ckpt = load_checkpoint(path)
    if "model" not in ckpt.config:
        raise ValueError(f"{path} has no model config: it was not written by `cli.py train`")
    body = BinaryLayers(ckpt.config["student"]["method"]) if "student" in ckpt.config else DENSE
    model = UNet(unet_config(ckpt.config), rng=np.random.default_rng(0), body=body)
    weights = ckpt.ema if use_ema and ckpt.ema is not None else ckpt.params
    model.load_state_dict(weights)
    return model, ckpt.config
