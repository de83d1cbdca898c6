"""Bit packing: bit order on hand-made words, sign(0) = +1, pad bits 0, round trips, the three packers agree.

Dimensions: N batch, C channels, H, W spatial, O output channels, Wd = ceil(C / 64) words.
Expected words are written by hand or from closed forms (2^r - 1), never produced by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidm_ref.binary.bitpack import (
    PackedConvWeight,
    PackedLinearWeight,
    pack_activations,
    pack_activations_ref,
    pack_conv_weight,
    pack_linear_weight,
    pack_signs,
    unpack_signs,
)
from bidm_ref.binary.popcount import TILE_WORDS
from bidm_ref.binary.quantizers import sign

PACKERS = {
    "numba": pack_activations,
    "numpy_twin": pack_activations_ref,
    "pack_signs": lambda x, tau: pack_signs((x + tau[:, None, None]).transpose(0, 2, 3, 1)),
}


def column(values: list[float], dtype=np.float32) -> np.ndarray:
    """One pixel holding `values` as its channels: [1, C, 1, 1]."""
    return np.array(values, dtype=dtype).reshape(1, -1, 1, 1)


def one_negative(channels: int, negative: int) -> np.ndarray:
    """[1, C, 1, 1] of +1 with channel `negative` set to -1."""
    values = [1.0] * channels
    values[negative] = -1.0
    return column(values)


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize(
    "channels, negative, words",
    [
        (1, 0, [1]),
        (5, 0, [1]),
        (64, 63, [2**63]),
        (66, 65, [0, 2]),
        (70, 64, [0, 1]),
        (130, 128, [0, 0, 1]),
        (129, 3, [8, 0, 0]),
    ],
)
def test_bit_order_hand_examples(packer: str, channels: int, negative: int, words: list[int]) -> None:
    x = one_negative(channels, negative)
    packed = PACKERS[packer](x, np.zeros(channels, dtype=np.float32))             # [1, 1, 1, Wd]
    assert packed.dtype == np.uint64
    assert packed.reshape(-1).tolist() == words


@pytest.mark.parametrize("packer", PACKERS)
def test_zero_is_plus_one_and_threshold_is_added(packer: str) -> None:
    # channels:      0     1     2       3      4 (x + tau = 0)   5 (0.5 - 1 < 0)   6 (nan)
    x = column([0.0, -0.0, -1e-30, 1e-30, 1.0, 0.5, float("nan")])
    tau = np.array([0, 0, 0, 0, -1.0, -1.0, 0], dtype=np.float32)
    packed = PACKERS[packer](x, tau)
    assert packed.reshape(-1).tolist() == [0b1100100]                            # channels 2, 5, 6 are -1


@pytest.mark.parametrize("packer", PACKERS)
@given(channels=st.integers(1, 300), width=st.integers(1, 5))
def test_pad_bits_are_zero(packer: str, channels: int, width: int) -> None:
    x = -np.ones((2, channels, 1, width), dtype=np.float32)                       # every channel -1
    packed = PACKERS[packer](x, np.zeros(channels, dtype=np.float32))             # [2, 1, width, Wd]
    full, used = divmod(channels, 64)
    expected = [2**64 - 1] * full + ([2**used - 1] if used else [])
    assert packed.shape == (2, 1, width, len(expected))
    for word in packed.reshape(-1, len(expected)).tolist():
        assert word == expected


@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 200), st.integers(1, 6), st.integers(1, 6)),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_packers_agree_and_round_trip(seed: int, shape: tuple[int, int, int, int], dtype: type) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(dtype)                                  # [N, C, H, W] 1/5 zeros
    x[rng.random(shape) < 0.1] = -0.0
    tau = rng.integers(-1, 2, shape[1]).astype(dtype)                             # [C] x + tau hits 0 often
    packed = pack_activations(x, tau)                                             # [N, H, W, Wd]
    assert np.array_equal(packed, pack_activations_ref(x, tau))
    assert np.array_equal(packed, PACKERS["pack_signs"](x, tau))
    expected = sign(x + tau[:, None, None]).transpose(0, 2, 3, 1)                 # [N, H, W, C]
    assert np.array_equal(unpack_signs(packed, shape[1]), expected)


def test_unpack_hand_example() -> None:
    words = np.array([[0b101], [2**63]], dtype=np.uint64)                         # [2, 1]
    assert unpack_signs(words, 3).tolist() == [[-1, 1, -1], [1, 1, 1]]
    assert unpack_signs(words, 64)[1, 63] == -1
    with pytest.raises(ValueError, match="do not match"):
        unpack_signs(words, 65)


def test_conv_weight_layout() -> None:
    weight = np.ones((2, 66, 1, 3), dtype=np.float32)                             # [O, C, kh, kw]
    weight[1, 65, 0, 2] = -0.5
    weight[0, 0, 0, 0] = 0.0                                                      # sign(0) = +1: no bit
    packed = pack_conv_weight(weight, np.ones(2))
    expected = np.zeros((2, 1, 3, 2), dtype=np.uint64)                            # [O, kh, kw, Wd]
    expected[1, 0, 2, 1] = 2                                                      # channel 65 -> word 1, bit 1
    assert np.array_equal(packed.words, expected)
    assert packed.channels == 66 and packed.alpha.dtype == np.float32
    assert packed.words_t.shape == (1, 3 * 2, TILE_WORDS)                         # [kh, kw*Wd, Ot]
    assert packed.words_t[0, 2 * 2 + 1, 1] == 2                                   # row q = j*Wd + d
    assert packed.words_t.sum() == 2                                              # the outputs O..Ot-1: zero words


def test_linear_weight_layout() -> None:
    weight = np.ones((3, 65), dtype=np.float32)                                   # [O, I]
    weight[2, 64] = -1.0
    packed = pack_linear_weight(weight, np.ones(3))
    assert packed.words.tolist() == [[0, 0], [0, 0], [0, 1]]
    assert packed.words_t.shape == (1, 2, TILE_WORDS) and packed.words_t[0, 1, 2] == 1  # [1, Wd, Ot]
    assert packed.words_t.sum() == 1


@pytest.mark.parametrize(
    "words, channels, alpha, message",
    [
        (np.zeros((2, 3, 3, 1), dtype=np.int64), 5, np.ones(2, np.float32), "uint64"),
        (np.zeros((2, 3, 3, 1), dtype=np.uint64), 65, np.ones(2, np.float32), "do not fit"),
        (np.full((2, 3, 3, 1), 2**5, dtype=np.uint64), 5, np.ones(2, np.float32), "pad bits"),
        (np.zeros((2, 3, 3, 1), dtype=np.uint64), 5, np.ones(3, np.float32), "alpha"),
        (np.zeros((2, 3, 3, 1), dtype=np.uint64), 5, np.array([1, np.nan], np.float32), "NaN"),
        (np.zeros((2, 3, 1), dtype=np.uint64), 5, np.ones(2, np.float32), r"\[O, kh, kw, Wd\]"),
    ],
)
def test_packed_conv_weight_rejects_bad_input(
    words: np.ndarray, channels: int, alpha: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PackedConvWeight(words, channels, alpha)


def test_packed_linear_weight_rejects_pad_bits() -> None:
    with pytest.raises(ValueError, match="pad bits"):
        PackedLinearWeight(np.full((1, 1), 2**63, dtype=np.uint64), 63, np.ones(1, np.float32))
