"""Import a student checkpoint of the official BiDM code (github Xingyu-Zheng/BiDM, `bidm-cifar/`: a torch
file) into a bidm-ref HDF5 checkpoint, without torch (`cli.py import-official`).

The official runner saves `[model.state_dict(), optimizer.state_dict(), epoch, step(, ema.state_dict())]`
with DataParallel's `module.` prefix, as ddim does (import_ddim.py reads both). Its module names are ddim's,
so after the prefix every key keeps its name except these (docs/METHOD.md §11, item 6):

    official key                                 shape            bidm-ref key       shape
    <layer>.channel_threshold   (BNNConv2d)      [1, C, 1, 1]  -> <layer>.tau        [C]
    <layer>.channel_threshold   (BNNLinear)      [1, I]        -> <layer>.tau        [I]
    <layer>.fliter_k.weight                      [1, 1, kh, kw] -> <layer>.k_weight  [1, 1, kh, kw]
    <layer>.fliter_k.bias                        [1]           -> <layer>.k_bias     [1]
    cache_coefficients                           [100, levels] -> tbs.a              [100, levels]
    <attn>.quantizer_{q,k,v,w}.channel_threshold               -> dropped: the official AttnBlock runs with
                                                                  binary_act = False, so they are never used
<layer>.weight and .bias (the full-precision mode's), .shortcut.weight / .bias (the 1x1 FP shortcut) and
.shortcut_scale keep their names. The imported student is `--method bidm` with the official code's choices
where this project has an option for them: `--downsample-pad official`, `--tbs-layout official-cifar` and
lambda 1e-2 (§11, items 1, 2, 4); where it has none (sign(0) = +1, item 8; BNNLinear's forward sign(x)
without tau, item 10) the imported model computes this project's rule.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..bidm.config import BiDMConfig
from ..bidm.student import build_unet
from ..binary.methods import BinaryLayers
from ..binary.variant import LayerVariant
from ..data.torch_zip import load_torch_file
from ..diffusion.schedule import ScheduleConfig
from ..models.config import UNetConfig
from ..storage.checkpoint import save_checkpoint
from .import_ddim import check_against_model, ddim_states

RENAMED_SUFFIXES = {".fliter_k.weight": ".k_weight", ".fliter_k.bias": ".k_bias"}
THRESHOLD = ".channel_threshold"
UNUSED_QUANTIZERS = tuple(f".quantizer_{name}{THRESHOLD}" for name in "qkvw")
OFFICIAL_BIDM = BiDMConfig(tbs_layout="official-cifar", distill_lambda=1e-2)  # the objective it was trained with
OFFICIAL_VARIANT = LayerVariant(downsample_pad="official")


def bidm_name(key: str) -> str | None:
    """The bidm-ref name of an official parameter name (no `module.` prefix); None for a dropped one."""
    if key.endswith(UNUSED_QUANTIZERS):
        return None
    if key == "cache_coefficients":
        return "tbs.a"
    if key.endswith(THRESHOLD):
        return key.removesuffix(THRESHOLD) + ".tau"
    for old, new in RENAMED_SUFFIXES.items():
        if key.endswith(old):
            return key.removesuffix(old) + new
    return key


def convert_official_state(state: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """The official state under bidm-ref names; a threshold [1, C, 1, 1] / [1, I] becomes [C] / [I]."""
    out = {}
    for key, value in state.items():
        name = bidm_name(key)
        if name is None:
            continue
        if key.endswith(THRESHOLD):
            if value.ndim not in (2, 4) or value.shape[0] != 1 or value.size != value.shape[1]:
                raise ValueError(f"{path}: {key} has shape {list(value.shape)}, not [1, C, 1, 1] or [1, I]: "
                                 "it is not an official BiDM student checkpoint")
            value = value.reshape(-1)                                             # [C] / [I]
        out[name] = value
    return out


def import_official(ckpt_path: str, out_path: str, cfg: UNetConfig, schedule: ScheduleConfig = ScheduleConfig()) -> None:
    """Convert an official BiDM student checkpoint at `ckpt_path` into our checkpoint at `out_path` (atomic write)."""
    params, ema = ddim_states(load_torch_file(ckpt_path), ckpt_path)
    bidm, variant = OFFICIAL_BIDM, OFFICIAL_VARIANT
    student = build_unet(cfg, BinaryLayers("bidm", variant=variant), bidm.tbs_connections, schedule.num_timesteps,
                         tbs_layout=bidm.tbs_layout)
    params = convert_official_state(params, ckpt_path)
    check_against_model(params, cfg, ckpt_path, student)
    if ema is not None:
        ema = convert_official_state(ema, ckpt_path)
        check_against_model(ema, cfg, ckpt_path, student)
    config = {"model": asdict(cfg), "schedule": asdict(schedule),
              "student": {"method": "bidm", "teacher": "", **asdict(variant)}, "bidm": asdict(bidm),
              "source": {"official_bidm_checkpoint": str(ckpt_path)}}
    save_checkpoint(out_path, params=params, config=config, ema=ema)
