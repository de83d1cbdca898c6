"""im2col / col2im of the float convolution, in plain NumPy: every copy moves long contiguous runs.

Dimensions: N batch, C channels, H, W input, Ho, Wo output spatial, kh, kw kernel, K = C*kh*kw,
Hp = H + top + bottom, Wp = W + left + right (the zero-padded input), Q columns (see below).

The columns matrix is "channels first": rows (c, i, j) in the order of an OIHW weight reshaped to
[O, K], so the conv is one matmul W[O, K] @ cols[K, Q] over the whole batch. Two layouts of its Q
columns (docs/ENGINE.md, "Convolution"):

- grid (stride 1): the padded input is stored as xp[C, N*Hp*Wp] (one flat row per channel). Output
  position (n, ho, wo) is column q = (n*Hp + ho)*Wp + wo of a grid with Hp x Wp cells per image, and
  tap (i, j) reads xp[:, q + i*Wp + j]. So each tap's rows of cols are ONE shifted slice of xp: 9
  long copies for a 3x3 conv, no per-pixel work. Cells with ho >= Ho or wo >= Wo are wrapped-around
  garbage: the forward never reads them (`from_columns`) and the backward feeds them zero gradient
  (`to_columns`), so they contribute nothing. Q = N*Hp*Wp - (kh-1)*Wp - (kw-1) (the last valid cell + 1).
- dense (any stride): Q = N*Ho*Wo, one strided copy per tap of xp[C, N, Hp, Wp] (Downsample's stride 2).

    unfold:  cols[(c, i, j), q] = x[n, c, ho*stride + i - top, wo*stride + j - left]   (0 in the padding)
    fold:    its adjoint, dx[n, c, h, w] = sum over the taps that read x[n, c, h, w], taps in (i, j) order
Both layouts sum the taps of fold in the same order, so they agree exactly; `unfold_dense` is the
definition the grid layout is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .padding import Padding, as_padding, conv_output_size


@dataclass(frozen=True)
class ConvGeometry:
    """Where a conv's columns live: input shape, kernel, stride, padding, output and padded sizes."""

    x_shape: tuple[int, int, int, int]
    kh: int
    kw: int
    stride: int
    padding: tuple[int, int, int, int]
    Ho: int
    Wo: int
    grid: bool  # the grid layout (stride 1 only); else the dense one

    @property
    def padded(self) -> tuple[int, int]:
        """(Hp, Wp)."""
        top, bottom, left, right = self.padding
        return self.x_shape[2] + top + bottom, self.x_shape[3] + left + right

    @property
    def columns(self) -> int:
        """Q, the number of columns of cols."""
        N = self.x_shape[0]
        Hp, Wp = self.padded
        if self.grid:
            return N * Hp * Wp - (self.kh - 1) * Wp - (self.kw - 1)
        return N * self.Ho * self.Wo


def conv_geometry(x_shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: Padding) -> ConvGeometry:
    """The geometry of a conv over an NCHW `x_shape`; raises if the padded input is smaller than the kernel."""
    pad = as_padding(padding)
    top, bottom, left, right = pad
    H, W = x_shape[2], x_shape[3]
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input {H}x{W} with padding {padding} is smaller than the kernel {kh}x{kw}")
    return ConvGeometry(tuple(x_shape), kh, kw, stride, pad, Ho, Wo, grid=stride == 1)


