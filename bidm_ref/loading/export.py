"""`cli.py export`: the inference-only file of a trained checkpoint.

No arrays are computed here. A binary student (bidm, xnor, xnor_k) is packed to 1-bit words
(loading/packed.py). An FP model (a UNet, or the autoencoder of `cli.py train-ae`) is written as its
inference copy: the EMA weights (or the raw ones with use_ema=False) as /params, the same config and
step, no /ema, no /optim, no rng state, so a shipped teacher is a quarter of its training checkpoint
and still loads everywhere a checkpoint does (sampling, `--teacher` of a student, `--latent`).
A latent UNet pins its autoencoder by the file's sha256, so export the autoencoder *before* training
on its latents if the slim copy is the one to ship.
"""

from __future__ import annotations

import os

from ..storage.checkpoint import load_checkpoint, save_checkpoint
from .packed import ExportSummary, export_packed, is_packed


def export_fp(ckpt_path: str, out_path: str, use_ema: bool = True) -> ExportSummary:
    """Write the inference copy of an FP checkpoint (see the module docstring)."""
    ckpt = load_checkpoint(ckpt_path)
    weights, params = ckpt.weights(use_ema)
    save_checkpoint(out_path, params=params, config=ckpt.config, step=ckpt.step)
    return ExportSummary(path=out_path, bytes_on_disk=os.path.getsize(out_path), binary_layers=0, binary_weights=0,
                         float_params=sum(int(v.size) for v in params.values()), weights=weights)


def export_checkpoint(ckpt_path: str, out_path: str, use_ema: bool = True) -> ExportSummary:
    """Pack a binary student, or write the inference copy of an FP model."""
    ckpt = load_checkpoint(ckpt_path)
    if "student" in ckpt.config or is_packed(ckpt):
        return export_packed(ckpt_path, out_path, use_ema)
    return export_fp(ckpt_path, out_path, use_ema)
