"""Load a model file: any checkpoint (FP, binary student, packed student) as a UNet and its run config.

A packed student (root attr `packed`, written by `cli.py export`, packed.py) loads as the UNet of packed
popcount layers, every other checkpoint through build.py, so every reader of `load_model` samples either.
A latent model's run config comes with its autoencoder's path as found (latent.located).
"""

from __future__ import annotations

from typing import Any

from ..models.unet import UNet
from ..storage.checkpoint import load_checkpoint
from .build import model_from_checkpoint
from .latent import located
from .packed import is_packed, packed_model
from .shipped import verify_listed


def load_model(path: str, use_ema: bool = True) -> tuple[UNet, dict[str, Any]]:
    """The UNet of a checkpoint file (FP, binary student or packed student) and its run config.

    A file listed in a MANIFEST.json of its folder (the shipped weights/) must match its sha256 first."""
    verify_listed(path)
    ckpt = load_checkpoint(path)
    if "model" not in ckpt.config:
        raise ValueError(f"{path} has no model config: it was not written by `cli.py train` or `cli.py export`")
    model = packed_model(ckpt, path, use_ema) if is_packed(ckpt) else model_from_checkpoint(ckpt, path, use_ema)
    return model, located(ckpt.config, path)
