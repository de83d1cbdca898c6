"""The scaled full-precision shortcut of the BiDM and ReActNet binary convs: s * shortcut(x).

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial.

    shortcut(x) = x                       C == O, stride 1
                = avg_pool2x(x)           C == O, stride 2 (2x2 mean, ReActNet's downsampling shortcut)
                = conv1x1(x) + b          C != O: the FP 1x1 conv child `shortcut`, stride as the layer
    out         = s * shortcut(x)         s = `shortcut_scale` [1], starts at 0 (BiDM's CIFAR code)

Backward: ds = sum(dy * shortcut(x));  dx = shortcut'^T (s * dy).
The path stays full precision in the methods that have it (BiDM, XNOR (Vanilla) and Vanilla + learnable k,
ReActNet; DoReFa, XNOR++ and ReSTE layers have none): docs/METHOD.md §2, §4.
"""

from __future__ import annotations

import numpy as np

from ..nn.conv import Conv2d
from ..nn.resample import avg_pool2x, avg_pool2x_backward


class ScaledShortcut:
    """Mixin for a binary conv Module with `stride`: registers `shortcut_scale` and the child `shortcut`."""

    def init_shortcut(self, in_channels: int, out_channels: int, stride: int, rng: np.random.Generator) -> None:
        """Add `shortcut_scale` (0) and, when in_channels != out_channels, the FP 1x1 conv `shortcut`."""
        if stride not in (1, 2):
            raise ValueError(f"{type(self).__name__} supports stride 1 or 2 (its shortcut), got {stride}")
        self.add_param("shortcut_scale", np.zeros(1, dtype=np.float32))
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = self.add_child("shortcut", Conv2d(in_channels, out_channels, 1, stride, 0, rng=rng))

    def parameter_free_shortcut(self, x: np.ndarray) -> np.ndarray:
        """shortcut(x) when C == O: the 2x2 average pool for stride 2 [N, C, H/2, W/2], else x itself."""
        return avg_pool2x(x) if self.stride == 2 else x

    def shortcut_forward(self, x: np.ndarray, out_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
        """s * shortcut(x) [N, O, Ho, Wo]; `out_shape` is the binary conv's output shape it is added to."""
        c_conv = None
        if self.shortcut is not None:
            sc, c_conv = self.shortcut.forward(x)                                 # [N, O, Ho, Wo]
        else:
            sc = self.parameter_free_shortcut(x)                                  # [N, C, Ho, Wo]
        if sc.shape != tuple(out_shape):
            raise ValueError(
                f"{type(self).__name__}: shortcut gives {sc.shape} but the conv gives {tuple(out_shape)}; the FP "
                "shortcut needs even H, W with stride 2 and an output as large as the input with stride 1 (as in the UNet)"
            )
        return self.params["shortcut_scale"] * sc, (sc, c_conv, x.shape)          # [N, O, Ho, Wo]

    def shortcut_backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        """Accumulates d shortcut_scale (and the 1x1 conv's grads); returns dx [N, C, H, W]."""
        sc, c_conv, x_shape = cache
        self.grads["shortcut_scale"] += np.sum(dy * sc)                           # [1]
        dsc = self.params["shortcut_scale"] * dy                                  # [N, O, Ho, Wo]
        if self.shortcut is not None:
            return self.shortcut.backward(dsc, c_conv)                            # [N, C, H, W]
        if self.stride == 2:
            return avg_pool2x_backward(dsc, x_shape)                              # [N, C, H, W]
        return dsc                                                                # [N, C, H, W]
