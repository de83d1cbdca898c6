"""im2col / col2im of the float convolution, in two layouts chosen by the map size (docs/ENGINE.md, "Convolution").

Dimensions: N batch, C channels, H, W input, Ho, Wo output spatial, kh, kw kernel, K = C*kh*kw,
Hp = H + top + bottom, Wp = W + left + right (the zero-padded input), L = N*Hp*Wp, Q grid columns.

pointwise (a 1x1 conv without padding, any stride): no columns at all; conv.py multiplies W[O, C] by each
  image's x[n, :, ::s, ::s] viewed as [C, Ho*Wo] (one batched matmul, no layout copy at stride 1).
grid layout (stride 1, other convs whose maps have at least GRID_MIN_OUTPUTS outputs):
  channels first. The padded input is xp[C, L], one flat row per channel (`grid_source`). Output
  position (n, ho, wo) is column q = (n*Hp + ho)*Wp + wo of a grid with Hp x Wp cells per image, and
  tap (i, j) reads xp[:, q + i*Wp + j]: each tap's rows of the columns matrix are ONE shifted slice of
  xp, cols[(c, i, j), q], rows in the order of an OIHW weight reshaped to [O, K]. Cells with
  ho >= Ho or wo >= Wo are wrapped-around garbage: the forward never reads them (`from_columns`) and
  the backward feeds them zero gradient (`to_columns`). Q = L - (kh-1)*Wp - (kw-1) (the last valid
  cell + 1). A 3x3 conv's columns are 9x its input, so conv.py never holds them whole: it builds them
  chunk by chunk (`grid_chunk`, about CHUNK_BYTES, cache-resident between the copy and the matmul)
  from the cached xp, in the backward (`fold_grid_chunk`) and in the forward of the grid convs that conv_direct.py
  does not take (conv.py's `conv_layout` also puts its convs on the grid). Both are Numba loops
  over one channel's contiguous runs (the fold threaded over channels, taps added in order): in a cifar10
  training step copies 103 -> 74 ms and folds 111 -> 35 ms against NumPy's 2-D slice passes, about even when
  timed alone (docs/ENGINE.md, "Convolution"); `grid_chunk_ref` / `fold_grid_chunk_ref` are their NumPy twins.
rows layout (every other conv: small maps, where the grid's padding cells would waste a large share
  of the matmul, and Downsample's stride 2): channels last, as the NHWC im2col of most frameworks.
  cols[(n, ho, wo), (i, j, c)] = x[n, c, ho*stride + i - top, wo*stride + j - left] (0 in the
  padding), a Numba kernel that copies contiguous runs of C values; col2im gathers, so its loop over
  (n, h) rows has no write conflicts. `im2col_rows_ref` / `col2im_rows_ref` are its NumPy twins.

Both layouts hold the same numbers; the tests compare them exactly (copies) and their folds exactly
where the taps are summed in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from .padding import Padding, as_padding, conv_output_size
from .threaded import threaded_kernel

CHUNK_BYTES = 8 << 20  # bytes of one chunk of grid columns; 1, 2, 4, 8 MiB and unchunked measured in docs/ENGINE.md
MIN_CHUNK_COLUMNS = 256  # narrower matmuls waste BLAS's time on call overhead
ROWS_PARALLEL_MIN = 1 << 18  # cols elements from which the rows-layout im2col runs on every thread
SOURCE_SERIAL_ELEMENTS = 1 << 16  # padded elements below which grid_source runs on the calling thread
GRID_MIN_OUTPUTS = 1024  # smallest Ho*Wo of a padded conv in the grid layout (32x32; 16x16 ran faster in rows)


@dataclass(frozen=True)
class ConvGeometry:
    """Where a conv's columns live: input shape, kernel, stride, padding, output size and layout."""

    x_shape: tuple[int, int, int, int]
    kh: int
    kw: int
    stride: int
    padding: tuple[int, int, int, int]
    Ho: int
    Wo: int
    pointwise: bool  # a 1x1 kernel without padding: the batched matmul of conv.py, no columns
    grid: bool  # the grid layout; else (and not pointwise) the rows layout

    @property
    def padded(self) -> tuple[int, int]:
        """(Hp, Wp)."""
        top, bottom, left, right = self.padding
        return self.x_shape[2] + top + bottom, self.x_shape[3] + left + right

    @property
    def columns(self) -> int:
        """Q, the number of grid columns."""
        N = self.x_shape[0]
        Hp, Wp = self.padded
        return N * Hp * Wp - (self.kh - 1) * Wp - (self.kw - 1)


