"""Golden cases of the binarizers (group "binary"): every quantizer and every method's binary conv and linear.

Dimensions: N batch, C input channels, O output channels, H, W spatial, kh, kw kernel, I, O features.

Quantizer ops (quantizers.py), u any shape: outputs y = q(u), grads u = q.grad(u, dout) (the
pseudo-gradient). Layer ops (methods.py): `binary_conv2d` and `binary_linear` in binary mode, hyper
`method`; the FP-mode `bias` is not part of these cases (unused when binarized). Pre-binarization values
(u = x + tau, weights) keep 1e-3 from every kink except in the `sign0` cases, which put exact zeros
(and -0.0) where sign(0) = +1 decides. BiDM's packable conv and linear run at C = 70 (two words, the
second with pad bits); the other methods at C = 10 (no packed kernel of theirs).
Layer cases store /cache/sign_u, the +-1 activations sign(x + tau) the layer convolves (compare sign_agree),
and BiDM's conv (bidm, xnor, xnor_k) /cache/acc, the int32 +-1 conv of sign(x + tau) and sign(W) (zero
padding): the accumulator the packed popcount kernel must reproduce exactly.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..binary.bidm_layers import BinaryConv2d
from ..binary.bitpack import pack_activations, pack_conv_weight
from ..binary.kernels import conv_acc
from ..binary.methods import BinaryLayers, set_progress
from ..binary.quantizers import (
    ApproxSign,
    ClippedSign,
    LayerScaledSignWeights,
    RectifiedSign,
    ScaledSignWeights,
    sign,
)
from ..binary.variant import LayerVariant
from ..nn.conv import as_padding, conv2d
from ..nn.module import Module
from .cases_packed import signed_sum
from .draws import away, binary_weights, normal, random_params
from .format import Arrays, Golden
from .harness import forward_backward, init_rng, upstream
from .registry import Draw, Result, case, close, exact, kernel, op, signs

QUANTIZERS = {
    "approx_sign": (lambda hyper: ApproxSign(), "ApproxSign (Bi-Real): y = sign(u); du = dout * (2 + 2u on [-1, 0), "
                    "2 - 2u on [0, 1), 0 elsewhere)"),
    "clipped_sign": (lambda hyper: ClippedSign(), "clipped STE: y = sign(u); du = dout * 1{|u| <= 1}"),
    "scaled_sign_weights": (lambda hyper: ScaledSignWeights(), "XNOR/BiDM weights: y = alpha_o sign(W), alpha_o = mean "
                            "|W[o]| (a constant); dW = dout * 1{|W| <= 1}"),
    "layer_scaled_sign_weights": (lambda hyper: LayerScaledSignWeights(), "DoReFa weights: y = E sign(W), E = mean "
                                  "|W| over the tensor (a constant); dW = dout"),
    "rectified_sign": (lambda hyper: RectifiedSign(hyper["o"], hyper["t"], hyper["m"]), "ReSTE: y = sign(u); du = "
                       "dout * (m^(1/o - 1) for |u| <= m, (1/o) |u|^(1/o - 1) for m < |u| <= t, 0 beyond t)"),
}


def run_quantizer(params: Arrays, inputs: Arrays, hyper: dict, name: str) -> Result:
    q = QUANTIZERS[name][0](hyper)
    u = inputs["u"]                                                               # [...]
    y = q(u)                                                                      # [...]
    du = q.grad(u, inputs["dout"])                                                # [...]
    return Result(outputs={"y": close(y) if "scaled" in name else exact(y)}, grads={"u": close(du)})


for _name in QUANTIZERS:
    op(_name)(partial(run_quantizer, name=_name))


def draw_quantizer(rng: np.random.Generator, name: str, shape: tuple[int, ...], hyper: dict | None = None,
                   zeros: bool = False) -> Draw:
    """u away from the kinks (weights-like scale for weight quantizers); `zeros` adds exact 0.0 and -0.0."""
    u = binary_weights(rng, shape) if "weights" in name else away(rng, shape)     # [...]
    if zeros:
        flat = u.reshape(-1)                                                      # [M]
        flat[::5] = 0.0
        flat[1::10] = -0.0
    description = QUANTIZERS[name][1] + ("; exact zeros and -0.0: sign(0) = +1" if zeros else "")
    return Draw({}, {"u": u, "dout": normal(rng, shape)}, hyper or {}, description)


for _name, _variant, _shape, _hyper, _zeros in [
    ("approx_sign", "n2_c70_h2_w2", (2, 70, 2, 2), None, False),
    ("approx_sign", "sign0", (2, 5, 2, 3), None, True),
    ("clipped_sign", "n2_c70_h2_w2", (2, 70, 2, 2), None, False),
    ("clipped_sign", "sign0", (2, 5, 2, 3), None, True),
    ("scaled_sign_weights", "o3_c70_k3", (3, 70, 3, 3), None, False),
    ("scaled_sign_weights", "sign0", (4, 5, 3, 3), None, True),
    ("layer_scaled_sign_weights", "o3_c70_k3", (3, 70, 3, 3), None, False),
    ("rectified_sign", "o1", (2, 70, 2, 2), dict(o=1.0, t=1.5, m=0.1), False),
    ("rectified_sign", "o2_5", (2, 70, 2, 2), dict(o=2.5, t=1.5, m=0.1), False),
]:
    case("binary", f"{_name}__{_variant}")(partial(draw_quantizer, name=_name, shape=_shape, hyper=_hyper, zeros=_zeros))


def binary_layer(hyper: dict) -> Module:
    """The method's binary conv or linear of a case (ReSTE with its annealing progress; the layer variant of the
    hyper keys downsample_pad and fp_shortcut, where a case has them: the cases added after v1's first files)."""
    body = BinaryLayers(hyper["method"], variant=LayerVariant.of_student(hyper)).at(hyper.get("resolution", 0))
    if "kernel_size" in hyper:
        layer = body.conv(hyper["in_channels"], hyper["out_channels"], hyper["kernel_size"], hyper["stride"],
                          tuple(hyper["padding"]), rng=init_rng())
    else:
        layer = body.linear(hyper["in_features"], hyper["out_features"], rng=init_rng())
    set_progress(layer, hyper.get("progress", 0.0))
    return layer


