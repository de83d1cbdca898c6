"""Efficiency accounting of docs/METHOD.md §10 (paper Table 4), computed from a model, not typed in.

Dimensions: N batch (1 for the table), C input / O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel, I input features, P = H*W attention positions, E = 4*ch embedding size.

Size:  bits = 1 per binary weight + 32 per float parameter; MB = bits / 8 / 2^20 (the paper's
       1045.4 MB for LDM-4's 274M float32 parameters is 2^20-byte MB). A binary layer stores sign(W)
       (1 bit per latent weight) and alpha [O] (float); its latent `bias` is unused in binary mode and not
       counted. Every other parameter is a float (K filters, thresholds, shortcut scales and convs, norms,
       FP layers, the TBS table). XNOR's fixed K filter is a constant of the kernel size, not stored.
Ops (one UNet evaluation = one sampling step, batch N):
       BOPs  = sum over binary convs  N*O*Ho*Wo*C*kh*kw  and binary linears  N*O*I  (1-bit multiply-adds)
       FLOPs = the float work left; a multiply-add counts as ONE FLOP (as one binary multiply-add is one
               BOP: the convention of the BNN papers, Bi-Real Net / ReActNet, whose OPs BiDM reports)
       OPs   = BOPs / 64 + FLOPs
FLOP rules, per module call (categories in brackets), 1 FLOP per element for each elementwise operation:
    FP conv / linear          N*O*Ho*Wo*C*kh*kw (N*O*I) multiply-adds + N*O*Ho*Wo (N*O) bias adds [fp_layers]
                              (a binary conv's FP 1x1 `shortcut` conv counts the same, in [shortcut])
    binary conv               A = mean_c |x|: N*C*H*W; K map: N*Ho*Wo*kh*kw (+ N*Ho*Wo with k_bias);
                              x + tau: N*C*H*W (with tau); z * alpha * K: 2*N*O*Ho*Wo        [binary_scales]
                              shortcut: 2x2 average pool 4*N*O*Ho*Wo (stride 2, C == O), identity 0;
                              s * shortcut + add: 2*N*O*Ho*Wo                                   [shortcut]
                              (the sign and the packing of x + tau are part of the binary work, not FLOPs)
    binary linear             x + tau: N*I (with tau); z * alpha: N*O                          [binary_scales]
    GroupNorm                 4 per element (sum, sum of squares, normalise, affine)           [norm]
    AttnBlock                 q^T k and v A^T: 2*N*P*P*C multiply-adds; scale + softmax (exp, sum, divide):
                              4*N*P*P; residual add N*C*P                                      [attention]
    ResnetBlock               SiLU(norm1 out) N*C*H*W, SiLU(temb) N*E, temb add, SiLU(norm2 out) and the
                              residual add 3*N*O*H*W                                           [elementwise]
    UNet                      timestep embedding N*ch, SiLU of the temb MLP N*E, SiLU(norm_out) N*ch*H*W
    TBS (connected unit)      (1 - a) * h + a * cache: 2 per element, counted as in the sampler's steady
                              state (every step after the first mixes)                          [elementwise]
    autoencoder Head          SiLU(norm_out) N*C*H*W (a ResnetBlock without temb counts no temb terms)
Latent rows (preset `latent`, the UNet on the `f4` autoencoder's 8x8x4 latents): the full-precision decoder
that turns the sampled latent into an image is part of the model, as in the paper's Table 4: its parameters
are float parameters of the row and one decoder pass (batch 1, the same rules) is added to the FLOPs under
[autoencoder]. The encoder is not needed to sample and is not counted.
How: instrumented counting. `count_ops` wraps the `forward` of every module that has a rule above,
runs one forward (the caller's closure), and applies the rule to the recorded input and output shapes;
modules without a rule (containers, upsampling, concatenation, dropout at evaluation) count nothing of
their own. A module of a class without a rule that holds parameters (e.g. another binarizer) is an error.
With `shapes_only` the convs, linears and norms return zeros of their output shape instead of computing
(the table's default: same counts, a second instead of a minute for cifar10; a test checks both agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..bidm.student import build_unet
from ..bidm.tbs import TBS
from ..binary.bidm_layers import BinaryConv2d, BinaryLinear
from ..binary.methods import BinaryLayers
from ..binary.packed_layers import LATENT_PARAMS, PackedConv2d, PackedLinear
from ..models.autoencoder import AE_PRESETS, Autoencoder, Head
from ..models.config import preset
from ..models.unet import UNet
from ..nn.attention import AttnBlock
from ..nn.conv import Conv2d
from ..nn.factory import DENSE
from ..nn.groupnorm import GroupNorm
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.padding import conv_output_size
from ..nn.resblock import ResnetBlock

FLOAT_BITS = 32
WORD_OPS = 64                                                                     # BOPs per OP
MB = 8 * 2**20                                                                    # bits per MB (2^20 bytes)
CATEGORIES = ("fp_layers", "binary_scales", "shortcut", "norm", "attention", "elementwise", "autoencoder")
BINARY_CONVS = (BinaryConv2d, PackedConv2d)
BINARY_LINEARS = (BinaryLinear, PackedLinear)
LEAVES = (*BINARY_CONVS, *BINARY_LINEARS, Conv2d, Linear, GroupNorm)
RULED = (*LEAVES, AttnBlock, ResnetBlock, TBS, UNet, Head)
TABLE_MODELS = {"fp": None, "xnor": "xnor", "bidm": "bidm"}                       # name -> binarization method
BIDM_TBS_CONNECTIONS = 2                                                          # BiDM's default (CIFAR-10)
TABLE_TIMESTEPS = 1000
LATENT_PRESET, LATENT_AUTOENCODER = "latent", "f4"                                # the latent rows' UNet and AE


@dataclass(frozen=True)
class ModelSize:
    binary_weights: int
    float_params: int

    @property
    def bits(self) -> int:
        return self.binary_weights + FLOAT_BITS * self.float_params

    @property
    def mb(self) -> float:
        return self.bits / MB


@dataclass(frozen=True)
class OpCounts:
    bops: int
    flops_by_category: dict[str, int]

    @property
    def flops(self) -> int:
        return sum(self.flops_by_category.values())

    @property
    def ops(self) -> float:
        return self.bops / WORD_OPS + self.flops


@dataclass(frozen=True)
class Efficiency:
    """One row of the table: a model at a preset, batch 1, one UNet evaluation."""

    model: str
    preset: str
    size: ModelSize
    ops: OpCounts


def count_size(model: Module) -> ModelSize:
    """1-bit binary weights and float parameters (alpha included) of a FP, float-simulated or packed model."""
    binary, floats = 0, 0
    for _, module in model.named_modules():
        own = module.params
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            w = own["weight"]                                                     # [O, C, kh, kw] / [O, I]
            binary += w.size
            floats += w.shape[0]                                                  # alpha [O]
            own = {k: v for k, v in own.items() if k not in LATENT_PARAMS}
        elif isinstance(module, (PackedConv2d, PackedLinear)):
            words = module.packed.words                                           # [O, kh, kw, Wd] / [O, Wd]
            inputs = module.in_channels if isinstance(module, PackedConv2d) else module.in_features
            binary += words.size // words.shape[-1] * inputs                      # O*kh*kw*C, pad bits excluded
            floats += words.shape[0]                                              # alpha [O]
        floats += sum(int(v.size) for v in own.values())
    return ModelSize(int(binary), int(floats))


@dataclass(frozen=True)
class Call:
    """One recorded forward: the module's dotted name, the module, its positional args and its output."""

    name: str
    module: Module
    args: tuple
    out: np.ndarray


