"""`cli.py export`: the inference-only file of a trained checkpoint.

No arrays are computed here. A binary student (bidm, xnor, xnor_k) is packed to 1-bit words
(loading/packed.py). An FP model (a UNet, or the autoencoder of `cli.py train-ae`) is written as its
inference copy: the EMA weights (or the raw ones with use_ema=False) as /params, the same config and
step, no /ema, no /optim, no rng state, so a shipped teacher is a quarter of its training checkpoint
and still loads everywhere a checkpoint does (sampling, `--teacher` of a student, `--latent`).
A latent model's export may name another autoencoder file with the same weights (`autoencoder`: typically the
AE's own export, to ship beside it): its config then holds that file's path relative to the export's folder and
the weights' digest (latent.pinned_beside).
"""

from __future__ import annotations

import os
from typing import Any

from ..storage.checkpoint import load_checkpoint, save_checkpoint
from .latent import pinned_beside
from .packed import ExportSummary, export_packed, is_packed


def export_fp(ckpt_path: str, out_path: str, use_ema: bool = True, config: dict[str, Any] | None = None
              ) -> ExportSummary:
    """Write the inference copy of an FP checkpoint (see the module docstring); config: the run config to write
    instead of the checkpoint's."""
    ckpt = load_checkpoint(ckpt_path)
    weights, params = ckpt.weights(use_ema)
    save_checkpoint(out_path, params=params, config=ckpt.config if config is None else config, step=ckpt.step)
    return ExportSummary(path=out_path, bytes_on_disk=os.path.getsize(out_path), binary_layers=0, binary_weights=0,
                         float_params=sum(int(v.size) for v in params.values()), weights=weights)


def export_checkpoint(ckpt_path: str, out_path: str, use_ema: bool = True, autoencoder: str | None = None
                      ) -> ExportSummary:
    """Pack a binary student, or write the inference copy of an FP model; a latent model's with its autoencoder
    re-pointed at the file `autoencoder` (module docstring). An existing out_path is refused, never replaced."""
    if os.path.exists(out_path):
        raise FileExistsError(f"{out_path} already exists: pass a new --out, or delete the old file first")
    ckpt = load_checkpoint(ckpt_path)
    config = None if autoencoder is None else pinned_beside(ckpt.config, ckpt_path, autoencoder, out_path)
    if "student" in ckpt.config or is_packed(ckpt):
        return export_packed(ckpt_path, out_path, use_ema, config)
    return export_fp(ckpt_path, out_path, use_ema, config)
