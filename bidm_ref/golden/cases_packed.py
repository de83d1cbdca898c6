"""Golden cases of bit packing and the popcount accumulator (groups "bitpack", "popcount"), and the packed
kernels checked against them.

Dimensions: N batch, C channels (I features), O output channels, H, W input and Ho, Wo output spatial,
kh, kw kernel, Wd = ceil(C / 64) uint64 words.

The files are made by the NumPy float64 path only: words by `pack_signs` (NumPy), accumulators by the
float64 conv of the +-1 tensors sign(x + tau) and sign(W) with zero padding (integer sums, exact). The
kernels registered here (Numba `pack_activations`, `conv_acc`, `linear_acc` and their NumPy twins) are
then checked against the same files EXACTLY, on the stored words where they consume words.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..binary.bitpack import (
    PackedLinearWeight,
    num_words,
    pack_activations,
    pack_activations_ref,
    pack_conv_weight,
    pack_signs,
    transpose_conv_words,
)
from ..binary.kernels import conv_acc, conv_acc_ref, linear_acc, linear_acc_ref
from ..binary.quantizers import sign
from ..nn.conv import as_padding, conv2d
from .draws import away, binary_weights, normal
from .format import Arrays, Golden
from .registry import Draw, Result, case, exact, kernel, op


def signed_sum(acc: np.ndarray) -> np.ndarray:
    """A float64 sum of +-1 products as int32 (it is an integer; refuse anything else)."""
    rounded = np.rint(acc)                                                        # [...]
    if not np.array_equal(rounded, acc):
        raise ValueError("a +-1 accumulator is not an integer: the float path is broken")
    return rounded.astype(np.int32)


def activation_words(x: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """x [N, C, H, W], tau [C] -> words [N, H, W, Wd] of sign(x + tau), by the NumPy packer."""
    return pack_signs((x + tau[:, None, None]).transpose(0, 2, 3, 1))             # [N, H, W, Wd]


@op("pack_activations")
def run_pack_activations(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    return Result(outputs={"words": exact(activation_words(inputs["x"], inputs["tau"]))})


def draw_pack_activations(rng: np.random.Generator, channels: int, zeros: bool) -> Draw:
    """x, tau with x + tau away from 0, or (zeros) with exact +0.0 and -0.0 sums in some places."""
    tau = normal(rng, channels, 0.3)                                              # [C]
    x = away(rng, (2, channels, 3, 2), shift=tau[:, None, None], points=(0.0,))   # [N, C, H, W]
    if zeros:
        x[0, :, 0, 0] = -tau                                                      # [C] x + tau = +0.0
        tau[1] = -0.0
        x[1, 1, :, :] = -0.0                                                      # [H, W] -0.0 + -0.0 = -0.0
    return Draw({}, {"x": x, "tau": tau}, dict(channels=channels, words=num_words(channels)),
                f"pack sign(x + tau) of NCHW activations, C = {channels}, into NHWC words [N, H, W, Wd]: bit c % 64 "
                "of word c // 64 is 1 where x + tau < 0; pad bits 0" + ("; +0.0 and -0.0 give bit 0" if zeros else ""))


for _channels, _zeros in [(1, False), (64, False), (65, False), (130, True)]:
    case("bitpack", f"pack_activations__c{_channels}" + ("_sign0" if _zeros else ""))(
        partial(draw_pack_activations, channels=_channels, zeros=_zeros))


@kernel("pack_activations")
def numba_pack_activations(golden: Golden) -> dict[str, np.ndarray]:
    return {"outputs/words": pack_activations(golden.inputs["x"], golden.inputs["tau"])}


@kernel("pack_activations")
def numpy_twin_pack_activations(golden: Golden) -> dict[str, np.ndarray]:
    return {"outputs/words": pack_activations_ref(golden.inputs["x"], golden.inputs["tau"])}


@op("pack_conv_weight")
def run_pack_conv_weight(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    return Result(outputs={"words": exact(pack_signs(inputs["weight"].transpose(0, 2, 3, 1)))})


@case("bitpack", "pack_conv_weight__o5_c70_k3_sign0")
def pack_conv_weight_sign0(rng: np.random.Generator) -> Draw:
    weight = binary_weights(rng, (5, 70, 3, 3))                                   # [O, C, kh, kw]
    weight.reshape(-1)[::9] = 0.0                                                 # [M / 9]
    weight.reshape(-1)[4::18] = -0.0                                              # [M / 18]
    return Draw({}, {"weight": weight}, dict(channels=70, words=num_words(70)),
                "pack sign(W) of an OIHW conv weight into words [O, kh, kw, Wd] (channels along bits, LSB-first, "
                "bit 1 = -1, pad bits 0); exact zeros and -0.0 give bit 0")


@kernel("pack_conv_weight")
def packed_conv_weight_words(golden: Golden) -> dict[str, np.ndarray]:
    weight = golden.inputs["weight"]                                              # [O, C, kh, kw]
    return {"outputs/words": pack_conv_weight(weight, np.ones(weight.shape[0], dtype=np.float32)).words}


@op("conv_acc")
def run_conv_acc(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    x, tau, weight = inputs["x"], inputs["tau"], inputs["weight"]                 # [N, C, H, W], [C], [O, C, kh, kw]
    acc, _ = conv2d(sign(x + tau[:, None, None]), sign(weight), None, hyper["stride"], tuple(hyper["padding"]))
    return Result(outputs={
        "x_words": exact(activation_words(x, tau)),                               # [N, H, W, Wd]
        "w_words": exact(pack_signs(weight.transpose(0, 2, 3, 1))),               # [O, kh, kw, Wd]
        "acc": exact(signed_sum(acc)),                                            # [N, O, Ho, Wo]
    })


def draw_conv_acc(rng: np.random.Generator, cin: int, cout: int, kernel_size: int, stride: int,
                  padding: int | tuple) -> Draw:
    tau = normal(rng, cin, 0.3)                                                   # [C]
    x = away(rng, (2, cin, 6, 5), shift=tau[:, None, None], points=(0.0,))        # [N, C, H, W]
    weight = binary_weights(rng, (cout, cin, kernel_size, kernel_size))           # [O, C, kh, kw]
    return Draw({}, {"x": x, "tau": tau, "weight": weight},
                dict(channels=cin, stride=stride, padding=as_padding(padding)),
                f"binary accumulator, C = {cin}, {kernel_size}x{kernel_size}, stride {stride}, padding "
                f"{as_padding(padding)}: acc = sum over valid taps of C - 2 popcount(x_word xor w_word) = the +-1 "
                "conv of sign(x + tau) and sign(W) with zero padding")


for _cin, _cout, _k, _s, _p, _name in [
    (70, 8, 3, 1, 1, "c70_o8_k3_s1_p1"),
    (130, 4, 1, 1, 0, "c130_o4_k1_s1_p0"),
    (64, 6, 3, 2, (0, 1, 0, 1), "c64_o6_k3_s2_p0101"),
    (5, 3, 3, 2, 1, "c5_o3_k3_s2_p1"),
]:
    case("popcount", f"conv_acc__{_name}")(partial(draw_conv_acc, cin=_cin, cout=_cout, kernel_size=_k, stride=_s,
                                                   padding=_p))


@kernel("conv_acc")
def numba_conv_acc(golden: Golden) -> dict[str, np.ndarray]:
    out = golden.outputs
    words = out["w_words"].array                                                  # [O, kh, kw, Wd]
    return {"outputs/acc": conv_acc(out["x_words"].array, transpose_conv_words(words), words.shape[0],
                                    golden.hyper["channels"], golden.hyper["stride"], tuple(golden.hyper["padding"])),
            "outputs/x_words": pack_activations(golden.inputs["x"], golden.inputs["tau"])}


@kernel("conv_acc")
def numpy_twin_conv_acc(golden: Golden) -> dict[str, np.ndarray]:
    out = golden.outputs
    return {"outputs/acc": conv_acc_ref(out["x_words"].array, out["w_words"].array, golden.hyper["channels"],
                                        golden.hyper["stride"], tuple(golden.hyper["padding"]))}


@op("linear_acc")
def run_linear_acc(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    x, tau, weight = inputs["x"], inputs["tau"], inputs["weight"]                 # [N, I], [I], [O, I]
    return Result(outputs={
        "x_words": exact(pack_signs(x + tau)),                                    # [N, Wd]
        "w_words": exact(pack_signs(weight)),                                     # [O, Wd]
        "acc": exact(signed_sum(sign(x + tau) @ sign(weight).T)),                 # [N, O]
    })


@case("popcount", "linear_acc__i100_o6")
def linear_acc_i100_o6(rng: np.random.Generator) -> Draw:
    tau = normal(rng, 100, 0.3)                                                   # [I]
    x = away(rng, (3, 100), shift=tau, points=(0.0,))                             # [N, I]
    weight = binary_weights(rng, (6, 100))                                        # [O, I]
    return Draw({}, {"x": x, "tau": tau, "weight": weight}, dict(features=100),
                "binary linear accumulator, I = 100: acc = I - 2 popcount(x_words xor w_words) = sign(x + tau) "
                "sign(W)^T")


@kernel("linear_acc")
def numba_linear_acc(golden: Golden) -> dict[str, np.ndarray]:
    words = golden.outputs["w_words"].array                                       # [O, Wd]
    weight = PackedLinearWeight(words, golden.hyper["features"], np.ones(words.shape[0], dtype=np.float32))
    return {"outputs/acc": linear_acc(golden.outputs["x_words"].array, weight)}


@kernel("linear_acc")
def numpy_twin_linear_acc(golden: Golden) -> dict[str, np.ndarray]:
    out = golden.outputs
    return {"outputs/acc": linear_acc_ref(out["x_words"].array, out["w_words"].array, golden.hyper["features"])}