def conv_shape(m: Module) -> tuple[int, int, int, tuple[int, int, int, int]]:
    """(O, kernel size, stride, padding) of a FP, binary or packed conv."""
    if isinstance(m, PackedConv2d):
        return m.out_channels, m.kernel_size, m.stride, m.padding
    O, _, k, _ = m.params["weight"].shape                                         # [O, C, kh, kw]
    return O, k, m.stride, m.padding


def leaf_output(m: Module, x: np.ndarray) -> np.ndarray:
    """Zeros of the output shape of a conv, linear or norm on x: what a shapes-only forward passes on.

    A binary conv still calls its FP `shortcut` conv child (recorded, itself shapes-only)."""
    if isinstance(m, BINARY_CONVS) and m.shortcut is not None:
        m.shortcut.forward(x)
    if isinstance(m, (Conv2d, *BINARY_CONVS)):
        O, k, stride, (top, bottom, left, right) = conv_shape(m)
        Ho = conv_output_size(x.shape[2], k, stride, top, bottom)
        Wo = conv_output_size(x.shape[3], k, stride, left, right)
        return np.zeros((x.shape[0], O, Ho, Wo), dtype=x.dtype)                   # [N, O, Ho, Wo]
    if isinstance(m, (Linear, BinaryLinear)):
        return np.zeros((x.shape[0], m.params["weight"].shape[0]), dtype=x.dtype)  # [N, O]
    if isinstance(m, PackedLinear):
        return np.zeros((x.shape[0], m.out_features), dtype=x.dtype)              # [N, O]
    return np.zeros_like(x)                                                       # GroupNorm: [N, C, H, W]