def conv_geometry(x_shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: Padding) -> ConvGeometry:
    """The geometry of a conv over an NCHW `x_shape`; raises if the padded input is smaller than the kernel."""
    pad = as_padding(padding)
    top, bottom, left, right = pad
    H, W = x_shape[2], x_shape[3]
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input {H}x{W} with padding {padding} is smaller than the kernel {kh}x{kw}")
    pointwise = kh == kw == 1 and pad == (0, 0, 0, 0)
    grid = stride == 1 and not pointwise and Ho * Wo >= GRID_MIN_OUTPUTS
    return ConvGeometry(tuple(x_shape), kh, kw, stride, pad, Ho, Wo, pointwise, grid)


# ---- grid layout -------------------------------------------------------------------------------------------


def _grid_source_kernel(tasks):
    """grid_source's kernel over the C*N padded planes, `tasks` being prange or range (threaded.py): each element of
    xp written once, x's value inside the padding, else zero."""

    def kernel(x, top, left, xp):  # pragma: no cover - compiled
        """xp [C, N, Hp, Wp] from x [N, C, H, W]."""
        N, C, H, W = x.shape
        Hp, Wp = xp.shape[2:]
        zero = xp.dtype.type(0)
        for task in tasks(C * N):
            c, n = task // N, task % N
            for r in range(Hp):
                h = r - top
                for w in range(Wp):
                    inside = 0 <= h < H and left <= w < left + W
                    xp[c, n, r, w] = x[n, c, h, w - left] if inside else zero

    return kernel


grid_source_kernel = threaded_kernel(_grid_source_kernel, SOURCE_SERIAL_ELEMENTS)


