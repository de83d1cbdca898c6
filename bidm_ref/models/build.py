"""Build a UNet from a run config (the JSON dict stored in every checkpoint) and load checkpoints.

A run config is {"model": UNetConfig fields, "schedule": ..., ...}; tuples come back as lists.
A binary student's run config also has {"student": {"method": ..., "teacher": path}} and
{"bidm": BiDMConfig fields}; a student with TBS connections gets its TBS mixer back.
A packed student (root attr `packed`, written by `cli.py export`, models/packed.py) loads as the
UNet of packed popcount layers, so every reader of `load_model` samples it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..bidm.tbs import attach_tbs
from ..binary.methods import BinaryLayers
from ..nn.factory import DENSE, LayerFactory
from ..train.checkpoint import Checkpoint, load_checkpoint
from .config import UNetConfig
from .shipped import verify_listed
from .unet import UNet


def unet_config(run_config: dict[str, Any]) -> UNetConfig:
    """The UNetConfig of a run config (lists turned back into tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in run_config["model"].items()}
    return UNetConfig(**fields)


def tbs_connections(run_config: dict[str, Any]) -> int:
    """The TBS connections of a run config (0 for an FP model or a student without TBS)."""
    return run_config.get("bidm", {}).get("tbs_connections", 0)


def build_unet(cfg: UNetConfig, body: LayerFactory, connections: int, num_timesteps: int) -> UNet:
    """A UNet with `body` layers (seeded init, to be overwritten by a load) and its TBS mixer if connections > 0."""
    model = UNet(cfg, rng=np.random.default_rng(0), body=body)
    attach_tbs(model, connections, num_timesteps)
    return model


def model_from_checkpoint(ckpt: Checkpoint, where: str, use_ema: bool = True) -> UNet:
    """The UNet (FP, binary student or packed student) of a loaded checkpoint, with its EMA weights or raw params."""
    if "model" not in ckpt.config:
        raise ValueError(f"{where} has no model config: it was not written by `cli.py train` or `cli.py export`")
    from .packed import is_packed, packed_model  # packed.py builds on this module, so it is imported here

    if is_packed(ckpt):
        return packed_model(ckpt, where, use_ema)
    body = BinaryLayers(ckpt.config["student"]["method"]) if "student" in ckpt.config else DENSE
    model = build_unet(unet_config(ckpt.config), body, tbs_connections(ckpt.config),
                       ckpt.config["schedule"]["num_timesteps"])
    model.load_state_dict(ckpt.weights(use_ema)[1])
    return model


def load_model(path: str, use_ema: bool = True) -> tuple[UNet, dict[str, Any]]:
    """The UNet of a checkpoint file (FP, binary student or packed student) and its run config.

    A file listed in a MANIFEST.json of its folder (the shipped weights/) must match its sha256 first."""
    verify_listed(path)
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path, use_ema), ckpt.config


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
