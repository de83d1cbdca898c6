"""ddim's ResnetBlock with a timestep embedding.

Dimensions: N batch, Ci input channels, Co output channels, H, W spatial, E embedding size.

    h = conv1(SiLU(norm1(x)))  +  temb_proj(SiLU(temb))[:, :, None, None]   (no temb term when E = 0:
                                                                            the autoencoder's blocks, as LDM's;
                                                                            the sum is norm2's shift, not an array)
    h = conv2(Dropout(SiLU(norm2(h))))
    y = shortcut(x) + h        shortcut: identity if Ci == Co, else a 3x3 `conv_shortcut`
                               (conv_shortcut=True) or a 1x1 `nin_shortcut`, both full precision

conv1, conv2 and temb_proj are body layers (binarized in BiDM), built by a LayerFactory.
`conv2_output(cache)` is the block's h before the residual add (a feature position of the official
BiDM code's distillation); backward(dy, cache, dconv2) adds an extra gradient dconv2 there.
"""

from __future__ import annotations

import numpy as np

from .activation import SiLU
from .conv import Conv2d
from .dropout import Dropout
from .factory import DENSE, LayerFactory
from .groupnorm import GroupNorm
from .module import Module


class ResnetBlock(Module):
    """Children `norm1`, `conv1`, `temb_proj`, `norm2`, `dropout`, `conv2`, optional `conv_shortcut`/`nin_shortcut`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float,
        *,
        rng: np.random.Generator,
        conv_shortcut: bool = False,
        body: LayerFactory = DENSE,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.act = SiLU()
        self.norm1 = self.add_child("norm1", GroupNorm(groups, in_channels))
        self.conv1 = self.add_child("conv1", body.conv(in_channels, out_channels, 3, 1, 1, rng=rng))
        self.temb_proj = (self.add_child("temb_proj", body.linear(temb_channels, out_channels, rng=rng))
                          if temb_channels > 0 else None)
        self.norm2 = self.add_child("norm2", GroupNorm(groups, out_channels))
        self.dropout = self.add_child("dropout", Dropout(dropout))
        self.conv2 = self.add_child("conv2", body.conv(out_channels, out_channels, 3, 1, 1, rng=rng))
        self.shortcut = None
        if in_channels != out_channels:
            name, kernel = ("conv_shortcut", 3) if conv_shortcut else ("nin_shortcut", 1)
            self.shortcut = self.add_child(name, Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, rng=rng))

    def forward(
        self, x: np.ndarray, temb: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple]:
        """temb [N, E] is required iff the block has a temb_proj (E > 0)."""
        h, c_n1 = self.norm1.forward(x, silu=True)                                # [N, Ci, H, W] SiLU(norm1(x))
        h, c_c1 = self.conv1.forward(h)                                           # [N, Co, H, W]
        c_ae = c_te = e = None
        if self.temb_proj is not None:
            e, c_ae = self.act.forward(temb)                                      # [N, E]
            e, c_te = self.temb_proj.forward(e)                                   # [N, Co]
        h, c_n2 = self.norm2.forward(h, silu=True, shift=e)                       # [N, Co, H, W] SiLU(norm2(h + e))
        h, c_do = self.dropout.forward(h, rng)                                    # [N, Co, H, W]
        h, c_c2 = self.conv2.forward(h)                                           # [N, Co, H, W]
        s, c_sc = (x, None) if self.shortcut is None else self.shortcut.forward(x)  # [N, Co, H, W]
        return s + h, (c_n1, c_c1, c_ae, c_te, c_n2, c_do, c_c2, c_sc, h)

    @staticmethod
    def conv2_output(cache: tuple) -> np.ndarray:
        """h = conv2(...) of a forward pass [N, Co, H, W], before the residual add."""
        return cache[-1]

    def backward(
        self, dy: np.ndarray, cache: tuple, dconv2: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns (dx [N, Ci, H, W], dtemb [N, E]); dtemb is None for a block without temb. dconv2: an extra
        gradient on conv2's output (a feature loss), which the shortcut does not see."""
        c_n1, c_c1, c_ae, c_te, c_n2, c_do, c_c2, c_sc, _ = cache
        dx = dy if self.shortcut is None else self.shortcut.backward(dy, c_sc)    # [N, Ci, H, W]
        dh = self.conv2.backward(dy if dconv2 is None else dy + dconv2, c_c2)     # [N, Co, H, W]
        dh = self.dropout.backward(dh, c_do)                                      # [N, Co, H, W]
        dh = self.norm2.backward(dh, c_n2)                                        # [N, Co, H, W]
        dtemb = None
        if self.temb_proj is not None:
            de = self.temb_proj.backward(dh.sum(axis=(2, 3)), c_te)               # [N, E]
            dtemb = self.act.backward(de, c_ae)                                   # [N, E]
        dh = self.conv1.backward(dh, c_c1)                                        # [N, Ci, H, W]
        return dx + self.norm1.backward(dh, c_n1), dtemb                          # [N, Ci, H, W], [N, E]
