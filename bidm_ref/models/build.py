"""Build a UNet from a run config (the JSON dict stored in every checkpoint) and load checkpoints.

A run config is {"model": UNetConfig fields, "schedule": ..., ...}; tuples come back as lists.
A binary student's run config also has {"student": {"method": ..., "teacher": path}} and
{"bidm": BiDMConfig fields}; a student with TBS connections gets its TBS mixer back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..bidm.tbs import attach_tbs
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
    connections = ckpt.config.get("bidm", {}).get("tbs_connections", 0)
    attach_tbs(model, connections, ckpt.config["schedule"]["num_timesteps"])
    weights = ckpt.ema if use_ema and ckpt.ema is not None else ckpt.params
    model.load_state_dict(weights)
    return model, ckpt.config


def sampling_eps_fn(model: UNet) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """eps(x_t, t) for a sampler; a TBS student starts without cache and remembers every step's outputs."""
    if model.mixer is not None:
        model.mixer.forget()

    def eps_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        eps, cache = model.forward(x, t)                                          # [N, C, H, W]
        if model.mixer is not None:
            model.mixer.remember(UNet.unit_features(cache))
        return eps

    return eps_fn