@contextmanager
def recorded_calls(model: Module, shapes_only: bool) -> Iterator[list[Call]]:
    """Wrap `forward` of every ruled module of `model` (instance attribute) so calls are recorded; unwrap after.

    shapes_only: convs, linears and norms do not compute, they return zeros of their output shape (the
    counts depend on shapes only; this makes counting the cifar10 UNet take a second instead of a minute).
    """
    calls: list[Call] = []
    wrapped = []
    for name, module in model.named_modules():
        if not isinstance(module, RULED):
            if module.params:
                raise ValueError(f"efficiency: no counting rule for {type(module).__name__} ({name}): "
                                 "only FP, XNOR and BiDM layers are counted")
            continue
        leaf = shapes_only and isinstance(module, LEAVES)

        def record(*args, _name=name, _module=module, _forward=module.forward, _leaf=leaf, **kwargs):
            out = (leaf_output(_module, args[0]), None) if _leaf else _forward(*args, **kwargs)
            calls.append(Call(_name, _module, args, out[0]))
            return out

        module.forward = record
        wrapped.append(module)
    try:
        yield calls
    finally:
        for module in wrapped:
            del module.forward


def conv_macs(out: np.ndarray, in_channels: int, kernel_elements: int) -> int:
    """Multiply-adds of a conv / linear: every output element takes in_channels * kernel_elements."""
    return int(out.size) * in_channels * kernel_elements


def call_counts(call: Call, shortcut_convs: set[str]) -> tuple[int, dict[str, int]]:
    """(BOPs, FLOPs by category) of one recorded call, by the rules of the module docstring."""
    m, out = call.module, call.out
    if isinstance(m, BINARY_CONVS):
        x = call.args[0]                                                          # [N, C, H, W]
        N, C = x.shape[:2]
        kh = kw = m.kernel_size
        k_map = N * out.shape[2] * out.shape[3]                                   # N*Ho*Wo
        has_tau, has_k_bias = "tau" in m.params, "k_bias" in m.params
        scales = x.size + k_map * (kh * kw + has_k_bias) + has_tau * x.size + 2 * out.size
        pool = 4 * out.size if m.shortcut is None and m.stride == 2 else 0
        return conv_macs(out, C, kh * kw), {"binary_scales": scales, "shortcut": pool + 2 * out.size}
    if isinstance(m, BINARY_LINEARS):
        x = call.args[0]                                                          # [N, I]
        return conv_macs(out, x.shape[1], 1), {"binary_scales": ("tau" in m.params) * x.size + out.size}
    if isinstance(m, (Conv2d, Linear)):
        w = m.params["weight"]                                                    # [O, C, kh, kw] / [O, I]
        flops = conv_macs(out, w.shape[1], int(np.prod(w.shape[2:]))) + ("bias" in m.params) * out.size
        return 0, {"shortcut" if call.name in shortcut_convs else "fp_layers": flops}
    if isinstance(m, GroupNorm):
        return 0, {"norm": 4 * out.size}
    if isinstance(m, AttnBlock):
        N, C, H, W = out.shape
        P = H * W
        return 0, {"attention": 2 * N * P * P * C + 4 * N * P * P + out.size}
    if isinstance(m, ResnetBlock):
        x = call.args[0]                                                          # [N, C, H, W]
        temb = call.args[1].size + out.size if m.temb_proj is not None else 0     # SiLU(temb) [N, E], temb add
        return 0, {"elementwise": x.size + temb + 2 * out.size}
    if isinstance(m, Head):
        return 0, {"elementwise": call.args[0].size}
    if isinstance(m, TBS):
        b, h = call.args[:2]                                                      # unit index, [N, C, H, W]
        return 0, {"elementwise": 2 * h.size if m.connected(b) else 0}
    if isinstance(m, UNet):
        N, cfg = out.shape[0], m.cfg
        return 0, {"elementwise": N * cfg.ch + N * 4 * cfg.ch + N * m.norm_out.num_channels * cfg.resolution**2}
    raise ValueError(f"efficiency: no counting rule for {type(m).__name__}")


