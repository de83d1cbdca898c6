"""Import an ermongroup/ddim checkpoint (torch file) into a bidm-ref HDF5 checkpoint, without torch.

ddim saves either a bare `model.state_dict()` (the converted pretrained CIFAR-10 model) or
`[model.state_dict(), optimizer.state_dict(), epoch, step(, ema_helper.state_dict())]` from its
runner, with keys prefixed `module.` (DataParallel). The torch file is read by the restricted
unpickler of `data/torch_zip.py` (zip and legacy formats; nothing in the file is executed).
Our parameter names equal ddim's keys, so the mapping is one-to-one after the prefix is removed;
the EMA shadow, when present, becomes `/ema`. Arrays are stored as float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from ..data.torch_zip import load_torch_file
from ..diffusion.schedule import ScheduleConfig
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..nn.module import Module
from ..storage.checkpoint import save_checkpoint


def strip_prefix(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keys without DataParallel's `module.`, values as float32 arrays."""
    return {k.removeprefix("module."): np.asarray(v, dtype=np.float32) for k, v in state.items()}


def ddim_states(obj: Any, path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(model state, EMA state or None) from what ddim's torch.save wrote."""
    if isinstance(obj, Mapping):
        return strip_prefix(obj), None
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], Mapping):
        ema = obj[4] if len(obj) > 4 and isinstance(obj[4], Mapping) else None
        return strip_prefix(obj[0]), None if ema is None else strip_prefix(ema)
    raise ValueError(f"{path} is not a ddim checkpoint (expected a state_dict or [state_dict, optimizer, ...])")


def check_against_model(state: dict[str, np.ndarray], cfg: UNetConfig, path: str, model: Module | None = None) -> None:
    """Refuse a state whose names or shapes differ from `model` (default UNet(cfg)), naming the first difference."""
    own = (UNet(cfg, rng=np.random.default_rng(0)) if model is None else model).state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{path} does not fit the model config {cfg}: missing {missing[:3]}, unexpected {extra[:3]}; "
                         "pass the matching --preset")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise ValueError(f"{path}: {name} has shape {value.shape}, the model config expects {own[name].shape}")


def import_ddim(ckpt_path: str, out_path: str, cfg: UNetConfig, schedule: ScheduleConfig = ScheduleConfig()) -> None:
    """Convert ddim's checkpoint at `ckpt_path` into our HDF5 checkpoint at `out_path` (atomic write)."""
    params, ema = ddim_states(load_torch_file(ckpt_path), ckpt_path)
    check_against_model(params, cfg, ckpt_path)
    if ema is not None:
        check_against_model(ema, cfg, ckpt_path)
    config = {"model": asdict(cfg), "schedule": asdict(schedule), "source": {"ddim_checkpoint": str(ckpt_path)}}
    save_checkpoint(out_path, params=params, config=config, ema=ema)
