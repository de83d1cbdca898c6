"""ddim's CIFAR-10 UNet (ermongroup/ddim `models/diffusion.py`), forward and hand-written backward.

Dimensions: N batch, C channels (varies per level), H, W spatial, E = 4*ch embedding size.

    temb = dense.1(SiLU(dense.0(timestep_embedding(t, ch))))                  # [N, E]
    hs   = [conv_in(x)]; each down level: units (ResnetBlock [+ AttnBlock]) then Downsample,
           every output pushed on hs
    mid  : block_1, attn_1, block_2
    up   : each level, num_res_blocks + 1 units on concat([h, hs.pop()]), then Upsample
    eps  = conv_out(SiLU(norm_out(h)))

Parameter names equal ddim's state_dict keys. Backward mirrors forward: skip connections
accumulate into a gradient per hs entry, and every use of temb adds into dtemb.
A "unit" (docs/METHOD.md §1: a timestep-embedded block) is a ResnetBlock with the AttnBlock that
follows it at the same index, if the level has attention. Units are numbered b = 0, 1, ... in
forward order (down, mid, up); every unit output is kept in the cache (`unit_features`) for
feature losses, and an optional `mixer` (BiDM's TBS, set by bidm/) may rewrite the output of a mixing
point p, a unit b or the upsample of decoder level L (`upsample_point(L)`):
mixer.forward(p, h, t) -> (h', cache), mixer.backward(p, dh', cache) -> dh.
Feature points a feature loss may read (`point_outputs`) and send a gradient to (backward's dfeatures):
units b, upsample_point(L) (after mixing), downsample_point(L) and conv2_point(b).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn.activation import SiLU
from ..nn.attention import AttnBlock
from ..nn.conv import Conv2d
from ..nn.embedding import timestep_embedding
from ..nn.factory import DENSE, LayerFactory
from ..nn.groupnorm import GroupNorm
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList
from ..nn.resample import Downsample, Upsample
from ..nn.resblock import ResnetBlock
from .config import UNetConfig


def upsample_point(level: int) -> str:
    """The point of decoder level `level`'s upsample output (ddim's name of the module)."""
    return f"up.{level}.upsample"


def downsample_point(level: int) -> str:
    """The point of encoder level `level`'s downsample output (ddim's name of the module)."""
    return f"down.{level}.downsample"


def conv2_point(b: int) -> str:
    """The point of unit b's ResnetBlock conv2 output, before its residual add."""
    return f"unit.{b}.conv2"


Features = dict[int | str, np.ndarray]  # feature point -> an array of its output's shape


def with_feature_grad(dh: np.ndarray, dfeatures: Features | None, point: int | str) -> np.ndarray:
    """dh plus the feature loss's gradient on `point`'s output, if it has one."""
    if dfeatures is None or point not in dfeatures:
        return dh
    return dh + dfeatures[point]                                                  # [N, C, H, W]


