"""im2col / col2im for the float convolution: Numba kernels and their plain NumPy twins (*_ref).

Dimensions: N batch, C channels, H, W input, Ho, Wo output spatial, kh, kw kernel,
K = kh*kw*C. Rows of cols are ordered (n, ho, wo), columns (i, j, c): channels innermost.
Padding is (top, bottom, left, right) zeros (see conv.as_padding).

im2col: cols[(n, ho, wo), (i, j, c)] = x[n, c, ho*stride + i - top, wo*stride + j - left]  (0 outside)
col2im: its adjoint, dx[n, c, h, w] = sum of the cols entries that read x[n, c, h, w].
The Numba col2im gathers (each input pixel sums the taps that read it), so its loop over (n, h)
rows has no write conflicts; its summation order differs from the twin's, so the two agree to
float rounding (exactly for im2col, a pure copy). Both run on one thread: they are memory copies,
and a parallel region per conv stalls on a busy machine (OpenMP workers descheduled by other
processes cost ~10 ms per launch, measured with the UNet step benchmark), while the matmul
next to them already uses BLAS's threads.
"""

from __future__ import annotations

import numba
import numpy as np

from .padding import Padding, as_padding, conv_output_size


@numba.njit(cache=True)
def im2col_nhwc_kernel(x_nhwc, kh, kw, stride, top, left, Ho, Wo, cols):  # pragma: no cover - compiled
    N, H, W, C = x_nhwc.shape
    for r in range(N * Ho):
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


@numba.njit(cache=True)
def col2im_nhwc_kernel(dcols, kh, kw, stride, top, left, Ho, Wo, dx_nhwc):  # pragma: no cover - compiled
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


def output_size(shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: Padding) -> tuple[int, int]:
    """(Ho, Wo) of a conv over an NCHW `shape`; raises if the padded input is smaller than the kernel."""
    top, bottom, left, right = as_padding(padding)
    H, W = shape[2], shape[3]
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input {H}x{W} with padding {padding} is smaller than the kernel {kh}x{kw}")
    return Ho, Wo


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: Padding) -> np.ndarray:
    """Unfold zero-padded patches: x [N, C, H, W] -> cols [N*Ho*Wo, kh*kw*C] (Numba)."""
    top, _, left, _ = as_padding(padding)
    N, C = x.shape[:2]
    Ho, Wo = output_size(x.shape, kh, kw, stride, padding)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))                       # [N, H, W, C]
    cols = np.empty((N * Ho * Wo, kh * kw * C), dtype=x.dtype)                    # [N*Ho*Wo, K]
    im2col_nhwc_kernel(x_nhwc, kh, kw, stride, top, left, Ho, Wo, cols)
    return cols


def col2im(
    dcols: np.ndarray, x_shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: Padding
) -> np.ndarray:
    """Adjoint of im2col: dcols [N*Ho*Wo, kh*kw*C] -> dx [N, C, H, W] (Numba)."""
    top, _, left, _ = as_padding(padding)
    N, C, H, W = x_shape
    Ho, Wo = output_size(x_shape, kh, kw, stride, padding)
    dx_nhwc = np.zeros((N, H, W, C), dtype=dcols.dtype)                          # [N, H, W, C]
    col2im_nhwc_kernel(np.ascontiguousarray(dcols), kh, kw, stride, top, left, Ho, Wo, dx_nhwc)
    return dx_nhwc.transpose(0, 3, 1, 2)                                          # [N, C, H, W]


def im2col_ref(x: np.ndarray, kh: int, kw: int, stride: int, padding: Padding) -> np.ndarray:
    """NumPy twin of `im2col`: x [N, C, H, W] -> cols [N*Ho*Wo, kh*kw*C].

    Rows are ordered (n, ho, wo) and columns (i, j, c): channels innermost, so each copy below
    moves contiguous runs of C values (an NHWC copy of x is made once). Weights are matched by
    `weight_matrix` ([O, kh*kw*C], the same column order).
    """
    top, bottom, left, right = as_padding(padding)
    N, C, H, W = x.shape
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input {H}x{W} with padding {padding} is smaller than the kernel {kh}x{kw}")
    xp = np.zeros((N, H + top + bottom, W + left + right, C), dtype=x.dtype)    # [N, Hp, Wp, C]
    xp[:, top : top + H, left : left + W, :] = x.transpose(0, 2, 3, 1)            # [N, H, W, C]
    cols = np.empty((N, Ho, Wo, kh, kw, C), dtype=x.dtype)                        # [N, Ho, Wo, kh, kw, C]
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i : i + stride * Ho : stride, j : j + stride * Wo : stride, :]  # [N, Ho, Wo, C]
    return cols.reshape(N * Ho * Wo, kh * kw * C)                                 # [N*Ho*Wo, K]


def col2im_ref(
    dcols: np.ndarray, x_shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: Padding
) -> np.ndarray:
    """NumPy twin of `col2im`: scatter-add dcols [N*Ho*Wo, kh*kw*C] back to dx [N, C, H, W]."""
    top, bottom, left, right = as_padding(padding)
    N, C, H, W = x_shape
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    d6 = dcols.reshape(N, Ho, Wo, kh, kw, C)                                      # [N, Ho, Wo, kh, kw, C]
    dxp = np.zeros((N, H + top + bottom, W + left + right, C), dtype=dcols.dtype)  # [N, Hp, Wp, C]
    for i in range(kh):
        for j in range(kw):
            dxp[:, i : i + stride * Ho : stride, j : j + stride * Wo : stride, :] += d6[:, :, :, i, j, :]  # [N, Ho, Wo, C]
    return dxp[:, top : top + H, left : left + W, :].transpose(0, 3, 1, 2)        # [N, C, H, W]
