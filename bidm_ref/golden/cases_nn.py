"""Golden cases of the float layers (group "nn"): forward and backward of every nn/ layer.

Dimensions: N batch, C input channels, O output channels, H, W spatial, I, O features, D embedding size.
Odd, non-square spatial sizes on purpose (H != W catches swapped axes). Each case feeds a random
upstream gradient `dout` and stores dL/d(inputs) and dL/d(params) of L = sum(dout * y). The one-input
layers share one op runner (LAYERS: op name -> the layer built from the case's hyperparameters).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ..nn.activation import SiLU
from ..nn.attention import AttnBlock
from ..nn.conv import Conv2d, as_padding
from ..nn.embedding import timestep_embedding
from ..nn.groupnorm import GroupNorm
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.resample import Downsample, Upsample
from .draws import normal, random_params
from .format import Arrays
from .harness import forward_backward, init_rng, upstream
from .registry import Draw, Result, case, close, op


def layer_draw(rng: np.random.Generator, layer: Module, x: np.ndarray, hyper: dict, description: str) -> Draw:
    """Params of `layer`, input x and a dout of its output shape."""
    params = random_params(layer, rng)
    return Draw(params, {"x": x, "dout": upstream(rng, layer, x)}, hyper, description)


def conv_layer(hyper: dict) -> Conv2d:
    return Conv2d(hyper["in_channels"], hyper["out_channels"], hyper["kernel_size"], hyper["stride"],
                  tuple(hyper["padding"]), rng=init_rng())


def draw_conv(rng: np.random.Generator, kernel_size: int, stride: int, padding: int | tuple) -> Draw:
    hyper = dict(in_channels=5, out_channels=4, kernel_size=kernel_size, stride=stride, padding=as_padding(padding))
    x = normal(rng, (2, 5, 7, 6))                                                 # [N, C, H, W]
    return layer_draw(rng, conv_layer(hyper), x, hyper,
                      f"Conv2d 5->4, {kernel_size}x{kernel_size}, stride {stride}, zero padding (top, bottom, left, "
                      f"right) {as_padding(padding)}: y = conv(x, weight) + bias (cross-correlation)")


for _k, _s, _p, _name in [(1, 1, 0, "k1_s1_p0"), (1, 2, 0, "k1_s2_p0"), (3, 1, 0, "k3_s1_p0"), (3, 1, 1, "k3_s1_p1"),
                          (3, 2, 0, "k3_s2_p0"), (3, 2, 1, "k3_s2_p1"), (3, 2, (0, 1, 0, 1), "k3_s2_p0101")]:
    case("nn", f"conv2d__{_name}")(partial(draw_conv, kernel_size=_k, stride=_s, padding=_p))


def linear_layer(hyper: dict) -> Linear:
    return Linear(hyper["in_features"], hyper["out_features"], rng=init_rng())


@case("nn", "linear__i20_o12")
def linear_i20_o12(rng: np.random.Generator) -> Draw:
    hyper = dict(in_features=20, out_features=12)
    return layer_draw(rng, linear_layer(hyper), normal(rng, (3, 20)), hyper, "Linear 20->12: y = x weight^T + bias")


def groupnorm_layer(hyper: dict) -> GroupNorm:
    return GroupNorm(hyper["num_groups"], hyper["num_channels"], hyper["eps"])


@case("nn", "groupnorm__g4_c8")
def groupnorm_g4_c8(rng: np.random.Generator) -> Draw:
    hyper = dict(num_groups=4, num_channels=8, eps=1e-6)
    x = normal(rng, (2, 8, 5, 3), scale=2.0, mean=0.5)                            # [N, C, H, W]
    return layer_draw(rng, groupnorm_layer(hyper), x, hyper,
                      "GroupNorm, 4 groups of 2 channels, biased variance, eps 1e-6, affine weight/bias per channel")


def silu_layer(hyper: dict) -> SiLU:
    return SiLU()


@case("nn", "silu__wide_range")
def silu_wide_range(rng: np.random.Generator) -> Draw:
    x = normal(rng, (2, 3, 4, 5), scale=4.0)                                      # [N, C, H, W]
    x[0, 0, 0, :] = [-40.0, -20.0, 0.0, 20.0, 40.0]                               # saturated tails and 0
    return layer_draw(rng, silu_layer({}), x, {}, "SiLU y = x sigmoid(x), including |x| = 40 (no overflow)")


def attention_block(hyper: dict) -> AttnBlock:
    return AttnBlock(hyper["channels"], rng=init_rng(), groups=hyper["groups"])


@case("nn", "attention__c8_g4")
def attention_c8_g4(rng: np.random.Generator) -> Draw:
    hyper = dict(channels=8, groups=4)
    return layer_draw(rng, attention_block(hyper), normal(rng, (2, 8, 4, 3)), hyper,
                      "ddim AttnBlock: y = x + proj_out(attention(q, k, v of GroupNorm(x))), softmax over the "
                      "H*W key positions, logits scaled by C^-1/2")


def upsample_layer(hyper: dict) -> Upsample:
    return Upsample(hyper["channels"], bool(hyper["with_conv"]), rng=init_rng())


def downsample_layer(hyper: dict) -> Downsample:
    return Downsample(hyper["channels"], bool(hyper["with_conv"]), rng=init_rng())


def run_layer(params: Arrays, inputs: Arrays, hyper: dict, build: Callable[[dict], Module]) -> Result:
    """Forward and backward of a one-input layer built from the case's hyperparameters."""
    return forward_backward(build(hyper), params, inputs, ("x",), ("x",))