def threshold(params: Arrays, channels: int) -> np.ndarray:
    """tau [C] of a case (zeros for methods without a threshold)."""
    return params.get("tau", np.zeros(channels))


def per_channel(tau: np.ndarray, ndim: int) -> np.ndarray:
    """tau [C] shaped to broadcast over the channel axis of an ndim-array [N, C, ...]: [C, 1, ...]."""
    return tau.reshape(-1, *[1] * (ndim - 2))


def binarized_input(params: Arrays, x: np.ndarray) -> np.ndarray:
    """sign(u), u = x + tau (x for methods without a threshold): the +-1 activations the layer convolves."""
    return sign(x + per_channel(threshold(params, x.shape[1]), x.ndim))          # [N, C, ...]


@op("binary_conv2d")
def run_binary_conv2d(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    layer = binary_layer(hyper)
    result = forward_backward(layer, params, inputs, ("x",), ("x",), optional=("bias",))
    xb = binarized_input(params, inputs["x"])                                     # [N, C, H, W]
    cache = {"sign_u": signs(xb)}
    if isinstance(layer, BinaryConv2d) and not layer.options.pad_before_sign:  # the packed kernel's accumulator
        acc, _ = conv2d(xb, sign(params["weight"]), None, hyper["stride"], tuple(hyper["padding"]))  # [N, O, Ho, Wo]
        cache["acc"] = exact(signed_sum(acc))
    return Result(result.outputs, result.grads, cache)


@kernel("binary_conv2d")
def numba_layer_acc(golden: Golden) -> dict[str, np.ndarray]:
    """BiDM's conv on packed bits: pack sign(x + tau) (Numba) and sign(W), run conv_acc -> the layer's /cache/acc."""
    if "acc" not in golden.cache:
        return {}
    x, weight = golden.inputs["x"], golden.params["weight"]                       # [N, C, H, W], [O, C, kh, kw]
    words = pack_conv_weight(weight, np.ones(weight.shape[0], dtype=np.float32))
    packed = pack_activations(x, threshold(golden.params, x.shape[1]))            # [N, H, W, Wd]
    return {"cache/acc": conv_acc(packed, words.words_t, weight.shape[0], x.shape[1], golden.hyper["stride"],
                                  tuple(golden.hyper["padding"]))}


@op("binary_linear")
def run_binary_linear(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    result = forward_backward(binary_layer(hyper), params, inputs, ("x",), ("x",), optional=("bias",))
    return Result(result.outputs, result.grads, {"sign_u": signs(binarized_input(params, inputs["x"]))})


def draw_binary_layer(rng: np.random.Generator, hyper: dict, shape: tuple[int, ...], zeros: bool = False) -> Draw:
    """Random binary-layer params (no FP bias) and x with x + tau away from the kinks (or exactly 0 with `zeros`)."""
    layer = binary_layer(hyper)
    params = {k: v for k, v in random_params(layer, rng).items() if k != "bias"}
    tau = threshold(params, shape[1])                                             # [C]
    x = away(rng, shape, shift=per_channel(tau, len(shape)))                      # [N, C, ...]
    if zeros:
        x[:, ::3] = -per_channel(tau[::3], len(shape))                            # [N, C/3, ...] u = x + tau = 0 exactly
        params["weight"].reshape(-1)[::7] = 0.0                                   # [O*C*kh*kw / 7]
        params["weight"].reshape(-1)[3::14] = -0.0                                # [O*C*kh*kw / 14]
    kind = "conv" if "kernel_size" in hyper else "linear"
    description = (f"{hyper['method']} binary {kind} ({BinaryLayers(hyper['method']).method.description}), "
                   "binary mode, with its pseudo-gradients")
    if zeros:
        description += "; exact zeros in x + tau and W: sign(0) = +1"
    if hyper.get("downsample_pad") == "official":
        description += ("; official Downsample padding: x is zero-padded (0, 1, 0, 1) before the binarizer, so the "
                        "padded taps are sign(0 + tau) and ApproxSign'(tau) adds to d tau there; no /cache/acc")
    if hyper.get("fp_shortcut") is False:
        description += "; without the scaled FP shortcut (plain XNOR-Net): y = z * K"
    return Draw(params, {"x": x, "dout": upstream(rng, layer, x)}, hyper, description)


def layer_hyper(method: str, **shape: object) -> dict:
    """A layer case's hyperparameters; ReSTE's at half of training (o = 1 + 2 (1 - cos(pi / 4)))."""
    return dict(method=method, **shape) | (dict(progress=0.5) if method == "reste" else {})


for _variant, _method, _conv, _zeros, _layer_variant in [
    ("bidm_c70_o4_k3_s1_p1", "bidm", (70, 4, 3, 1, 1), False, {}),
    ("bidm_c70_o4_k3_s1_p1_sign0", "bidm", (70, 4, 3, 1, 1), True, {}),
    ("bidm_c6_o6_k3_s2_p0101", "bidm", (6, 6, 3, 2, (0, 1, 0, 1)), False, {}),
    ("bidm_c6_o6_k1_s1_p0", "bidm", (6, 6, 1, 1, 0), False, {}),
    *[(f"{m}_c10_o6_k3_s1_p1", m, (10, 6, 3, 1, 1), False, {}) for m in ("xnor", "xnor_k", "xnorpp", "dorefa",
                                                                          "reactnet", "reste")],
    ("bidm_c6_o6_k3_s2_p0101_official_pad", "bidm", (6, 6, 3, 2, (0, 1, 0, 1)), False, {"downsample_pad": "official"}),
    ("xnor_c10_o6_k3_s1_p1_no_shortcut", "xnor", (10, 6, 3, 1, 1), False, {"fp_shortcut": False}),
]:
    _cin, _cout, _k, _s, _p = _conv
    _hyper = layer_hyper(_method, in_channels=_cin, out_channels=_cout, kernel_size=_k, stride=_s,
                         padding=as_padding(_p), resolution=4) | _layer_variant
    case("binary", f"binary_conv2d__{_variant}")(partial(draw_binary_layer, hyper=_hyper, shape=(2, _cin, 4, 4),
                                                         zeros=_zeros))

for _method, _features in [("bidm", 70), ("xnor", 10), ("xnor_k", 10), ("xnorpp", 10), ("dorefa", 10), ("reste", 10)]:
    case("binary", f"binary_linear__{_method}_i{_features}_o6")(partial(
        draw_binary_layer, shape=(3, _features), hyper=layer_hyper(_method, in_features=_features, out_features=6)))
