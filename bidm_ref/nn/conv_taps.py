"""The taps layout of a grid conv: multiply first, shift after, for convs with fewer outputs than inputs.

Dimensions: C input channels, O output channels, kh, kw kernel, T = kh*kw taps, L = N*Hp*Wp the padded
input's grid cells and Q the output cells of im2col.py's grid layout (whose xp [C, L], tap offsets and
from_columns / to_columns this layout shares), n the cells of one chunk.

The grid layout copies each tap's shifted slice of xp into columns [C*T, Q] and multiplies W [O, C*T] by
them. When O is much smaller than C, most of that copying is wasted: the taps layout multiplies the input
once by every tap's weights and shifts the much smaller products instead,

    Ws[(t, o), c] = W[o, c, i, j]                 t = i*kw + j              [T*O, C]
    Z             = Ws @ xp                       Z[(t, o), p]              [T*O, L]
    y[o, q]       = sum_t Z[(t, o), q + off_t]    off_t = i*Wp + j          [O, Q]

and its backward, with dZ[(t, o), p] = dy[o, p - off_t] (0 where p - off_t is not an output cell):

    dWs = dZ @ xp^T  [T*O, C]        dxp = Ws^T @ dZ  [C, L]   (written whole: no fold of shifted columns)

Both run chunk by chunk over the cells (about CHUNK_BYTES of Z per chunk). conv.py takes this layout for a grid
conv with 2*O <= C (`use_taps`): on the Intel Xeon, two threads, ms, grid / taps forward: tiny's N64 C48 -> 16
at 32x32 22.0 / 11.2, N64 C32 -> 16 15.0 / 9.0, conv_out N64 C16 -> 1 5.5 / 1.3, cifar10's conv_out N8 C128 -> 3
6.4 / 1.3, N8 C384 -> 128 47 / 37; at O = C (N64 C16 -> 16) both 7.2 (docs/ENGINE.md, "Convolution"). The taps
are summed in t order in float32, so results agree with the grid layout's to float rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np

from .im2col import ConvGeometry, column_chunks, tap_offsets


def use_taps(geo: ConvGeometry, out_channels: int) -> bool:
    """Whether a conv of this geometry with `out_channels` outputs runs in the taps layout (grid convs, 2*O <= C)."""
    return geo.grid and 2 * out_channels <= geo.x_shape[1]


def stacked_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW weight [O, C, kh, kw] -> Ws [kh*kw*O, C], rows in (tap, output) order."""
    O, C, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1).reshape(kh * kw * O, C))


def taps_forward(xp: np.ndarray, weight: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """xp [C, L] (im2col.grid_source) -> y [O, Q] on the grid (im2col.from_columns makes it NCHW)."""
    O = weight.shape[0]
    ws = stacked_weight(weight)                                                   # [T*O, C]
    offsets = tap_offsets(geo)                                                    # [T]
    reach = offsets[-1]                                                           # Q + reach = L
    y = np.empty((O, geo.columns), dtype=np.result_type(xp, weight))              # [O, Q]
    for start, stop in column_chunks(geo.columns, ws.shape[0], y.itemsize):
        n = stop - start
        z = (ws @ xp[:, start : stop + reach]).reshape(len(offsets), O, -1)       # [T, O, n + reach]
        out = y[:, start:stop]                                                    # [O, n] view
        np.copyto(out, z[0, :, offsets[0] : offsets[0] + n])
        for t in range(1, len(offsets)):
            out += z[t, :, offsets[t] : offsets[t] + n]                           # [O, n]
    return y


def taps_backward(dy_cols: np.ndarray, xp: np.ndarray, weight: np.ndarray, geo: ConvGeometry,
                  input_gradient: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """dy_cols [O, Q] (im2col.to_columns: zeros in the garbage cells), xp [C, L] -> (dxp [C, L], dweight [O, C, kh,
    kw]); dxp None without input_gradient (the caller computes dx otherwise)."""
    O, C, kh, kw = weight.shape
    ws = stacked_weight(weight)                                                   # [T*O, C]
    offsets = tap_offsets(geo)                                                    # [T]
    Q, L = geo.columns, xp.shape[1]
    dws = np.zeros(ws.shape, dtype=dy_cols.dtype)                                 # [T*O, C]
    dxp = np.empty(xp.shape, dtype=dy_cols.dtype) if input_gradient else None     # [C, L]
    for start, stop in column_chunks(L, ws.shape[0], dy_cols.itemsize):
        dz = np.zeros((len(offsets), O, stop - start), dtype=dy_cols.dtype)       # [T, O, n]
        for t, offset in enumerate(offsets):
            lo, hi = max(start, offset), min(stop, Q + offset)                    # cells p with p - offset in [0, Q)
            if lo < hi:
                dz[t, :, lo - start : hi - start] = dy_cols[:, lo - offset : hi - offset]
        dz = dz.reshape(-1, stop - start)                                         # [T*O, n]
        dws += dz @ xp[:, start:stop].T                                           # [T*O, C]
        if input_gradient:
            np.matmul(ws.T, dz, out=dxp[:, start:stop])                           # [C, n]
    return dxp, dws.reshape(kh, kw, O, C).transpose(2, 3, 0, 1)                   # [C, L], [O, C, kh, kw]