LAYERS = {"conv2d": conv_layer, "linear": linear_layer, "groupnorm": groupnorm_layer, "silu": silu_layer,
          "attention": attention_block, "upsample": upsample_layer, "downsample": downsample_layer}
for _op, _build in LAYERS.items():
    op(_op)(partial(run_layer, build=_build))


def draw_resample(rng: np.random.Generator, build: Callable[[dict], Module], with_conv: int, shape: tuple[int, ...],
                  description: str) -> Draw:
    hyper = dict(channels=shape[1], with_conv=with_conv)
    return layer_draw(rng, build(hyper), normal(rng, shape), hyper, description)


for _name, _build, _with_conv, _shape, _what in [
    ("upsample__conv", upsample_layer, 1, (2, 4, 3, 4), "ddim Upsample: nearest x2, then a 3x3 conv with padding 1"),
    ("upsample__noconv", upsample_layer, 0, (2, 4, 3, 4), "ddim Upsample without conv: nearest x2"),
    ("downsample__conv", downsample_layer, 1, (2, 4, 6, 5),
     "ddim Downsample: zero pad (top 0, bottom 1, left 0, right 1), then a 3x3 stride-2 conv"),
    ("downsample__avgpool", downsample_layer, 0, (2, 4, 5, 7),
     "ddim Downsample without conv: 2x2 average pool, stride 2, floor for odd sizes (the dropped last row/column "
     "gets gradient 0)"),
]:
    case("nn", _name)(partial(draw_resample, build=_build, with_conv=_with_conv, shape=_shape, description=_what))


@op("timestep_embedding")
def run_timestep_embedding(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    return Result(outputs={"emb": close(timestep_embedding(inputs["t"], hyper["dim"], np.float64))})


def draw_embedding(rng: np.random.Generator, dim: int) -> Draw:
    t = np.array([0, 1, 17, 250, 500, 999], dtype=np.int64)                       # [N]
    return Draw({}, {"t": t}, dict(dim=dim),
                f"ddim timestep embedding, dim {dim}: [sin(t f), cos(t f)], f_i = exp(-log(10000) i / (half - 1))"
                + ("; odd dim: a zero last column" if dim % 2 else ""))


for _dim in (16, 33):
    case("nn", f"timestep_embedding__d{_dim}")(partial(draw_embedding, dim=_dim))