def count_ops(model: Module, run_forward: Callable[[], object], shapes_only: bool = False) -> OpCounts:
    """BOPs and FLOPs of the forward that `run_forward()` performs on `model` (instrumented counting)."""
    shortcut_convs = {f"{name}.shortcut" for name, m in model.named_modules()
                      if isinstance(m, BINARY_CONVS) and m.shortcut is not None}
    with recorded_calls(model, shapes_only) as calls:
        run_forward()
    bops = 0
    flops = dict.fromkeys(CATEGORIES, 0)
    for call in calls:
        b, by_category = call_counts(call, shortcut_convs)
        bops += b
        for category, value in by_category.items():
            flops[category] += int(value)
    return OpCounts(int(bops), flops)


def table_model(name: str, preset_name: str) -> UNet:
    """The model of a table row: FP UNet, XNOR student, or BiDM student with TBS (random init: counts only)."""
    method = TABLE_MODELS[name]
    body = DENSE if method is None else BinaryLayers(method)
    return build_unet(preset(preset_name), body, BIDM_TBS_CONNECTIONS if name == "bidm" else 0, TABLE_TIMESTEPS)


def unet_efficiency(model: UNet, name: str, preset_name: str, shapes_only: bool = True) -> Efficiency:
    """Size and one batch-1 UNet evaluation's ops of `model` (input resolution from its config)."""
    cfg = model.cfg
    x = np.random.default_rng(0).standard_normal((1, cfg.in_channels, cfg.resolution, cfg.resolution))
    t = np.array([TABLE_TIMESTEPS // 2])
    ops = count_ops(model, lambda: model.forward(x.astype(np.float32), t), shapes_only)
    return Efficiency(name, preset_name, count_size(model), ops)


def with_decoder(row: Efficiency, ae: Autoencoder) -> Efficiency:
    """A latent row: the decoder's parameters as floats, one decoder pass (batch 1) as [autoencoder] FLOPs."""
    z = np.zeros((1, *ae.cfg.latent_shape), np.float32)                          # [1, Z, h, w]
    decode = count_ops(ae, lambda: ae.decode(z), shapes_only=True)
    size = ModelSize(row.size.binary_weights,
                     row.size.float_params + ae.decoder.num_parameters() + ae.post_quant_conv.num_parameters())
    flops = {**row.ops.flops_by_category, "autoencoder": decode.flops}
    return Efficiency(row.model, row.preset, size, OpCounts(row.ops.bops, flops))


def efficiency_table(presets: tuple[str, ...] = ("tiny", "cifar10", LATENT_PRESET)) -> list[Efficiency]:
    """Rows for FP, XNOR and BiDM at each preset (batch 1, the preset's resolution; latent rows with the decoder)."""
    rows = [unet_efficiency(table_model(name, p), name, p) for p in presets for name in TABLE_MODELS]
    if LATENT_PRESET not in presets:
        return rows
    ae = Autoencoder(AE_PRESETS[LATENT_AUTOENCODER], rng=np.random.default_rng(0))
    return [with_decoder(row, ae) if row.preset == LATENT_PRESET else row for row in rows]


def format_efficiency(rows: list[Efficiency]) -> str:
    """The table: size and ops per row, the FP row's size and OPs over this row's (the paper's 'x' columns),
    then the FLOPs of each row by category."""
    fp = {row.preset: row for row in rows if row.model == "fp"}
    lines = [f"{'model':<6} {'preset':<8} {'binary W':>10} {'float P':>10} {'size MB':>9} {'BOPs':>10} "
             f"{'FLOPs':>10} {'OPs':>10} {'size x':>7} {'OPs x':>7}"]
    for row in rows:
        ref = fp.get(row.preset)
        size_x = f"{ref.size.bits / row.size.bits:7.1f}" if ref else f"{'-':>7}"
        ops_x = f"{ref.ops.ops / row.ops.ops:7.1f}" if ref else f"{'-':>7}"
        lines.append(
            f"{row.model:<6} {row.preset:<8} {row.size.binary_weights:>10,} {row.size.float_params:>10,} "
            f"{row.size.mb:>9.3f} {row.ops.bops:>10.3e} {row.ops.flops:>10.3e} {row.ops.ops:>10.3e} {size_x} {ops_x}"
        )
    lines.append("BOPs: 1-bit multiply-adds; FLOPs: float work, a multiply-add = 1 FLOP; OPs = BOPs/64 + FLOPs; "
                 "batch 1, one UNet evaluation (latent rows: plus the FP decoder, one pass and its parameters); "
                 "MB = 2^20 bytes")
    lines.append(f"{'FLOPs by':<15} " + " ".join(f"{c:>13}" for c in CATEGORIES))
    for row in rows:
        by = row.ops.flops_by_category
        lines.append(f"{row.model:<6} {row.preset:<8} " + " ".join(f"{by[c]:>13.3e}" for c in CATEGORIES))
    return "\n".join(lines)
