"""Binary (W1A1) convolution and linear layer on packed bits: Numba popcount kernels and their NumPy twins.

Dimensions: N batch, C input channels (I features), O output channels, H, W input and Ho, Wo output
spatial, kh, kw kernel, Wd = ceil(C / 64) packed words; packed layouts as in bitpack.py.

Accumulator (README, "Conventions": binary accumulator), for each output (n, o, ho, wo):
    acc = sum over VALID taps (i, j) of (C - 2 * sum_d popcount(x_word xor w_word))
        = K_valid * C - 2 * sum over valid (i, j) and d of popcount(x_word xor w_word)
    x_word = packed[n, ho*stride + i - top, wo*stride + j - left, d],  w_word = words[o, i, j, d]
A tap is valid when its input position lies inside the image; K_valid counts them. Each valid tap adds
sum_c (+-1)(+-1) = C - 2 * (number of differing signs), and pad bits are 0 in both operands, so acc equals
conv2d(sign(x + tau), sign(W)) in float64 with zero padding (a padded tap adds 0) EXACTLY. int32 holds it:
|acc| <= kh*kw*C.
Fused epilogue (float32, in this order): out = float32(acc) * alpha[o] * k_map[n, ho, wo]. The NumPy twins
evaluate the same float32 products in the same order, so they agree to float32 rounding (tests allow a few
ulps; in practice the results are bit-equal).

Numba kernels (conv_acc, conv_scaled): prange over the N*Ho output rows (fills both cores even at 8x8);
per row an int32 buffer [Wo, O]. The valid taps j0..j1-1 of one kernel row are adjacent in the
NHWC-packed input, and so are the rows q = j*Wd + d of words_t[i] ([kh, kw*Wd, O]), so per output pixel
and valid kernel row the loop is: for q in j0*Wd .. j1*Wd-1: for o in 0..O-1: buf[wo, o] += popcount(...);
the loop over O is vectorised by LLVM (xor, popcount, add on whole registers: vpopcntq with AVX-512, a
vpshufb nibble table with AVX2). The popcount sums are kept in uint64 (as popcount returns them) and turned
into the int32 accumulator once per pixel: narrowing each popcount to int32 inside the loop costs a
vpmovqd per vector, on the port vpopcntq needs on Intel cores (docs/ENGINE.md "Packed layers").
Pixels whose taps all lie inside the image columns go PIXELS = 4 at a time: one load of a weight word
serves four accumulators (1.3-1.5x faster on the CIFAR-10 layers than one pixel at a time, docs/ENGINE.md
"Packed layers"). Border pixels run alone with fewer taps (i0..i1, j0..j1
clipped to the image), so no padded copy of the input is needed. No fastmath. Arguments: C-contiguous arrays,
`padding` a tuple of 4 ints (top, bottom, left, right). The binary linear layer is the 1x1 conv on a 1x1
image. A whole packed layer (packing, K map, this accumulator, the epilogue and the shortcut sum) is one
call of layer_kernels.packed_conv_layer / packed_linear_layer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.padding import Padding, as_padding, conv_output_size
from .bitpack import PackedConvWeight, PackedLinearWeight
from .popcount import popcount64


PIXELS = 4  # output pixels of a row whose accumulators share each weight word (module docstring)


@njit(cache=True)
def _accumulate_pixel(flat, words_t, channels, Wd, kw, h0, i0, i1, w0, W, n, differ, counts):
    """counts [O] of one output pixel whose taps start at (h0, w0); taps outside the image are skipped.
    differ [PIXELS, O] uint64 is scratch for the popcount sums (module docstring: why not int32)."""
    j0 = max(0, -w0)
    j1 = min(kw, W - w0)
    sums = differ[0]
    sums[:] = 0
    for i in range(i0, i1):
        for q in range(j0 * Wd, j1 * Wd):
            x_word = flat[n, h0 + i, w0 * Wd + q]
            for o in range(sums.shape[0]):
                sums[o] += popcount64(x_word ^ words_t[i, q, o])
    valid = (i1 - i0) * (j1 - j0) * channels
    for o in range(counts.shape[0]):
        counts[o] = valid - 2 * np.int32(sums[o])


@njit(cache=True)
def _accumulate_block(flat, words_t, channels, Wd, kw, stride, h0, i0, i1, w0, n, x_words, differ, block):
    """block [PIXELS, O] of PIXELS adjacent output pixels whose taps all lie inside the image columns: each
    weight word is loaded once for all of them (x_words [PIXELS] holds their input words of one tap; differ
    [PIXELS, O] uint64 is scratch for the popcount sums)."""
    differ[:] = 0
    for i in range(i0, i1):
        for q in range(kw * Wd):
            for p in range(PIXELS):
                x_words[p] = flat[n, h0 + i, (w0 + p * stride) * Wd + q]
            for o in range(block.shape[1]):
                w_word = words_t[i, q, o]
                for p in range(PIXELS):
                    differ[p, o] += popcount64(x_words[p] ^ w_word)
    valid = (i1 - i0) * kw * channels
    for p in range(PIXELS):
        for o in range(block.shape[1]):
            block[p, o] = valid - 2 * np.int32(differ[p, o])


@njit(cache=True)
def _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc):
    """Fill acc [Wo, O] int32 with the accumulators of output row (n, ho); see the module docstring."""
    _, H, W, Wd = packed.shape
    kh, kwWd, _ = words_t.shape
    kw = kwWd // Wd
    top, _, left, _ = padding
    flat = packed.reshape(packed.shape[0], H, W * Wd)                             # [N, H, W*Wd]
    h0 = ho * stride - top
    i0 = max(0, -h0)
    i1 = min(kh, H - h0)
    x_words = np.empty(PIXELS, dtype=np.uint64)                                   # [PIXELS]
    differ = np.empty((PIXELS, acc.shape[1]), dtype=np.uint64)                    # [PIXELS, O] popcount sums
    wo = 0
    while wo < acc.shape[0]:
        w0 = wo * stride - left
        if wo + PIXELS <= acc.shape[0] and w0 >= 0 and w0 + (PIXELS - 1) * stride + kw <= W:
            _accumulate_block(flat, words_t, channels, Wd, kw, stride, h0, i0, i1, w0, n, x_words, differ,
                              acc[wo : wo + PIXELS])
            wo += PIXELS
        else:
            _accumulate_pixel(flat, words_t, channels, Wd, kw, h0, i0, i1, w0, W, n, differ, acc[wo])
            wo += 1


@njit(parallel=True, cache=True)
def conv_acc(packed, words_t, channels, stride, padding):
    """packed [N, H, W, Wd], words_t [kh, kw*Wd, O] -> int32 acc [N, O, Ho, Wo]; padding (top, bottom, left, right)."""
    N, H, W, Wd = packed.shape
    kh, kwWd, O = words_t.shape
    top, bottom, left, right = padding
    Ho = (H + top + bottom - kh) // stride + 1
    Wo = (W + left + right - kwWd // Wd) // stride + 1
    out = np.empty((N, O, Ho, Wo), dtype=np.int32)                                # [N, O, Ho, Wo]
    for row in prange(N * Ho):
        n = row // Ho
        ho = row % Ho
        acc = np.empty((Wo, O), dtype=np.int32)                                   # [Wo, O]
        _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc)
        for o in range(O):
            for wo in range(Wo):
                out[n, o, ho, wo] = acc[wo, o]
    return out


@njit(parallel=True, cache=True)
def conv_scaled(packed, words_t, channels, stride, padding, alpha, k_map):
    """As conv_acc with the fused epilogue: float32 out [N, O, Ho, Wo] = acc * alpha[o] [O] * k_map [N, Ho, Wo]."""
    N, H, W, Wd = packed.shape
    kh, kwWd, O = words_t.shape
    top, bottom, left, right = padding
    Ho = (H + top + bottom - kh) // stride + 1
    Wo = (W + left + right - kwWd // Wd) // stride + 1
    out = np.empty((N, O, Ho, Wo), dtype=np.float32)                              # [N, O, Ho, Wo]
    for row in prange(N * Ho):
        n = row // Ho
        ho = row % Ho
        acc = np.empty((Wo, O), dtype=np.int32)                                   # [Wo, O]
        _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc)
        for o in range(O):
            scale = alpha[o]
            for wo in range(Wo):
                out[n, o, ho, wo] = np.float32(acc[wo, o]) * scale * k_map[n, ho, wo]
    return out


def conv_acc_ref(packed: np.ndarray, words: np.ndarray, channels: int, stride: int, padding: Padding) -> np.ndarray:
    """NumPy twin of conv_acc on the canonical words [O, kh, kw, Wd]: one tap at a time, masks for validity."""
    top, bottom, left, right = as_padding(padding)
    N, H, W, Wd = packed.shape
    O, kh, kw, _ = words.shape
    Ho = conv_output_size(H, kh, stride, top, bottom)
    Wo = conv_output_size(W, kw, stride, left, right)
    acc = np.zeros((N, O, Ho, Wo), dtype=np.int64)                                # [N, O, Ho, Wo]
    for i in range(kh):
        rows = np.arange(Ho) * stride + i - top                                   # [Ho]
        for j in range(kw):
            cols = np.arange(Wo) * stride + j - left                              # [Wo]
            valid = (rows[:, None] >= 0) & (rows[:, None] < H) & (cols >= 0) & (cols < W)  # [Ho, Wo]
            taps = packed[:, rows.clip(0, H - 1)][:, :, cols.clip(0, W - 1)]      # [N, Ho, Wo, Wd]
            differ = np.bitwise_count(taps[:, None] ^ words[None, :, i, j, None, None, :])  # [N, O, Ho, Wo, Wd]
            acc += valid * (channels - 2 * differ.sum(axis=-1, dtype=np.int64))    # [N, O, Ho, Wo]
    return acc.astype(np.int32)


def scale_ref(acc: np.ndarray, alpha: np.ndarray, k_map: np.ndarray) -> np.ndarray:
    """NumPy twin of the fused epilogue: float32(acc [N, O, Ho, Wo]) * alpha [O] * k_map [N, Ho, Wo]."""
    return acc.astype(np.float32) * alpha[:, None, None] * k_map[:, None, :, :]    # [N, O, Ho, Wo]


def conv_scaled_ref(
    packed: np.ndarray,
    words: np.ndarray,
    channels: int,
    stride: int,
    padding: Padding,
    alpha: np.ndarray,
    k_map: np.ndarray,
) -> np.ndarray:
    """NumPy twin of conv_scaled on the canonical words [O, kh, kw, Wd]."""
    return scale_ref(conv_acc_ref(packed, words, channels, stride, padding), alpha, k_map)


def output_shape(x_shape: tuple[int, ...], weight: PackedConvWeight, stride: int, padding: Padding) -> tuple[int, ...]:
    """[N, O, Ho, Wo] of the binary conv of an input [N, C, H, W]; a clear error if the kernel does not fit."""
    top, bottom, left, right = as_padding(padding)
    O, kh, kw, _ = weight.words.shape
    if stride < 1:
        raise ValueError(f"binary conv: stride must be >= 1, got {stride}")
    Ho = conv_output_size(x_shape[2], kh, stride, top, bottom)
    Wo = conv_output_size(x_shape[3], kw, stride, left, right)
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"binary conv: input {x_shape[2]}x{x_shape[3]} with padding {padding}, stride {stride} "
            f"does not fit the kernel {kh}x{kw}"
        )
    return (x_shape[0], O, Ho, Wo)


def linear_acc(packed: np.ndarray, weight: PackedLinearWeight) -> np.ndarray:
    """packed inputs [N, Wd] -> int32 acc [N, O] = I - 2 * popcount(x xor w), by conv_acc as a 1x1 conv on 1x1."""
    N, Wd = packed.shape
    image = np.ascontiguousarray(packed).reshape(N, 1, 1, Wd)                     # [N, 1, 1, Wd]
    return conv_acc(image, weight.words_t, weight.features, 1, (0, 0, 0, 0))[:, :, 0, 0]  # [N, O]


def linear_acc_ref(packed: np.ndarray, words: np.ndarray, features: int) -> np.ndarray:
    """NumPy twin of linear_acc: packed [N, Wd], words [O, Wd] -> int32 [N, O]."""
    differ = np.bitwise_count(packed[:, None, :] ^ words[None, :, :]).sum(axis=-1, dtype=np.int64)  # [N, O]
    return (features - 2 * differ).astype(np.int32)
