"""Direct float64 definitions used as independent twins in tests (loops, no im2col)."""

from __future__ import annotations

import numpy as np


def conv_nested_loops(x, weight, bias, stride, pad):
    """Cross-correlation with zero padding pad = (top, bottom, left, right), by definition."""
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else pad
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho = (H + top + bottom - kh) // stride + 1
    Wo = (W + left + right - kw) // stride + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0 if bias is None else float(bias[o])
                    for c in range(C):
                        for a in range(kh):
                            for b in range(kw):
                                r, s = i * stride + a - top, j * stride + b - left
                                if 0 <= r < H and 0 <= s < W:
                                    acc += x[n, c, r, s] * weight[o, c, a, b]
                    y[n, o, i, j] = acc
    return y


def pm1(a):
    """sign with sign(0) = +1, as float64."""
    return np.where(np.asarray(a) >= 0, 1.0, -1.0)


def shortcut_reference(x, stride, conv=None):
    """The FP shortcut of the binary convs by definition: 1x1 conv (conv = (weight, bias)) with the layer's
    stride, else the 2x2 block mean for stride 2, else x."""
    if conv is not None:
        return conv_nested_loops(x, conv[0], conv[1], stride, 0)
    if stride == 2:
        N, C, H, W = x.shape
        return x.reshape(N, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
    return x