def padded_channels_first(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x [N, C, H, W] -> zero-padded xp [C, N, Hp, Wp] (one copy)."""
    N, C, H, W = x.shape
    top, _, left, _ = geo.padding
    xp = np.zeros((C, N, *geo.padded), dtype=x.dtype)                             # [C, N, Hp, Wp]
    xp[:, :, top : top + H, left : left + W] = x.transpose(1, 0, 2, 3)            # [C, N, H, W]
    return xp


def tap_offsets(geo: ConvGeometry) -> list[tuple[int, int, int]]:
    """(i, j, flat offset i*Wp + j of tap (i, j) in the grid layout), taps in (i, j) order."""
    Wp = geo.padded[1]
    return [(i, j, i * Wp + j) for i in range(geo.kh) for j in range(geo.kw)]


def dense_tap(geo: ConvGeometry, i: int, j: int) -> tuple[slice, ...]:
    """The slice of xp [C, N, Hp, Wp] that tap (i, j) reads for every output position: [C, N, Ho, Wo]."""
    s = geo.stride
    return np.s_[:, :, i : i + s * geo.Ho : s, j : j + s * geo.Wo : s]


def unfold_dense(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The dense layout (any stride): x [N, C, H, W] -> cols [C*kh*kw, N*Ho*Wo]."""
    N, C = x.shape[:2]
    xp = padded_channels_first(x, geo)                                            # [C, N, Hp, Wp]
    cols = np.empty((C, geo.kh, geo.kw, N, geo.Ho, geo.Wo), dtype=x.dtype)        # [C, kh, kw, N, Ho, Wo]
    for i, j, _ in tap_offsets(geo):
        cols[:, i, j] = xp[dense_tap(geo, i, j)]                                  # [C, N, Ho, Wo]
    return cols.reshape(C * geo.kh * geo.kw, -1)                                  # [K, N*Ho*Wo]


def unfold_grid(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The grid layout (stride 1): x [N, C, H, W] -> cols [C*kh*kw, Q], one shifted slice per tap."""
    C = x.shape[1]
    Q = geo.columns
    xp = padded_channels_first(x, geo).reshape(C, -1)                             # [C, N*Hp*Wp]
    if geo.kh * geo.kw == 1:
        return xp                                                                 # [K = C, Q = N*Hp*Wp]
    cols = np.empty((C, geo.kh * geo.kw, Q), dtype=x.dtype)                       # [C, kh*kw, Q]
    for t, (_, _, offset) in enumerate(tap_offsets(geo)):
        cols[:, t] = xp[:, offset : offset + Q]                                   # [C, Q]
    return cols.reshape(C * geo.kh * geo.kw, Q)                                   # [K, Q]


def unfold(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x [N, C, H, W] -> cols [K, Q] in the layout of `geo` (grid for stride 1, else dense)."""
    return unfold_grid(x, geo) if geo.grid else unfold_dense(x, geo)


def fold(dcols: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of `unfold`: dcols [K, Q] -> dx [N, C, H, W] (taps summed in (i, j) order)."""
    N, C, H, W = geo.x_shape
    top, _, left, _ = geo.padding
    if geo.grid and geo.kh * geo.kw == 1:
        dxp = dcols.reshape(C, N, *geo.padded)                                    # [C, N, Hp, Wp]
    else:
        dxp = np.zeros((C, N, *geo.padded), dtype=dcols.dtype)                    # [C, N, Hp, Wp]
    if geo.grid and geo.kh * geo.kw > 1:
        flat = dxp.reshape(C, -1)                                                 # [C, N*Hp*Wp]
        d3 = dcols.reshape(C, geo.kh * geo.kw, -1)                                # [C, kh*kw, Q]
        for t, (_, _, offset) in enumerate(tap_offsets(geo)):
            flat[:, offset : offset + d3.shape[2]] += d3[:, t]                    # [C, Q]
    elif not geo.grid:
        d6 = dcols.reshape(C, geo.kh, geo.kw, N, geo.Ho, geo.Wo)                  # [C, kh, kw, N, Ho, Wo]
        for i, j, _ in tap_offsets(geo):
            dxp[dense_tap(geo, i, j)] += d6[:, i, j]                              # [C, N, Ho, Wo]
    return np.ascontiguousarray(dxp[:, :, top : top + H, left : left + W].transpose(1, 0, 2, 3))  # [N, C, H, W]


def from_columns(y: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """A conv's output in column layout, y [O, Q] -> NCHW [N, O, Ho, Wo] (drops the grid's garbage cells)."""
    O, N = y.shape[0], geo.x_shape[0]
    if geo.grid:
        Hp, Wp = geo.padded
        item = y.itemsize
        y = np.lib.stride_tricks.as_strided(
            y, (O, N, geo.Ho, geo.Wo), (y.strides[0], Hp * Wp * item, Wp * item, item), writeable=False
        )                                                                         # [O, N, Ho, Wo] view
    return np.ascontiguousarray(y.reshape(O, N, geo.Ho, geo.Wo).transpose(1, 0, 2, 3))  # [N, O, Ho, Wo]


def to_columns(dy: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of `from_columns`: dy [N, O, Ho, Wo] -> [O, Q], zeros in the grid's garbage cells."""
    N, O = dy.shape[:2]
    if not geo.grid:
        return np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(O, -1)      # [O, N*Ho*Wo]
    cells = np.zeros((O, N, *geo.padded), dtype=dy.dtype)                         # [O, N, Hp, Wp]
    cells[:, :, : geo.Ho, : geo.Wo] = dy.transpose(1, 0, 2, 3)                    # [O, N, Ho, Wo]
    return cells.reshape(O, -1)[:, : geo.columns]                                 # [O, Q]