class Unit:
    """ResnetBlock followed by an optional AttnBlock: forward (x, temb) -> y; backward -> (dx, dtemb)."""

    def __init__(self, block: ResnetBlock, attn: AttnBlock | None) -> None:
        self.block = block
        self.attn = attn

    def forward(self, x: np.ndarray, temb: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, tuple]:
        h, c_block = self.block.forward(x, temb, rng)                             # [N, C, H, W]
        if self.attn is None:
            return h, (c_block, None)
        h, c_attn = self.attn.forward(h)                                          # [N, C, H, W]
        return h, (c_block, c_attn)

    def backward(self, dy: np.ndarray, cache: tuple, dconv2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        c_block, c_attn = cache
        if self.attn is not None:
            dy = self.attn.backward(dy, c_attn)                                   # [N, C, H, W]
        return self.block.backward(dy, c_block, dconv2)                           # [N, Ci, H, W], [N, E]


class UNetCache(NamedTuple):
    """What UNet.forward keeps for UNet.backward (c_*: the caches of the layers and units it names)."""

    dense0: tuple                      # temb.dense[0]
    act_emb: tuple                     # SiLU between the two dense layers
    dense1: tuple                      # temb.dense[1]
    conv_in: tuple
    down: list                         # units and downsamples in forward order
    mid: list                          # the two mid units
    up: list                           # units and upsamples in forward order
    skip_channels: list[int]           # channels of each skip concatenated in the decoder, in use order
    norm_out: tuple                    # SiLU(norm_out(h)), one fused layer
    conv_out: tuple
    temb_shape: tuple[int, int]        # [N, E]
    features: list[np.ndarray]         # unit outputs after TBS mixing, units() order (unit_features)
    points: dict[str, np.ndarray]      # the named feature points' outputs (point_outputs)


class UNet(Module):
    """The noise-prediction network eps_theta(x_t, t); `body` builds the binarizable layers."""

    def __init__(self, cfg: UNetConfig, *, rng: np.random.Generator, body: LayerFactory = DENSE) -> None:
        super().__init__()
        self.cfg = cfg
        ch, E, nlev = cfg.ch, 4 * cfg.ch, len(cfg.ch_mult)
        def kw(resolution: int, groups: bool = True) -> dict:
            """Constructor arguments of the blocks whose body layers see resolution x resolution inputs."""
            return dict(rng=rng, body=body.at(resolution), **({"groups": cfg.groups} if groups else {}))

        self.act = SiLU()

        temb = self.add_child("temb", Module())
        self.dense = temb.add_child("dense", ModuleList([Linear(ch, E, rng=rng), Linear(E, E, rng=rng)]))
        self.conv_in = self.add_child("conv_in", Conv2d(cfg.in_channels, ch, 3, 1, 1, rng=rng))

        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down_units: list[list[Unit]] = []
        self.downsamples: list[Downsample | None] = []
        down = self.add_child("down", ModuleList())
        block_in = ch
        for level in range(nlev):
            node = down.append(Module())
            blocks, attns = node.add_child("block", ModuleList()), node.add_child("attn", ModuleList())
            block_in, block_out = ch * in_mult[level], ch * cfg.ch_mult[level]
            units = []
            for _ in range(cfg.num_res_blocks):
                block = blocks.append(ResnetBlock(block_in, block_out, E, cfg.dropout, **kw(res)))
                block_in = block_out
                attn = attns.append(AttnBlock(block_in, **kw(res))) if res in cfg.attn_resolutions else None
                units.append(Unit(block, attn))
            self.down_units.append(units)
            sample = None
            if level != nlev - 1:
                sample = node.add_child("downsample", Downsample(block_in, cfg.resamp_with_conv, **kw(res, False)))
                res //= 2
            self.downsamples.append(sample)

        mid = self.add_child("mid", Module())
        self.mid_units = [
            Unit(mid.add_child("block_1", ResnetBlock(block_in, block_in, E, cfg.dropout, **kw(res))),
                 mid.add_child("attn_1", AttnBlock(block_in, **kw(res)))),
            Unit(mid.add_child("block_2", ResnetBlock(block_in, block_in, E, cfg.dropout, **kw(res))), None),
        ]

        up_nodes: dict[int, Module] = {}
        self.up_units: dict[int, list[Unit]] = {}
        self.upsamples: dict[int, Upsample | None] = {}
        for level in reversed(range(nlev)):
            node = up_nodes[level] = Module()
            blocks, attns = node.add_child("block", ModuleList()), node.add_child("attn", ModuleList())
            block_out = ch * cfg.ch_mult[level]
            units = []
            for i in range(cfg.num_res_blocks + 1):
                skip_in = ch * (in_mult[level] if i == cfg.num_res_blocks else cfg.ch_mult[level])
                block = blocks.append(ResnetBlock(block_in + skip_in, block_out, E, cfg.dropout, **kw(res)))
                block_in = block_out
                attn = attns.append(AttnBlock(block_in, **kw(res))) if res in cfg.attn_resolutions else None
                units.append(Unit(block, attn))
            self.up_units[level] = units
            sample = None
            if level != 0:
                sample = node.add_child("upsample", Upsample(block_in, cfg.resamp_with_conv, **kw(2 * res, False)))
                res *= 2
            self.upsamples[level] = sample
        up = self.add_child("up", ModuleList())
        for level in range(nlev):
            up.append(up_nodes[level])

        self.mixer: Module | None = None
        self.norm_out = self.add_child("norm_out", GroupNorm(cfg.groups, block_in))
        self.conv_out = self.add_child("conv_out", Conv2d(block_in, cfg.out_ch, 3, 1, 1, rng=rng))

    def unit_forward(
        self, unit: Unit, x: np.ndarray, temb: np.ndarray, t: np.ndarray, rng: np.random.Generator | None,
        features: list[np.ndarray], points: dict[str, np.ndarray],
    ) -> tuple[np.ndarray, tuple]:
        """Run unit number b = len(features), then the mixer (TBS) if any; append its output to features and
        its conv2 output to points."""
        b = len(features)
        h, c_unit = unit.forward(x, temb, rng)                                    # [N, C, H, W]
        points[conv2_point(b)] = ResnetBlock.conv2_output(c_unit[0])              # [N, C, H, W]
        c_mix = None
        if self.mixer is not None:
            h, c_mix = self.mixer.forward(b, h, t)                                # [N, C, H, W]
        features.append(h)
        return h, (c_unit, c_mix, b)

    def unit_backward(
        self, unit: Unit, dh: np.ndarray, cache: tuple, dfeatures: Features | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mirror of unit_forward: feature gradient, mixer backward, unit backward -> (dx, dtemb)."""
        c_unit, c_mix, b = cache
        dh = with_feature_grad(dh, dfeatures, b)                                  # [N, C, H, W]
        if self.mixer is not None:
            dh = self.mixer.backward(b, dh, c_mix)                                # [N, C, H, W]
        return unit.backward(dh, c_unit, None if dfeatures is None else dfeatures.get(conv2_point(b)))

    @staticmethod
    def unit_features(cache: UNetCache) -> list[np.ndarray]:
        """The unit outputs (after mixing) of a forward pass, in units() order."""
        return cache.features

    @staticmethod
    def point_outputs(cache: UNetCache) -> dict[int | str, np.ndarray]:
        """Every feature point's output of a forward pass (module docstring): unit b -> features[b], and the
        named points (upsample outputs after TBS mixing, downsample outputs, conv2 outputs)."""
        return dict(enumerate(cache.features)) | cache.points

    def units(self) -> list[Unit]:
        """All timestep units in forward order: down, mid, up (the order TBS counts blocks in)."""
        down = [u for units in self.down_units for u in units]
        up = [u for level in reversed(range(len(self.cfg.ch_mult))) for u in self.up_units[level]]
        return down + self.mid_units + up

    def forward(
        self, x: np.ndarray, t: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, UNetCache]:
        """x [N, Cin, H, W], t [N] integer timesteps -> eps prediction [N, out_ch, H, W]. rng: dropout (None = eval)."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            raise ValueError(
                f"UNet expects x of shape [N, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}], got {x.shape}"
            )
        if np.shape(t) != (x.shape[0],):
            raise ValueError(f"UNet expects one timestep per image: t shape {np.shape(t)} for batch {x.shape[0]}")
        nlev = len(cfg.ch_mult)
        e = timestep_embedding(t, cfg.ch, x.dtype)                                # [N, ch]
        e, c_d0 = self.dense[0].forward(e)                                        # [N, E]
        e, c_ae = self.act.forward(e)                                             # [N, E]
        temb, c_d1 = self.dense[1].forward(e)                                     # [N, E]

        h, c_in = self.conv_in.forward(x)                                         # [N, ch, H, W]
        hs = [h]
        features: list[np.ndarray] = []
        points: dict[str, np.ndarray] = {}
        c_down = []
        for level in range(nlev):
            for unit in self.down_units[level]:
                h, c = self.unit_forward(unit, hs[-1], temb, t, rng, features, points)  # [N, C, H, W]
                hs.append(h)
                c_down.append(c)
            if self.downsamples[level] is not None:
                h, c = self.downsamples[level].forward(hs[-1])                    # [N, C, H/2, W/2]
                points[downsample_point(level)] = h
                hs.append(h)
                c_down.append(c)

        c_mid = []
        for unit in self.mid_units:
            h, c = self.unit_forward(unit, h, temb, t, rng, features, points)     # [N, C, h, w]
            c_mid.append(c)

        c_up = []
        skip_channels = []
        for level in reversed(range(nlev)):
            for unit in self.up_units[level]:
                skip = hs.pop()                                                   # [N, Cs, H, W]
                skip_channels.append(skip.shape[1])
                h, c = self.unit_forward(unit, np.concatenate([h, skip], axis=1), temb, t, rng, features,
                                         points)                                  # [N, C, H, W]
                c_up.append(c)
            if self.upsamples[level] is not None:
                h, c = self.upsamples[level].forward(h)                           # [N, C, 2H, 2W]
                c_mix = None
                if self.mixer is not None:
                    h, c_mix = self.mixer.forward(upsample_point(level), h, t)    # [N, C, 2H, 2W]
                points[upsample_point(level)] = h
                c_up.append((c, c_mix))

        h, c_no = self.norm_out.forward(h, silu=True)                             # [N, ch, H, W] SiLU(norm_out(h))
        out, c_out = self.conv_out.forward(h)                                     # [N, out_ch, H, W]
        return out, UNetCache(c_d0, c_ae, c_d1, c_in, c_down, c_mid, c_up, skip_channels, c_no, c_out, temb.shape,
                              features, points)

    def backward(self, dout: np.ndarray, cache: UNetCache, dfeatures: Features | None = None) -> np.ndarray:
        """dout [N, out_ch, H, W] -> dx [N, in_channels, H, W]; parameter gradients accumulate.

        dfeatures[p]: an extra gradient on feature point p's output (a feature loss such as SPD), added where
        that output's gradient is complete.
        """
        c_d0, c_ae, c_d1, c_in, c_down, c_mid, c_up, skip_channels, c_no, c_out, temb_shape, _, _ = cache
        nlev = len(self.cfg.ch_mult)
        dtemb = np.zeros(temb_shape, dtype=dout.dtype)                            # [N, E]
        dh = self.conv_out.backward(dout, c_out)                                  # [N, ch, H, W]
        dh = self.norm_out.backward(dh, c_no)                                     # [N, ch, H, W]

        dskips = []
        c_up = list(c_up)
        skip_channels = list(skip_channels)
        for level in range(nlev):
            if self.upsamples[level] is not None:
                c, c_mix = c_up.pop()
                dh = with_feature_grad(dh, dfeatures, upsample_point(level))      # [N, C, H, W]
                if self.mixer is not None:
                    dh = self.mixer.backward(upsample_point(level), dh, c_mix)    # [N, C, H, W]
                dh = self.upsamples[level].backward(dh, c)                        # [N, C, H/2, W/2]
            for unit in reversed(self.up_units[level]):
                dcat, de = self.unit_backward(unit, dh, c_up.pop(), dfeatures)    # [N, C + Cs, H, W], [N, E]
                dtemb += de
                cs = skip_channels.pop()
                dh, dskip = dcat[:, :-cs], dcat[:, -cs:]                          # [N, C, H, W], [N, Cs, H, W]
                dskips.append(dskip)

        for unit, c in zip(reversed(self.mid_units), reversed(c_mid)):
            dh, de = self.unit_backward(unit, dh, c, dfeatures)                   # [N, C, h, w], [N, E]
            dtemb += de

        # dskips[k] is the gradient of hs[k] through its skip use (hs was popped from the end).
        c_down = list(c_down)
        for level in reversed(range(nlev)):
            if self.downsamples[level] is not None:
                dh = dh + dskips.pop()                                            # [N, C, H/2, W/2]
                dh = with_feature_grad(dh, dfeatures, downsample_point(level))    # [N, C, H/2, W/2]
                dh = self.downsamples[level].backward(dh, c_down.pop())           # [N, C, H, W]
            for unit in reversed(self.down_units[level]):
                dh = dh + dskips.pop()                                            # [N, C, H, W]
                dh, de = self.unit_backward(unit, dh, c_down.pop(), dfeatures)    # [N, Ci, H, W], [N, E]
                dtemb += de
        dh = dh + dskips.pop()                                                    # [N, ch, H, W]
        dx = self.conv_in.backward(dh, c_in)                                      # [N, Cin, H, W]

        de = self.dense[1].backward(dtemb, c_d1)                                  # [N, E]
        de = self.act.backward(de, c_ae)                                          # [N, E]
        self.dense[0].backward(de, c_d0)                                          # [N, ch]
        return dx

