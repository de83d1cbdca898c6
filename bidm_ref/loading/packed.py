"""Packed student checkpoints: a trained W1A1 student with its binary weights stored as bits, and its loader.

Dimensions: O output channels, C input channels (I features), kh, kw kernel, Wd = ceil(C / 64) packed words.

File layout: a bidm checkpoint (storage/checkpoint.py, written by save_checkpoint with extra attrs and one
extra group), so the usual reader checks format, version, truncation and NaN:
    root attrs   format = "bidm-ckpt", format_version = 1, step = the student's step, rng_state = null,
                 config          the student's run config (JSON; model, schedule, student.method, bidm ...)
                 packed = 1      marks a packed student; the version of this layout
                 packed_weights  "ema" or "params": which of the student's weights were packed
    /params/<name>             every parameter of the packed UNet, float32: the student's parameters
                               except the binarized layers' latent `weight` and `bias` (FP convs and linears,
                               GroupNorms, thresholds `tau`, K filters `k_weight`/`k_bias`, `shortcut_scale`
                               and `shortcut.*` 1x1 convs, the TBS table `tbs.a`)
    /packed/<layer>.words      uint64 sign(W): conv [O, kh, kw, Wd] (channels last), linear [O, Wd];
                               channel c -> word c // 64, bit c % 64 (LSB first), bit 1 means W < 0
                               (sign(0) = +1), pad bits 0 (binary/bitpack.py)
    /packed/<layer>.alpha      float32 [O], alpha = mean |W| over (C, kh, kw), resp. over I
for every binary layer <layer>, by its dotted name in the student (e.g. down.0.block.0.conv1). No /ema
and no /optim: the file is for inference only.

Packable methods: those whose layers are BinaryConv2d / BinaryLinear (bidm, xnor, xnor_k); the others
are refused with a one-line error. Loading builds the UNet of the config with PackedLayers and, when the
config has TBS connections, its TBS mixer; /params load strictly by name and every packed layer takes
its words and alpha. A missing, unexpected or malformed array is a CheckpointError naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..bidm.student import build_unet
from ..bidm.config import BiDMConfig
from ..binary.methods import binary_layers
from ..binary.packed_layers import LATENT_PARAMS, PackedLayers, pack_binary_layer, packable_options, packed_layers
from ..binary.variant import DEFAULT_VARIANT, LayerVariant
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..storage.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .build import model_from_checkpoint, tbs_connections, tbs_layout, unet_config

PACKED_ATTR = "packed"
PACKED_VERSION = 1
WEIGHTS_ATTR = "packed_weights"
PACKED_GROUP = "packed"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ExportSummary:
    """What `export_packed` wrote: the file, its size on disk, the packed layers and which weights."""

    path: str
    bytes_on_disk: int
    binary_layers: int
    binary_weights: int
    float_params: int
    weights: str


def is_packed(ckpt: Checkpoint) -> bool:
    return PACKED_ATTR in ckpt.attrs


def pack_student(student: UNet) -> tuple[Arrays, Arrays]:
    """(params, packed) groups of a float student: its parameters minus the latent weights, and words + alpha."""
    packed: Arrays = {}
    latent = set()
    for name, layer in binary_layers(student):
        weight = pack_binary_layer(layer)
        packed[f"{name}.words"] = weight.words                                    # [O, kh, kw, Wd] / [O, Wd]
        packed[f"{name}.alpha"] = weight.alpha                                    # [O]
        latent.update(f"{name}.{param}" for param in LATENT_PARAMS)
    params = {name: value for name, value in student.named_parameters() if name not in latent}
    return params, packed


def take(arrays: Arrays, key: str, where: str) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{where} lacks /{PACKED_GROUP}/{key}: the packed file is incomplete; export it again")
    return arrays[key]


def packed_unet(
    cfg: UNetConfig, method: str, connections: int, num_timesteps: int, params: Arrays, packed: Arrays,
    where: str = "packed model",
) -> UNet:
    """The UNet of packed layers for `method`, with TBS if connections > 0, filled from the two groups."""
    model = build_unet(cfg, PackedLayers(packable_options(method)), connections, num_timesteps)
    try:
        model.load_state_dict(params)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{where}: /params do not fit the packed {method} UNet of its config ({err})") from None
    unused = set(packed)
    for name, layer in packed_layers(model):
        words, alpha = take(packed, f"{name}.words", where), take(packed, f"{name}.alpha", where)
        try:
            layer.set_packed(words, alpha)
        except ValueError as err:
            raise CheckpointError(f"{where}: /{PACKED_GROUP}/{name}: {err}") from None
        unused -= {f"{name}.words", f"{name}.alpha"}
    if unused:
        raise CheckpointError(
            f"{where} has /{PACKED_GROUP} arrays no layer of its model uses ({sorted(unused)[:3]}): "
            "it was packed for another model config"
        )
    return model


def packed_twin(student: UNet, method: str, num_timesteps: int) -> UNet:
    """The packed UNet of a float student, in memory (same weights, same TBS connections)."""
    packable_options(method)                                                      # an unpackable method: one line
    connections = 0 if student.mixer is None else student.mixer.connections
    return packed_unet(student.cfg, method, connections, num_timesteps, *pack_student(student))


def refuse_unpackable(config: dict, where: str) -> None:
    """One-line error for a student the popcount UNet does not compute (docs/METHOD.md §11, items 1, 2, 5)."""
    variant = LayerVariant.of_student(config["student"])
    if variant.downsample_pad != DEFAULT_VARIANT.downsample_pad:
        raise ValueError(f"{where}: the packed kernel pads the +-1 activations with zeros and cannot compute "
                         "--downsample-pad official (padded taps = sign(tau)): sample the float checkpoint")
    if tbs_layout(config) != BiDMConfig.tbs_layout:
        raise ValueError(f"{where}: the packed loader builds TBS in the last-units layout only and cannot run a "
                         f"--tbs-layout {tbs_layout(config)} student: sample the float checkpoint")
    if variant.fp_shortcut != DEFAULT_VARIANT.fp_shortcut:
        raise ValueError(f"{where}: the packed layers always add the scaled FP shortcut and cannot run a "
                         "--no-fp-shortcut student: sample the float checkpoint")


def packed_model(ckpt: Checkpoint, where: str, use_ema: bool = True) -> UNet:
    """The packed UNet of a packed checkpoint (loading/load.py dispatches here)."""
    version = ckpt.attrs[PACKED_ATTR]
    if version != PACKED_VERSION:
        raise CheckpointError(
            f"{where} has packed layout {version}, this bidm-ref reads {PACKED_VERSION}: re-export it"
        )
    if not use_ema and ckpt.attrs.get(WEIGHTS_ATTR) == "ema":
        raise ValueError(f"{where} holds the packed EMA weights only: drop --raw, or export the raw weights")
    config = ckpt.config
    if "student" not in config:
        raise CheckpointError(f"{where} is marked packed but its config has no student method: export it again")
    refuse_unpackable(config, where)
    return packed_unet(
        unet_config(config), config["student"]["method"], tbs_connections(config),
        config["schedule"]["num_timesteps"], ckpt.params, ckpt.groups.get(PACKED_GROUP, {}), where,
    )


def export_packed(student_path: str, out_path: str, use_ema: bool = True, config: dict | None = None) -> ExportSummary:
    """Write the packed checkpoint of a float student checkpoint (EMA weights if it has them and use_ema); config:
    the run config to write instead of the student's."""
    ckpt = load_checkpoint(student_path)
    if is_packed(ckpt):
        raise ValueError(f"{student_path} is already packed: pass the float student checkpoint of `cli.py train`")
    if "student" not in ckpt.config:
        raise ValueError(
            f"{student_path} is an FP model, not a binary student: train one with `cli.py train --method bidm`"
        )
    packable_options(ckpt.config["student"]["method"])
    refuse_unpackable(ckpt.config, student_path)
    student = model_from_checkpoint(ckpt, student_path, use_ema)
    params, packed = pack_student(student)
    weights, _ = ckpt.weights(use_ema)
    alphas = [v for k, v in packed.items() if k.endswith(".alpha")]
    save_checkpoint(
        out_path, params=params, config=ckpt.config if config is None else config, step=ckpt.step,
        extra_attrs={PACKED_ATTR: PACKED_VERSION, WEIGHTS_ATTR: weights}, extra_groups={PACKED_GROUP: packed},
    )
    return ExportSummary(
        path=out_path,
        bytes_on_disk=os.path.getsize(out_path),
        binary_layers=len(alphas),
        binary_weights=sum(int(layer.params["weight"].size) for _, layer in binary_layers(student)),
        float_params=sum(int(v.size) for v in [*params.values(), *alphas]),
        weights=weights,
    )
