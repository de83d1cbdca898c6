"""ermongroup/ddim's UNet (`models/diffusion.py`) in PyTorch, for the speed comparison of bench_train only.

Optional: needs torch (`pip install torch==2.13.0`, see README "Speed"); nothing in bidm_ref or tests imports it.
Dimensions: N batch, C channels, H, W spatial, E = 4*ch embedding size, P = H*W positions.
The module tree and parameter names are ddim's, built from a bidm_ref UNetConfig (GroupNorm groups
taken from the config, as the project's presets), so `load_state_dict` takes the project's UNet
weights one-to-one and the bench can check both compute the same eps before timing them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bidm_ref.models.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin | cos] of t * exp(-log(10000) i / (half - 1)): [N] -> [N, dim] (dim even)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))  # [half]
    arg = t.float()[:, None] * freq[None, :]                                      # [N, half]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)                     # [N, dim]


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                                     # [N, Co, H, W]
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]                    # [N, Co, H, W]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))                       # [N, Co, H, W]
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h     # [N, Co, H, W]


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        h = self.norm(x)                                                          # [N, C, H, W]
        q = self.q(h).reshape(N, C, H * W).permute(0, 2, 1)                       # [N, P, C]
        k = self.k(h).reshape(N, C, H * W)                                        # [N, C, P]
        v = self.v(h).reshape(N, C, H * W)                                        # [N, C, P]
        attn = torch.softmax(torch.bmm(q, k) * C ** (-0.5), dim=2)               # [N, P(i), P(j)]
        o = torch.bmm(v, attn.permute(0, 2, 1)).reshape(N, C, H, W)               # [N, C, H, W]
        return x + self.proj_out(o)                                               # [N, C, H, W]


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))                                  # [N, C, H/2, W/2]


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))      # [N, C, 2H, 2W]


class TorchUNet(nn.Module):
    """ddim's `Model` for a UNetConfig with resamp_with_conv (every preset of the project)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if not cfg.resamp_with_conv:
            raise ValueError("TorchUNet mirrors the presets, which resample with convs")
        self.cfg = cfg
        ch, E, G, nlev = cfg.ch, 4 * cfg.ch, cfg.groups, len(cfg.ch_mult)
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, E), nn.Linear(E, E)])
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        in_mult = (1, *cfg.ch_mult)
        res, block_in = cfg.resolution, ch
        self.down = nn.ModuleList()
        for level in range(nlev):
            node = nn.Module()
            node.block, node.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks):
                node.block.append(ResnetBlock(block_in, block_out, E, cfg.dropout, G))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    node.attn.append(AttnBlock(block_in, G))
            if level != nlev - 1:
                node.downsample = Downsample(block_in)
                res //= 2
            self.down.append(node)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, E, cfg.dropout, G)
        self.mid.attn_1 = AttnBlock(block_in, G)
        self.mid.block_2 = ResnetBlock(block_in, block_in, E, cfg.dropout, G)
        up_nodes = []
        for level in reversed(range(nlev)):
            node = nn.Module()
            node.block, node.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * cfg.ch_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                skip_in = ch * (in_mult[level] if i == cfg.num_res_blocks else cfg.ch_mult[level])
                node.block.append(ResnetBlock(block_in + skip_in, block_out, E, cfg.dropout, G))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    node.attn.append(AttnBlock(block_in, G))
            if level != 0:
                node.upsample = Upsample(block_in)
                res *= 2
            up_nodes.insert(0, node)
        self.up = nn.ModuleList(up_nodes)
        self.norm_out = nn.GroupNorm(G, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nlev = len(self.cfg.ch_mult)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](timestep_embedding(t, self.cfg.ch))))  # [N, E]
        hs = [self.conv_in(x)]
        for level in range(nlev):
            node = self.down[level]
            for i, block in enumerate(node.block):
                h = block(hs[-1], temb)
                hs.append(node.attn[i](h) if len(node.attn) else h)
            if level != nlev - 1:
                hs.append(node.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for level in reversed(range(nlev)):
            node = self.up[level]
            for i, block in enumerate(node.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(node.attn):
                    h = node.attn[i](h)
            if level != 0:
                h = node.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))                           # [N, out_ch, H, W]


def torch_twin(cfg: UNetConfig, state: dict[str, np.ndarray]) -> TorchUNet:
    """A TorchUNet holding the project UNet's weights (`state`: its state_dict, ddim's names)."""
    model = TorchUNet(cfg)
    model.load_state_dict({name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in state.items()})
    return model