def grid_source(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x [N, C, H, W] -> zero-padded xp [C, N*Hp*Wp], in one pass over xp (grid_source_kernel; NumPy's zero fill and
    then a 4-D strided copy of x took two, on one thread: docs/ENGINE.md, "Convolution")."""
    N, C, H, W = x.shape
    top, _, left, _ = geo.padding
    xp = np.empty((C, N, *geo.padded), dtype=x.dtype)                             # [C, N, Hp, Wp]
    grid_source_kernel.for_work(xp.size)(x, top, left, xp)
    return xp.reshape(C, -1)                                                      # [C, L]


def grid_source_ref(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """NumPy twin of grid_source."""
    N, C, H, W = x.shape
    top, _, left, _ = geo.padding
    xp = np.zeros((C, N, *geo.padded), dtype=x.dtype)                             # [C, N, Hp, Wp]
    xp[:, :, top : top + H, left : left + W] = x.transpose(1, 0, 2, 3)            # [C, N, H, W]
    return xp.reshape(C, -1)                                                      # [C, L]


def tap_offsets(geo: ConvGeometry) -> list[int]:
    """The flat offset i*Wp + j of each tap (i, j) in the grid, taps in (i, j) order."""
    Wp = geo.padded[1]
    return [i * Wp + j for i in range(geo.kh) for j in range(geo.kw)]


@numba.njit(cache=True)
def grid_chunk_kernel(xp, offsets, start, cols):  # pragma: no cover - compiled
    """cols [C, taps, n] = xp[c, start + offsets[t] : ... + n] for every channel c and tap t (contiguous runs)."""
    C, taps, n = cols.shape
    for c in range(C):
        row = xp[c]
        for t in range(taps):
            source = row[start + offsets[t] : start + offsets[t] + n]
            target = cols[c, t]
            for q in range(n):
                target[q] = source[q]


@numba.njit(parallel=True, cache=True)
def fold_grid_chunk_kernel(dcols, offsets, start, dxp):  # pragma: no cover - compiled
    """dxp[c, start + offsets[t] : ... + n] += dcols[c, t] for every channel (one task each) and tap, taps in order."""
    C, taps, n = dcols.shape
    for c in numba.prange(C):
        for t in range(taps):
            target = dxp[c, start + offsets[t] : start + offsets[t] + n]
            source = dcols[c, t]
            for q in range(n):
                target[q] += source[q]


def grid_chunk(xp: np.ndarray, geo: ConvGeometry, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
    """Grid columns [start, stop) of xp [C, L] -> cols [C*kh*kw, stop - start], written into `buffer` (flat)."""
    C, taps = xp.shape[0], geo.kh * geo.kw
    cols = buffer[: C * taps * (stop - start)].reshape(C, taps, stop - start)     # [C, kh*kw, n]
    grid_chunk_kernel(xp, np.array(tap_offsets(geo)), start, cols)
    return cols.reshape(C * taps, stop - start)                                   # [K, n]


def grid_chunk_ref(xp: np.ndarray, geo: ConvGeometry, start: int, stop: int) -> np.ndarray:
    """NumPy twin of grid_chunk: one shifted slice of xp per tap."""
    C, taps = xp.shape[0], geo.kh * geo.kw
    cols = np.empty((C, taps, stop - start), dtype=xp.dtype)                      # [C, kh*kw, n]
    for t, offset in enumerate(tap_offsets(geo)):
        cols[:, t] = xp[:, start + offset : stop + offset]                        # [C, n]
    return cols.reshape(C * taps, stop - start)                                   # [K, n]


def fold_grid_chunk(dcols: np.ndarray, geo: ConvGeometry, start: int, dxp: np.ndarray) -> None:
    """Adjoint of grid_chunk: add dcols [C*kh*kw, n] (grid columns [start, start + n)) into dxp [C, L]."""
    C, n = dxp.shape[0], dcols.shape[1]
    d3 = np.ascontiguousarray(dcols).reshape(C, geo.kh * geo.kw, n)               # [C, kh*kw, n]
    fold_grid_chunk_kernel(d3, np.array(tap_offsets(geo)), start, dxp)


def fold_grid_chunk_ref(dcols: np.ndarray, geo: ConvGeometry, start: int, dxp: np.ndarray) -> None:
    """NumPy twin of fold_grid_chunk: one shifted slice-add per tap."""
    C, n = dxp.shape[0], dcols.shape[1]
    d3 = dcols.reshape(C, geo.kh * geo.kw, n)                                     # [C, kh*kw, n]
    for t, offset in enumerate(tap_offsets(geo)):
        dxp[:, start + offset : start + offset + n] += d3[:, t]                   # [C, n]


def column_chunks(columns: int, rows: int, itemsize: int, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) ranges covering `columns` columns (the grid's Q; conv_taps.py's cells), each about `chunk_bytes`
    (CHUNK_BYTES) of `rows` rows."""
    width = max(MIN_CHUNK_COLUMNS, (chunk_bytes or CHUNK_BYTES) // (rows * itemsize))
    return [(start, min(start + width, columns)) for start in range(0, columns, width)]


def grid_chunks(xp: np.ndarray, geo: ConvGeometry) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, cols [C*kh*kw, stop - start]) for every chunk of `column_chunks`; one buffer serves every
    chunk, so a chunk's cols are valid until the next one is made."""
    rows = xp.shape[0] * geo.kh * geo.kw
    chunks = column_chunks(geo.columns, rows, xp.itemsize)
    buffer = np.empty(rows * (chunks[0][1] - chunks[0][0]), dtype=xp.dtype)
    for start, stop in chunks:
        yield start, stop, grid_chunk(xp, geo, start, stop, buffer)


def crop_padding(dxp: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """dxp [C, L] -> the unpadded NCHW dx [N, C, H, W] (one copy)."""
    N, C, H, W = geo.x_shape
    top, _, left, _ = geo.padding
    dxp = dxp.reshape(C, N, *geo.padded)                                          # [C, N, Hp, Wp]
    return np.ascontiguousarray(dxp[:, :, top : top + H, left : left + W].transpose(1, 0, 2, 3))  # [N, C, H, W]


def from_columns(y: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """A conv's output on the grid, y [O, Q] -> NCHW [N, O, Ho, Wo] (drops the garbage cells; one copy)."""
    O, N = y.shape[0], geo.x_shape[0]
    Hp, Wp = geo.padded
    item = y.itemsize
    cells = np.lib.stride_tricks.as_strided(
        y, (O, N, geo.Ho, geo.Wo), (y.strides[0], Hp * Wp * item, Wp * item, item), writeable=False
    )                                                                             # [O, N, Ho, Wo] view
    return np.ascontiguousarray(cells.transpose(1, 0, 2, 3))                      # [N, O, Ho, Wo]


def to_columns(dy: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of `from_columns`: dy [N, O, Ho, Wo] -> [O, Q], zeros in the garbage cells."""
    N, O = dy.shape[:2]
    cells = np.zeros((O, N, *geo.padded), dtype=dy.dtype)                         # [O, N, Hp, Wp]
    cells[:, :, : geo.Ho, : geo.Wo] = dy.transpose(1, 0, 2, 3)                    # [O, N, Ho, Wo]
    return cells.reshape(O, -1)[:, : geo.columns]                                 # [O, Q]


def unfold_grid(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The whole grid columns matrix (what the chunks make up): x [N, C, H, W] -> cols [C*kh*kw, Q]."""
    xp = grid_source(x, geo)                                                      # [C, L]
    return grid_chunk(xp, geo, 0, geo.columns, np.empty(xp.shape[0] * geo.kh * geo.kw * geo.columns, x.dtype))


def fold_grid(dcols: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of unfold_grid: dcols [C*kh*kw, Q] -> dx [N, C, H, W]."""
    C = geo.x_shape[1]
    dxp = np.zeros((C, geo.x_shape[0] * geo.padded[0] * geo.padded[1]), dtype=dcols.dtype)  # [C, L]
    fold_grid_chunk(dcols, geo, 0, dxp)
    return crop_padding(dxp, geo)                                                 # [N, C, H, W]


# ---- rows layout -------------------------------------------------------------------------------------------


def _im2col_rows_kernel(image_rows):
    """im2col_rows_kernel with `image_rows` prange or range over the N*Ho output rows (threaded.py)."""

    def im2col_rows_kernel(x_nhwc, kh, kw, stride, top, left, Ho, Wo, cols):  # pragma: no cover - compiled
        N, H, W, C = x_nhwc.shape
        for r in image_rows(N * Ho):
            n, i = r // Ho, r % Ho
            for j in range(Wo):
                row = (n * Ho + i) * Wo + j
                for a in range(kh):
                    h = i * stride + a - top
                    for b in range(kw):
                        w = j * stride + b - left
                        base = (a * kw + b) * C
                        if 0 <= h < H and 0 <= w < W:
                            for c in range(C):
                                cols[row, base + c] = x_nhwc[n, h, w, c]
                        else:
                            for c in range(C):
                                cols[row, base + c] = 0

    return im2col_rows_kernel


im2col_rows_kernel = threaded_kernel(_im2col_rows_kernel, ROWS_PARALLEL_MIN)  # threaded from ROWS_PARALLEL_MIN cols


@numba.njit(cache=True)
def col2im_rows_kernel(dcols, kh, kw, stride, top, left, Ho, Wo, dx_nhwc):  # pragma: no cover - compiled
    N, H, W, C = dx_nhwc.shape
    for r in range(N * H):
        n, h = r // H, r % H
        for w in range(W):
            for a in range(kh):
                ih = h + top - a
                if ih < 0 or ih % stride != 0 or ih // stride >= Ho:
                    continue
                for b in range(kw):
                    iw = w + left - b
                    if iw < 0 or iw % stride != 0 or iw // stride >= Wo:
                        continue
                    row = (n * Ho + ih // stride) * Wo + iw // stride
                    base = (a * kw + b) * C
                    for c in range(C):
                        dx_nhwc[n, h, w, c] += dcols[row, base + c]


def rows_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW weight [O, C, kh, kw] -> [O, kh*kw*C], the column order of the rows layout."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def im2col_nhwc(x_nhwc: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Channels-last x [N, H, W, C] -> cols [N*Ho*Wo, kh*kw*C] (Numba; geo of the NCHW shape). Threaded from
    ROWS_PARALLEL_MIN column elements: below that a parallel launch costs more than the copy."""
    top, _, left, _ = geo.padding
    N, _, _, C = x_nhwc.shape
    cols = np.empty((N * geo.Ho * geo.Wo, geo.kh * geo.kw * C), dtype=x_nhwc.dtype)  # [N*Ho*Wo, K]
    kernel = im2col_rows_kernel.for_work(cols.size)
    kernel(np.ascontiguousarray(x_nhwc), geo.kh, geo.kw, geo.stride, top, left, geo.Ho, geo.Wo, cols)
    return cols


def im2col_rows(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x [N, C, H, W] -> cols [N*Ho*Wo, kh*kw*C] (Numba)."""
    return im2col_nhwc(x.transpose(0, 2, 3, 1), geo)                              # x as [N, H, W, C]


def col2im_rows(dcols: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Adjoint of im2col_rows: dcols [N*Ho*Wo, kh*kw*C] -> dx [N, C, H, W] (Numba)."""
    top, _, left, _ = geo.padding
    N, C, H, W = geo.x_shape
    dx_nhwc = np.zeros((N, H, W, C), dtype=dcols.dtype)                          # [N, H, W, C]
    col2im_rows_kernel(np.ascontiguousarray(dcols), geo.kh, geo.kw, geo.stride, top, left, geo.Ho, geo.Wo, dx_nhwc)
    return dx_nhwc.transpose(0, 3, 1, 2)                                          # [N, C, H, W]


def rows_taps(geo: ConvGeometry) -> tuple[tuple[int, int, int, int], list[tuple[int, int, tuple]]]:
    """(padded NHWC shape [N, Hp, Wp, C], the slice of that buffer each tap (i, j) reads: [N, Ho, Wo, C])."""
    N, C = geo.x_shape[:2]
    s = geo.stride
    taps = [(i, j, np.s_[:, i : i + s * geo.Ho : s, j : j + s * geo.Wo : s, :]) for i in range(geo.kh) for j in range(geo.kw)]
    return (N, *geo.padded, C), taps


def im2col_rows_ref(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """NumPy twin of `im2col_rows` (one strided copy per tap)."""
    top, _, left, _ = geo.padding
    N, C, H, W = x.shape
    padded_shape, taps = rows_taps(geo)
    xp = np.zeros(padded_shape, dtype=x.dtype)                                    # [N, Hp, Wp, C]
    xp[:, top : top + H, left : left + W, :] = x.transpose(0, 2, 3, 1)            # [N, H, W, C]
    cols = np.empty((N, geo.Ho, geo.Wo, geo.kh, geo.kw, C), dtype=x.dtype)        # [N, Ho, Wo, kh, kw, C]
    for i, j, tap in taps:
        cols[:, :, :, i, j, :] = xp[tap]                                          # [N, Ho, Wo, C]
    return cols.reshape(N * geo.Ho * geo.Wo, -1)                                  # [N*Ho*Wo, K]


def col2im_rows_ref(dcols: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """NumPy twin of `col2im_rows`: scatter-add dcols back to dx [N, C, H, W]."""
    top, _, left, _ = geo.padding
    N, C, H, W = geo.x_shape
    padded_shape, taps = rows_taps(geo)
    d6 = dcols.reshape(N, geo.Ho, geo.Wo, geo.kh, geo.kw, C)                      # [N, Ho, Wo, kh, kw, C]
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)                               # [N, Hp, Wp, C]
    for i, j, tap in taps:
        dxp[tap] += d6[:, :, :, i, j, :]                                          # [N, Ho, Wo, C]
    return dxp[:, top : top + H, left : left + W, :].transpose(0, 3, 1, 2)        # [N, C, H, W]
