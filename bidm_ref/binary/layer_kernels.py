"""A whole packed binary conv layer in one compiled call: pack, K map, popcount conv, scales, shortcut sum.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial, kh, kw
kernel, Wd = ceil(C / 64) packed words; the packed layouts are bitpack.py's, the accumulator kernels.py's.

PackedConv2d's binary-mode output (packed_layers.py; docs/METHOD.md §3), for each (n, o, ho, wo):
    bits[n, h, w]  = sign(x[n, :, h, w] + tau) packed           pass 1, one image n per task
    A[n, h, w]     = float32(sum_c |x[n, c, h, w]|) / C         pass 1, summed over c in order (NumPy's mean)
    K[n, ho, wo]   = sum over valid taps (i, j), in (i, j) order, of A[n, h0 + i, w0 + j] * k_weight[i, j]
                     + k_bias                                    pass 2, h0 = ho*stride - top, w0 = wo*stride - left
    y[n, o, ho, wo] = float32(acc) * alpha[o] * K  +  s * sc[n, o, ho, wo]      pass 2, acc as kernels.py
with sc the raw FP shortcut (identity, 2x2 average pool or 1x1 conv, computed by the caller) and s its
scale. A padded tap of the float layer's K conv adds A = 0, which the valid-tap sum leaves out. The
float32 operations are the float layer's (BinaryConv2d.binary_forward) in the same order except K's
products, which BLAS may sum in another order: the two layers agree to float32 rounding.

Two passes are two loops of one call. A parallel loop costs a wake-up of the sleeping OpenMP workers
(docs/ENGINE.md, "Threads"), which on small layers (8x8 maps, batch 1) costs more than the layer itself:
`packed_conv_layer` runs the serial compilation below SERIAL_WORK popcount words and the parallel one
above (measured in docs/ENGINE.md, "Packed layers"). Both compilations give the same bytes (each output
is computed by one task in a fixed order). `packed_linear_layer` runs the binary linear layer through the
same kernel (a 1x1 conv on a 1x1 image, K = 1). `packed_conv_layer_ref` / `packed_linear_layer_ref` are
the NumPy twins.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..nn.padding import Padding, as_padding
from ..nn.threaded import threaded_kernel
from .bitpack import PackedConvWeight, PackedLinearWeight, pack_activations_ref, pack_image
from .kernels import _accumulate_row, conv_scaled_ref, output_shape

SERIAL_WORK = 1 << 19  # popcount words (N*Ho*Wo*Ot*kh*kw*Wd) below which a layer runs on one thread


@njit(cache=True)
def _output_row(packed, a_map, words_t, channels, stride, padding, alpha, k_weight, k_bias, s, sc, n, ho, out):
    """Pass 2 for output row (n, ho): K, the accumulators and out[n, :, ho] [O, Wo] (module docstring)."""
    H, W = a_map.shape[1], a_map.shape[2]
    kh, kw = k_weight.shape
    top, _, left, _ = padding
    O, Wo = out.shape[1], out.shape[3]
    acc = np.empty((O, Wo), dtype=np.int32)                                       # [O, Wo]
    _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc)
    k_row = np.zeros(Wo, dtype=np.float32)                                        # [Wo] K of this row
    h0 = ho * stride - top
    for i in range(max(0, -h0), min(kh, H - h0)):                                # valid taps in (i, j) order,
        for j in range(kw):                                                       # each over the pixels it is valid for
            w_first = max(0, (left - j + stride - 1) // stride)                   # w0 + j >= 0
            w_end = min(Wo, (W - 1 + left - j) // stride + 1)                     # w0 + j <= W - 1
            tap = k_weight[i, j]
            for wo in range(w_first, w_end):
                k_row[wo] += a_map[n, h0 + i, wo * stride - left + j] * tap
    for wo in range(Wo):
        k_row[wo] += k_bias
    for o in range(O):
        acc_row, out_row, scale = acc[o], out[n, o, ho], alpha[o]                 # [Wo], [Wo]
        if sc.shape[0] == 0:                                                      # no shortcut
            for wo in range(Wo):
                out_row[wo] = np.float32(acc_row[wo]) * scale * k_row[wo]
        else:
            sc_row = sc[n, o, ho]                                                 # [Wo]
            for wo in range(Wo):
                out_row[wo] = np.float32(acc_row[wo]) * scale * k_row[wo] + s * sc_row[wo]


def _layer_kernel(rows):
    """Both passes of the module docstring as one compiled call: `rows` (prange or range, nn/threaded.py) over the
    N input images, then over the N*Ho output rows."""

    def layer(x, tau, words_t, channels, stride, padding, alpha, k_weight, k_bias, s, sc, packed, a_map, out):
        N = x.shape[0]
        Ho = out.shape[2]
        for n in rows(N):
            pack_image(x, tau, n, packed, a_map)
        for row in rows(N * Ho):
            _output_row(packed, a_map, words_t, channels, stride, padding, alpha, k_weight, k_bias, s, sc,
                        row // Ho, row % Ho, out)

    return layer


layer_kernel = threaded_kernel(_layer_kernel, SERIAL_WORK)  # threaded from SERIAL_WORK popcount words


def layer_work(out_shape: tuple[int, ...], words_t: np.ndarray) -> int:
    """Popcount words of one layer call: N*Ho*Wo * Ot*kh*kw*Wd (words_t [kh, kw*Wd, Ot], Ot = O in whole tiles)."""
    N, _, Ho, Wo = out_shape
    return N * Ho * Wo * words_t.size


def _check_layer_inputs(x: np.ndarray, tau: np.ndarray, k_weight: np.ndarray, kernel: tuple[int, int], C: int) -> None:
    """One-line errors for arguments that do not fit the layer."""
    if x.ndim != 4 or x.shape[1] != C or x.dtype != np.float32:
        raise ValueError(f"packed conv layer: input {x.dtype} {list(x.shape)} is not float32 NCHW [N, {C}, H, W]")
    if tau.shape != (C,):
        raise ValueError(f"packed conv layer: tau must be [C] = [{C}], got {list(tau.shape)}")
    if k_weight.shape != tuple(kernel):
        raise ValueError(f"packed conv layer: k_weight {list(k_weight.shape)} is not the kernel's {list(kernel)}")


def packed_conv_layer(
    x: np.ndarray, tau: np.ndarray, weight: PackedConvWeight, stride: int, padding: Padding,
    k_weight: np.ndarray, k_bias: float, s: float, sc: np.ndarray | None,
) -> np.ndarray:
    """y = conv(sign(x + tau), alpha sign(W)) * K + s * sc in one call, float32 [N, O, Ho, Wo] (module docstring).

    x [N, C, H, W] float32, tau [C], k_weight [kh, kw], sc [N, O, Ho, Wo] float32 (the raw shortcut; None: no
    shortcut term, y = z * K).
    """
    _check_layer_inputs(x, tau, k_weight, weight.words.shape[1:3], weight.channels)
    out_shape = output_shape(x.shape, weight, stride, padding)
    if sc is not None and sc.shape != out_shape:
        raise ValueError(f"packed conv layer: shortcut {list(sc.shape)} is not the output's {list(out_shape)}")
    return _run_layer(x, tau, weight.words_t, weight.channels, weight.alpha, out_shape, stride, as_padding(padding),
                      k_weight, k_bias, s, sc)


def _run_layer(x, tau, words_t, channels, alpha, out_shape, stride, padding, k_weight, k_bias, s, sc) -> np.ndarray:
    """Allocate the buffers and run the serial or the parallel compilation (by the popcount work); sc None: no
    shortcut term (the kernel reads an empty array as that)."""
    if sc is None:
        sc = np.empty((0, 0, 0, 0), dtype=np.float32)
    N, _, H, W = x.shape
    packed = np.empty((N, H, W, words_t.shape[1] // k_weight.shape[1]), dtype=np.uint64)  # [N, H, W, Wd]
    a_map = np.empty((N, H, W), dtype=np.float32)                                 # [N, H, W]
    out = np.empty(out_shape, dtype=np.float32)                                   # [N, O, Ho, Wo]
    kernel = layer_kernel.for_work(layer_work(out_shape, words_t))
    kernel(np.ascontiguousarray(x), np.ascontiguousarray(tau, dtype=np.float32), words_t, channels, stride, padding,
           alpha, np.ascontiguousarray(k_weight, dtype=np.float32), np.float32(k_bias), np.float32(s),
           np.ascontiguousarray(sc), packed, a_map, out)
    return out


# The binary linear layer is the 1x1 conv on a 1x1 image with K = 1: k_weight 0 and k_bias 1 give K = 0 * A + 1,
# exactly 1 for any finite input, and float32(acc) * alpha * 1 is float32(acc) * alpha exactly.
LINEAR_K_WEIGHT = np.zeros((1, 1), dtype=np.float32)


def packed_linear_layer(x: np.ndarray, tau: np.ndarray, weight: PackedLinearWeight) -> np.ndarray:
    """BiDM's binary linear on packed bits in one call: sign(x + tau) (alpha sign(W))^T, float32 [N, O].

    x [N, I] float32, tau [I].
    """
    if x.ndim != 2 or x.shape[1] != weight.features:
        raise ValueError(f"binary linear: input {list(x.shape)} is not [N, {weight.features}]")
    N, I = x.shape
    image = x.reshape(N, I, 1, 1)                                                 # [N, I, 1, 1]
    _check_layer_inputs(image, tau, LINEAR_K_WEIGHT, (1, 1), I)
    out_shape = (N, weight.words.shape[0], 1, 1)
    return _run_layer(image, tau, weight.words_t, I, weight.alpha, out_shape, 1, (0, 0, 0, 0), LINEAR_K_WEIGHT,
                      1.0, 0.0, None)[:, :, 0, 0]                                 # [N, O]


def k_map_ref(x: np.ndarray, k_weight: np.ndarray, k_bias: float, stride: int, padding: Padding,
              out_hw: tuple[int, int]) -> np.ndarray:
    """NumPy twin of K: A = mean_c |x| [N, H, W], then the valid-tap sum in (i, j) order + k_bias -> [N, Ho, Wo]."""
    N, C, H, W = x.shape
    top, _, left, _ = as_padding(padding)
    Ho, Wo = out_hw
    a_map = np.abs(x).sum(axis=1) / np.float32(C)                                 # [N, H, W]
    k = np.zeros((N, Ho, Wo), dtype=np.float32)                                   # [N, Ho, Wo]
    for i in range(k_weight.shape[0]):
        rows = np.arange(Ho) * stride + i - top                                   # [Ho]
        for j in range(k_weight.shape[1]):
            cols = np.arange(Wo) * stride + j - left                              # [Wo]
            valid = (rows[:, None] >= 0) & (rows[:, None] < H) & (cols >= 0) & (cols < W)  # [Ho, Wo]
            taps = a_map[:, rows.clip(0, H - 1)][:, :, cols.clip(0, W - 1)]       # [N, Ho, Wo]
            k = np.where(valid, k + taps * k_weight[i, j], k)                     # [N, Ho, Wo]
    return k + np.float32(k_bias)                                                 # [N, Ho, Wo]


def packed_conv_layer_ref(
    x: np.ndarray, tau: np.ndarray, weight: PackedConvWeight, stride: int, padding: Padding,
    k_weight: np.ndarray, k_bias: float, s: float, sc: np.ndarray | None,
) -> np.ndarray:
    """NumPy twin of packed_conv_layer (pack_activations_ref, k_map_ref, conv_scaled_ref, the shortcut sum)."""
    N, O, Ho, Wo = output_shape(x.shape, weight, stride, padding)
    packed = pack_activations_ref(x, np.asarray(tau, dtype=np.float32))           # [N, H, W, Wd]
    k_rows = k_map_ref(x, np.asarray(k_weight, dtype=np.float32), k_bias, stride, padding, (Ho, Wo))  # [N, Ho, Wo]
    zk = conv_scaled_ref(packed, weight.words, weight.channels, stride, padding, weight.alpha, k_rows)  # [N, O, Ho, Wo]
    return zk if sc is None else zk + np.float32(s) * sc                          # [N, O, Ho, Wo]


def packed_linear_layer_ref(x: np.ndarray, tau: np.ndarray, weight: PackedLinearWeight) -> np.ndarray:
    """NumPy twin of packed_linear_layer (packed_conv_layer_ref on the 1x1 image with K = 1)."""
    N, I = x.shape
    conv_weight = PackedConvWeight(weight.words[:, None, None, :], I, weight.alpha)  # [O, 1, 1, Wd]
    return packed_conv_layer_ref(x.reshape(N, I, 1, 1), tau, conv_weight, 1, 0, LINEAR_K_WEIGHT, 1.0, 0.0,
                                 None)[:, :, 0, 0]                                # [N, O]
