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
per row an int32 buffer [O, Wo]. The valid taps j0..j1-1 of one kernel row are adjacent in the NHWC-packed
input, and so are the rows q = j*Wd + d of words_t[i] ([kh, kw*Wd, Ot], Ot = O rounded up to a whole tile
with zero words), so per output pixel and valid kernel row the sum runs over q in j0*Wd .. j1*Wd-1. It runs
as register tiles (popcount.make_tile_popcount, LLVM IR like nn/conv_direct.py's tile_dot): PIXELS = 4
adjacent output pixels x TILE_WORDS output channels (32 with AVX-512, 8 with AVX2) whose popcount sums stay
in vector registers over all taps; per word q one load of TILE_WORDS weight words and one broadcast per pixel
feed PIXELS x TILE_WORDS xor / popcount / add lanes (vpopcntq with AVX512_VPOPCNTDQ, LLVM's vpshufb table
without). The tile ends by writing valid*C - 2*sums into the buffer, output-major, so the epilogue reads
rows of Wo. LLVM's loop vectorizer keeps such sums in memory (a load and a store per popcount), which the
tiles avoid (measured in docs/ENGINE.md, "Packed layers"). Pixels whose taps all lie inside the image columns
go PIXELS at a time (the row's last block overlaps the one before it); border pixels run as tiles of one
pixel with fewer taps (i0..i1, j0..j1 clipped to the image), so no padded copy of the input is needed. No
fastmath. Arguments: C-contiguous arrays, `padding` a tuple of 4 ints (top, bottom, left, right). The binary
linear layer is the 1x1 conv on a 1x1 image. A whole packed layer (packing, K map, this accumulator, the
epilogue and the shortcut sum) is one call of layer_kernels.packed_conv_layer / packed_linear_layer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.padding import Padding, as_padding, conv_output_size
from .bitpack import PackedConvWeight, PackedLinearWeight
from .popcount import TILE_WORDS, make_tile_popcount


PIXELS = 4  # adjacent output pixels of one register tile, which share each weight word (module docstring)


tile_pixels = make_tile_popcount(PIXELS)  # PIXELS adjacent output pixels x TILE_WORDS output channels
tile_pixel = make_tile_popcount(1)  # one output pixel (border pixels, whose taps are clipped to the image)


@njit(cache=True)
def _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc):
    """Fill acc [O, Wo] int32 with the accumulators of output row (n, ho); see the module docstring."""
    _, H, W, Wd = packed.shape
    kh, kwWd, O_tiles = words_t.shape
    O, Wo = acc.shape
    kw = kwWd // Wd
    top, _, left, _ = padding
    x = packed.reshape(-1)                                                        # [N*H*W*Wd]
    w = words_t.reshape(-1)                                                       # [kh*kw*Wd*Ot]
    h0 = ho * stride - top
    i0 = max(0, -h0)
    rows = max(0, min(kh, H - h0) - i0)
    x_row, w_row = W * Wd, kwWd * O_tiles
    first = min(Wo, (left + stride - 1) // stride)                                # first pixel with all taps inside
    last = max(first, min(Wo, (W - kw + left) // stride + 1))                     # one past the last such pixel
    blocks = last - first >= PIXELS                                               # else every pixel runs alone
    acc_flat = acc.reshape(-1)                                                    # [O*Wo]
    for o_first in range(0, O, TILE_WORDS):
        outputs = O - o_first
        w_first = i0 * w_row + o_first
        for wo in range(Wo):
            if blocks and first <= wo < last:
                if (wo - first) % PIXELS == 0:                                    # a block starts here
                    start = min(wo, last - PIXELS)                                # the last one overlaps the one before
                    x_first = ((n * H + h0 + i0) * W + start * stride - left) * Wd
                    tile_pixels(acc_flat, o_first * Wo + start, Wo, outputs, rows * kw * channels,
                                x, x_first, x_row, stride * Wd, rows, kwWd, w, w_first, w_row, O_tiles)
                continue
            w0 = wo * stride - left
            j0 = max(0, -w0)
            cols = max(0, min(kw, W - w0) - j0)
            x_first = ((n * H + h0 + i0) * W + w0 + j0) * Wd
            tile_pixel(acc_flat, o_first * Wo + wo, Wo, outputs, rows * cols * channels,
                       x, x_first, x_row, 0, rows, cols * Wd, w, w_first + j0 * Wd * O_tiles, w_row, O_tiles)


@njit(parallel=True, cache=True)
def conv_acc(packed, words_t, outputs, channels, stride, padding):
    """packed [N, H, W, Wd], words_t [kh, kw*Wd, Ot] -> int32 acc [N, O, Ho, Wo] of its first O = `outputs` channels;
    padding (top, bottom, left, right)."""
    N, H, W, Wd = packed.shape
    kh, kwWd, _ = words_t.shape
    O = outputs
    top, bottom, left, right = padding
    Ho = (H + top + bottom - kh) // stride + 1
    Wo = (W + left + right - kwWd // Wd) // stride + 1
    out = np.empty((N, O, Ho, Wo), dtype=np.int32)                                # [N, O, Ho, Wo]
    for row in prange(N * Ho):
        n = row // Ho
        ho = row % Ho
        acc = np.empty((O, Wo), dtype=np.int32)                                   # [O, Wo]
        _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc)
        out[n, :, ho, :] = acc
    return out


@njit(parallel=True, cache=True)
def conv_scaled(packed, words_t, channels, stride, padding, alpha, k_map):
    """As conv_acc with the fused epilogue: float32 out [N, O, Ho, Wo] = acc * alpha[o] [O] * k_map [N, Ho, Wo]."""
    N, H, W, Wd = packed.shape
    kh, kwWd, _ = words_t.shape
    O = alpha.shape[0]
    top, bottom, left, right = padding
    Ho = (H + top + bottom - kh) // stride + 1
    Wo = (W + left + right - kwWd // Wd) // stride + 1
    out = np.empty((N, O, Ho, Wo), dtype=np.float32)                              # [N, O, Ho, Wo]
    for row in prange(N * Ho):
        n = row // Ho
        ho = row % Ho
        acc = np.empty((O, Wo), dtype=np.int32)                                   # [O, Wo]
        _accumulate_row(packed, words_t, channels, stride, padding, n, ho, acc)
        for o in range(O):
            scale = alpha[o]
            for wo in range(Wo):
                out[n, o, ho, wo] = np.float32(acc[o, wo]) * scale * k_map[n, ho, wo]
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
    O = weight.words.shape[0]
    return conv_acc(image, weight.words_t, O, weight.features, 1, (0, 0, 0, 0))[:, :, 0, 0]  # [N, O]


def linear_acc_ref(packed: np.ndarray, words: np.ndarray, features: int) -> np.ndarray:
    """NumPy twin of linear_acc: packed [N, Wd], words [O, Wd] -> int32 [N, O]."""
    differ = np.bitwise_count(packed[:, None, :] ^ words[None, :, :]).sum(axis=-1, dtype=np.int64)  # [N, O]
    return (features - 2 * differ).astype(np.int32)
