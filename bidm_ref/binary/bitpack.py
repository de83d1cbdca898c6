"""Bit packing of signs into uint64 words, and the packed weights of a binary conv / linear layer.

Dimensions: N batch, C channels (I features for a linear layer), O output channels, H, W spatial,
kh, kw kernel, Wd = ceil(C / 64) packed words per position.

Convention (README, "Conventions": bit packing), for a value u = x + tau (tau the layer's threshold, 0 for weights):
    bit  = 1  if u is -1 after sign, i.e. not (u >= 0)      (sign(0) = +1, so 0 and -0.0 give bit 0;
                                                              NaN gives bit 1, as `quantizers.sign`)
    channel c -> word c // 64, bit c % 64 (LSB-first): channel 0 negative alone -> word value 1,
    channel 65 negative alone -> word 1 has value 2; bits of channels >= C ("pad bits") are 0.
Layouts: activations NHWC-packed `[N, H, W, Wd]`; conv weights `[O, kh, kw, Wd]` (the canonical, exported
layout); linear weights and inputs `[O, Wd]`, `[N, Wd]`. The conv kernel reads the weights transposed,
`[kh, kw*Wd, Ot]` (`transpose_conv_words`: Ot = O rounded up to whole register tiles of TILE_WORDS outputs,
with zero words), so the words of consecutive output channels are adjacent (one vector load per tile).

Three packers, written independently so tests can compare them:
    pack_signs(u)                  NumPy, channels on the last axis; used for weights and as a reference
    pack_activations(x, tau)       Numba, parallel over the N images of pack_image (which the packed layers call
                                   with the mean |x| they need; layer_kernels.py)
    pack_activations_ref(x, tau)   NumPy twin of pack_activations, one channel at a time
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from .popcount import TILE_WORDS

WORD_BITS = 64
_BIT_VALUES = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)               # [64] 1, 2, 4, ..., 2^63


def num_words(channels: int) -> int:
    """Wd = ceil(channels / 64), the packed words per position."""
    return -(-channels // WORD_BITS)


def pad_bit_mask(channels: int) -> np.uint64:
    """The bits of the last word that hold real channels (all 64 when channels is a multiple of 64)."""
    used = channels - (num_words(channels) - 1) * WORD_BITS
    return np.uint64((1 << used) - 1)


def pack_signs(u: np.ndarray) -> np.ndarray:
    """u [..., C] (channels last) -> words [..., Wd] uint64, bit 1 where not (u >= 0)."""
    C = u.shape[-1]
    Wd = num_words(C)
    bits = np.zeros((*u.shape[:-1], Wd * WORD_BITS), dtype=np.uint64)            # [..., Wd*64]
    bits[..., :C] = ~(u >= 0)
    grouped = bits.reshape(*u.shape[:-1], Wd, WORD_BITS)                          # [..., Wd, 64]
    return (grouped * _BIT_VALUES).sum(axis=-1, dtype=np.uint64)                  # [..., Wd] disjoint bits: sum == or


def unpack_signs(words: np.ndarray, channels: int, dtype: np.dtype = np.float32) -> np.ndarray:
    """words [..., Wd] -> signs [..., C] in {-1, +1} (bit 1 -> -1); the inverse of pack_signs after sign."""
    if words.shape[-1] != num_words(channels):
        raise ValueError(
            f"unpack_signs: {words.shape[-1]} words do not match {channels} channels: pass the packed channel count"
        )
    bits = (words[..., :, None] >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)  # [..., Wd, 64]
    bits = bits.reshape(*words.shape[:-1], -1)[..., :channels]                    # [..., C]
    return (1 - 2 * bits.astype(np.int8)).astype(dtype)                           # [..., C]


@njit(cache=True)
def pack_image(x, tau, n, packed, a_map):
    """Image n of x [N, C, H, W]: packed[n] [H, W, Wd] = bits of sign(x[n] + tau) and a_map[n] [H, W] =
    float(sum_c |x[n, c]|) / C, summed over c in order (NumPy's mean over the channel axis). Each channel plane
    is read once, front to back (2-3.5x faster than gathering the channels of one image row at a time)."""
    _, C, H, W = x.shape
    Wd = packed.shape[3]
    P = H * W
    planes = x.reshape(x.shape[0], C, P)                                          # [N, C, P] view
    words = packed.reshape(packed.shape[0], P, Wd)                                # [N, P, Wd] view
    word = np.empty(P, dtype=np.uint64)                                           # [P] word d of each pixel
    total = np.zeros(P, dtype=x.dtype)                                            # [P] sum_c |x|
    for d in range(Wd):
        word[:] = 0
        for c in range(d * 64, min(C, d * 64 + 64)):
            shift = np.uint64(c - d * 64)
            t = tau[c]
            for p in range(P):                                                    # branch-free: signs are random
                v = planes[n, c, p]
                word[p] |= np.uint64(not (v + t >= 0)) << shift
                total[p] += abs(v)
        words[n, :, d] = word
    a_map[n] = (total / x.dtype.type(C)).reshape(H, W)


@njit(parallel=True, cache=True)
def pack_activations(x, tau):
    """x [N, C, H, W] float (C-contiguous), tau [C] same dtype -> [N, H, W, Wd] uint64 of sign(x + tau)."""
    N, C, H, W = x.shape
    packed = np.empty((N, H, W, (C + 63) // 64), dtype=np.uint64)                 # [N, H, W, Wd]
    a_map = np.empty((N, H, W), dtype=x.dtype)                                    # [N, H, W] (not returned)
    for n in prange(N):
        pack_image(x, tau, n, packed, a_map)
    return packed


def pack_activations_ref(x: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """NumPy twin of pack_activations: x [N, C, H, W], tau [C] -> [N, H, W, Wd], one channel at a time."""
    N, C, H, W = x.shape
    packed = np.zeros((N, H, W, num_words(C)), dtype=np.uint64)                   # [N, H, W, Wd]
    for c in range(C):
        negative = ~(x[:, c] + tau[c] >= 0)                                       # [N, H, W]
        packed[..., c // WORD_BITS] |= negative.astype(np.uint64) << np.uint64(c % WORD_BITS)
    return packed


def transpose_conv_words(words: np.ndarray) -> np.ndarray:
    """Canonical conv words [O, kh, kw, Wd] -> the kernel's layout [kh, kw*Wd, Ot] (row q = j*Wd + d), with zero
    words for the outputs O..Ot-1 that fill the last register tile (Ot = O rounded up to TILE_WORDS)."""
    O, kh, kw, Wd = words.shape
    O_tiles = -(-O // TILE_WORDS) * TILE_WORDS
    words_t = np.zeros((kh, kw * Wd, O_tiles), dtype=np.uint64)                   # [kh, kw*Wd, Ot]
    words_t[:, :, :O] = words.transpose(1, 2, 3, 0).reshape(kh, kw * Wd, O)
    return words_t


def _check_words(what: str, words: np.ndarray, channels: int, alpha: np.ndarray) -> None:
    """One-line errors for packed words that cannot be what they claim (wrong dtype, count, pad bits, scale)."""
    if channels < 1:
        raise ValueError(f"{what}: channels must be >= 1, got {channels}")
    if words.dtype != np.uint64:
        raise ValueError(f"{what}: words must be uint64, got {words.dtype}: pack them with pack_signs")
    if words.shape[-1] != num_words(channels):
        need = num_words(channels)
        raise ValueError(f"{what}: {words.shape[-1]} words per row do not fit {channels} channels (need {need})")
    if np.any(words[..., -1] & ~pad_bit_mask(channels)):
        raise ValueError(f"{what}: pad bits beyond channel {channels} are set: corrupt, or packed for more channels")
    if alpha.shape != (words.shape[0],) or alpha.dtype != np.float32:
        raise ValueError(f"{what}: alpha must be float32 [{words.shape[0]}], got {alpha.dtype} {list(alpha.shape)}")
    if not np.all(np.isfinite(alpha)):
        raise ValueError(f"{what}: alpha holds NaN or inf: the float weights it was computed from are broken")


@dataclass(frozen=True)
class PackedConvWeight:
    """sign(W) of a conv weight [O, C, kh, kw] packed as words [O, kh, kw, Wd], with its scale alpha [O].

    `words_t` [kh, kw*Wd, Ot] is derived (transpose_conv_words) for the kernel; store `words`, `channels`
    and `alpha` to export a layer and rebuild it with `PackedConvWeight(words, channels, alpha)`.
    """

    words: np.ndarray                                                             # [O, kh, kw, Wd] uint64
    channels: int                                                                 # C
    alpha: np.ndarray                                                             # [O] float32
    words_t: np.ndarray = field(init=False, repr=False, compare=False)            # [kh, kw*Wd, Ot] uint64

    def __post_init__(self) -> None:
        if self.words.ndim != 4:
            raise ValueError(f"PackedConvWeight: words must be [O, kh, kw, Wd], got shape {list(self.words.shape)}")
        _check_words("PackedConvWeight", self.words, self.channels, self.alpha)
        object.__setattr__(self, "words_t", transpose_conv_words(self.words))


@dataclass(frozen=True)
class PackedLinearWeight:
    """sign(W) of a linear weight [O, I] packed as words [O, Wd], with its scale alpha [O].

    `words_t` [1, Wd, Ot] is derived: the layout of a 1x1 conv, which is how the kernel runs a linear layer.
    """

    words: np.ndarray                                                             # [O, Wd] uint64
    features: int                                                                 # I
    alpha: np.ndarray                                                             # [O] float32
    words_t: np.ndarray = field(init=False, repr=False, compare=False)            # [1, Wd, Ot] uint64

    def __post_init__(self) -> None:
        if self.words.ndim != 2:
            raise ValueError(f"PackedLinearWeight: words must be [O, Wd], got shape {list(self.words.shape)}")
        _check_words("PackedLinearWeight", self.words, self.features, self.alpha)
        object.__setattr__(self, "words_t", transpose_conv_words(self.words[:, None, None, :]))


def pack_conv_weight(weight: np.ndarray, alpha: np.ndarray) -> PackedConvWeight:
    """weight [O, C, kh, kw] (OIHW) and alpha [O] -> PackedConvWeight (sign(0) = +1)."""
    if weight.ndim != 4:
        raise ValueError(f"pack_conv_weight: weight must be OIHW [O, C, kh, kw], got shape {list(weight.shape)}")
    words = pack_signs(weight.transpose(0, 2, 3, 1))                              # [O, kh, kw, Wd]
    return PackedConvWeight(words, weight.shape[1], np.asarray(alpha, dtype=np.float32).reshape(-1))


def pack_linear_weight(weight: np.ndarray, alpha: np.ndarray) -> PackedLinearWeight:
    """weight [O, I] and alpha [O] -> PackedLinearWeight (sign(0) = +1)."""
    if weight.ndim != 2:
        raise ValueError(f"pack_linear_weight: weight must be [O, I], got shape {list(weight.shape)}")
    words = pack_signs(weight)                                                    # [O, Wd]
    return PackedLinearWeight(words, weight.shape[1], np.asarray(alpha, dtype=np.float32).reshape(-1))
