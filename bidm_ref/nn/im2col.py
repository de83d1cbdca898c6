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

A 3x3 conv's columns are 9x its input: for the grid layout conv.py never holds them whole. It keeps
the padded input xp (`grid_source`) and builds the columns chunk by chunk (`grid_chunk`: columns
[start, stop), about CHUNK_BYTES, so a chunk stays in the cache between its copy and its matmul),
in the forward and again in the backward (`fold_grid_chunk` adds a chunk's gradient into dxp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .padding import Padding, as_padding, conv_output_size

CHUNK_BYTES = 8 << 20  # bytes of one chunk of grid columns; 1, 2, 4, 8 MiB and unchunked measured in docs/ENGINE.md
MIN_CHUNK_COLUMNS = 256  # narrower matmuls waste BLAS's time on call overhead


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


def grid_source(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The grid layout's padded input: x [N, C, H, W] -> xp [C, N*Hp*Wp]; for a 1x1 kernel it is cols itself."""
    return padded_channels_first(x, geo).reshape(x.shape[1], -1)                  # [C, N*Hp*Wp]


def grid_chunk(xp: np.ndarray, geo: ConvGeometry, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
    """Grid columns [start, stop) of xp [C, N*Hp*Wp] -> cols [C*kh*kw, stop - start], written into `buffer` (flat)."""
    C, taps = xp.shape[0], geo.kh * geo.kw
    cols = buffer[: C * taps * (stop - start)].reshape(C, taps, stop - start)     # [C, kh*kw, n]
    for t, (_, _, offset) in enumerate(tap_offsets(geo)):
        cols[:, t] = xp[:, start + offset : stop + offset]                        # [C, n]
    return cols.reshape(C * taps, stop - start)                                   # [K, n]


def fold_grid_chunk(dcols: np.ndarray, geo: ConvGeometry, start: int, dxp: np.ndarray) -> None:
    """Adjoint of grid_chunk: add dcols [C*kh*kw, n] (grid columns [start, start + n)) into dxp [C, N*Hp*Wp]."""
    C, n = dxp.shape[0], dcols.shape[1]
    d3 = dcols.reshape(C, geo.kh * geo.kw, n)                                     # [C, kh*kw, n]
    for t, (_, _, offset) in enumerate(tap_offsets(geo)):
        dxp[:, start + offset : start + offset + n] += d3[:, t]                   # [C, n]


def column_chunks(geo: ConvGeometry, rows: int, itemsize: int, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) ranges covering the Q columns, each about `chunk_bytes` (CHUNK_BYTES) of `rows` rows."""
    width = max(MIN_CHUNK_COLUMNS, (chunk_bytes or CHUNK_BYTES) // (rows * itemsize))
    return [(start, min(start + width, geo.columns)) for start in range(0, geo.columns, width)]


def unfold_grid(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The grid layout (stride 1), whole: x [N, C, H, W] -> cols [C*kh*kw, Q], one shifted slice per tap."""
    xp = grid_source(x, geo)                                                      # [C, N*Hp*Wp]
    if geo.kh * geo.kw == 1:
        return xp                                                                 # [K = C, Q = N*Hp*Wp]
    return grid_chunk(xp, geo, 0, geo.columns, np.empty(xp.shape[0] * geo.kh * geo.kw * geo.columns, x.dtype))


def unfold(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x [N, C, H, W] -> cols [K, Q] in the layout of `geo` (grid for stride 1, else dense)."""
    return unfold_grid(x, geo) if geo.grid else unfold_dense(x, geo)


def fold(dcols: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of `unfold`: dcols [K, Q] -> dx [N, C, H, W] (taps summed in (i, j) order)."""
    N, C, H, W = geo.x_shape
    if geo.grid and geo.kh * geo.kw == 1:
        dxp = dcols.reshape(C, N, *geo.padded)                                    # [C, N, Hp, Wp]
    else:
        dxp = np.zeros((C, N, *geo.padded), dtype=dcols.dtype)                    # [C, N, Hp, Wp]
    if geo.grid and geo.kh * geo.kw > 1:
        fold_grid_chunk(dcols, geo, 0, dxp.reshape(C, -1))
    elif not geo.grid:
        d6 = dcols.reshape(C, geo.kh, geo.kw, N, geo.Ho, geo.Wo)                  # [C, kh, kw, N, Ho, Wo]
        for i, j, _ in tap_offsets(geo):
            dxp[dense_tap(geo, i, j)] += d6[:, i, j]                              # [C, N, Ho, Wo]
    return crop_padding(dxp, geo)                                                 # [N, C, H, W]


def crop_padding(dxp: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """dxp [C, N, Hp, Wp] (or flat [C, N*Hp*Wp]) -> the unpadded NCHW dx [N, C, H, W] (one copy)."""
    N, C, H, W = geo.x_shape
    top, _, left, _ = geo.padding
    dxp = dxp.reshape(C, N, *geo.padded)                                          # [C, N, Hp, Wp]
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
