"""Popcount and the packed binary conv / linear kernels against independent float64 references.

Dimensions: N batch, C input channels (I features), O output channels, H, W input and Ho, Wo output
spatial, Wd = ceil(C / 64) words.
References: the float64 conv (nn.conv.conv2d, im2col + BLAS; and the nested-loop definition in
tests/reference_ops.py) of the +-1 tensors sign(x + tau), sign(W) with zero padding: integer sums, so the
int32 accumulators must equal them EXACTLY. Scaled outputs: float32(acc) * alpha * K takes two float32
roundings, so they match the float64 product of the same float32 factors to rtol 2^-22, and the NumPy twins
(same products, same order) to a few float32 ulps. Inputs hold exact zeros on purpose (sign(0) = +1).
No timing is asserted; Numba compile time is paid once per signature (cache=True keeps it for reruns).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from numba import njit

from bidm_ref.binary.bitpack import pack_activations, pack_conv_weight, pack_linear_weight, pack_signs
from bidm_ref.binary.kernels import (
    conv_acc,
    conv_acc_ref,
    conv_scaled,
    conv_scaled_ref,
    linear_acc,
    linear_acc_ref,
)
from bidm_ref.binary.layer_kernels import (
    layer_kernel,
    k_map_ref,
    packed_conv_layer,
    packed_conv_layer_ref,
    packed_linear_layer,
    packed_linear_layer_ref,
)
from bidm_ref.binary.popcount import TILE_WORDS, make_tile_popcount, popcount64_swar
from bidm_ref.nn.conv import as_padding, conv2d
from reference_ops import conv_nested_loops, pm1

FLOAT32_ROUNDINGS = 2.0**-22            # two float32 roundings (each <= 2^-24 relative), with margin
TWIN_ULPS = 4 * np.finfo(np.float32).eps

CHANNELS = st.one_of(st.sampled_from([1, 31, 32, 33, 63, 64, 65, 127, 128, 129]), st.integers(1, 300))
PADDINGS = st.sampled_from([0, 1, (0, 1, 0, 1)])


@njit(cache=True)
def popcounts_swar(words):
    """popcount64_swar of each word: [M] uint64 -> [M] int64."""
    out = np.empty(words.size, dtype=np.int64)
    for m in range(words.size):
        out[m] = popcount64_swar(words[m])
    return out


EDGE_WORDS = [0, 1, 2, 3, 2**63, 2**64 - 1, 2**63 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA,
              0x8000000000000001, 0xFF, 0x0123456789ABCDEF, 0xF0F0F0F0F0F0F0F0]


@given(extra=st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_swar_popcount_matches_bit_count(extra: list[int]) -> None:
    values = EDGE_WORDS + extra
    expected = [bin(v).count("1") for v in values]
    assert popcounts_swar(np.array(values, dtype=np.uint64)).tolist() == expected


def signed_ints(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Values in {-2, -1, 0, 1, 2} (1/5 exact zeros, some of them -0.0) in `dtype`."""
    values = rng.integers(-2, 3, shape).astype(dtype)
    values[rng.random(shape) < 0.1] = -0.0
    return values


def conv_inputs(seed: int, N: int, C: int, O: int, H: int, W: int, k: int, dtype: type = np.float32):
    """x [N, C, H, W], tau [C] (x + tau is often exactly 0), weight [O, C, k, k] with zeros, alpha [O]."""
    rng = np.random.default_rng(seed)
    x = signed_ints(rng, (N, C, H, W), dtype)
    tau = rng.integers(-1, 2, C).astype(dtype)
    weight = signed_ints(rng, (O, C, k, k))
    alpha = (np.abs(weight).mean(axis=(1, 2, 3)) + 0.25).astype(np.float32)      # [O] > 0
    return x, tau, weight, alpha


def pm1_conv(x: np.ndarray, tau: np.ndarray, weight: np.ndarray, stride: int, padding) -> np.ndarray:
    """float64 conv2d(sign(x + tau), sign(W)) with zero padding: [N, O, Ho, Wo] integers."""
    return conv2d(pm1(x + tau[:, None, None]), pm1(weight), None, stride, padding)[0]


def fits(H: int, W: int, k: int, padding) -> bool:
    top, bottom, left, right = as_padding(padding)
    return H + top + bottom >= k and W + left + right >= k


@given(
    seed=st.integers(0, 2**32 - 1),
    N=st.integers(1, 3),
    C=CHANNELS,
    O=st.one_of(st.integers(1, 9), st.sampled_from([TILE_WORDS - 1, TILE_WORDS, TILE_WORDS + 1, 2 * TILE_WORDS + 3])),
    H=st.integers(1, 9),
    W=st.integers(1, 14),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=PADDINGS,
)
def test_conv_equals_float64_pm1_conv(seed, N, C, O, H, W, k, stride, padding) -> None:
    assume(fits(H, W, k, padding))
    x, tau, weight, alpha = conv_inputs(seed, N, C, O, H, W, k)
    expected = pm1_conv(x, tau, weight, stride, padding)                          # [N, O, Ho, Wo]
    packed = pack_activations(x, tau)                                             # [N, H, W, Wd]
    packed_weight = pack_conv_weight(weight, alpha)
    acc = conv_acc(packed, packed_weight.words_t, O, C, stride, as_padding(padding))
    assert acc.dtype == np.int32 and acc.shape == expected.shape
    assert np.array_equal(acc, expected)
    assert np.array_equal(conv_acc_ref(packed, packed_weight.words, C, stride, padding), expected)

    k_map = np.random.default_rng(seed + 1).uniform(0.5, 2.0, (N, *expected.shape[2:]))           # [N, Ho, Wo]
    k_map = k_map.astype(np.float32)
    scaled = conv_scaled(packed, packed_weight.words_t, C, stride, as_padding(padding), packed_weight.alpha, k_map)
    assert scaled.dtype == np.float32
    exact = expected * packed_weight.alpha.astype(np.float64)[:, None, None] * k_map[:, None].astype(np.float64)
    np.testing.assert_allclose(scaled, exact, rtol=FLOAT32_ROUNDINGS, atol=0)
    twin = conv_scaled_ref(packed, packed_weight.words, C, stride, padding, packed_weight.alpha, k_map)
    np.testing.assert_allclose(scaled, twin, rtol=TWIN_ULPS, atol=0)


def test_downsample_padding_against_the_definition() -> None:
    """ddim's Downsample: pad (0, 1, 0, 1), 3x3 stride 2, odd and even sizes; the nested-loop conv as reference."""
    for H, W in [(6, 6), (7, 5)]:
        x, tau, weight, alpha = conv_inputs(3, 2, 70, 4, H, W, 3)
        expected = conv_nested_loops(pm1(x + tau[:, None, None]), pm1(weight), None, 2, (0, 1, 0, 1))
        packed_weight = pack_conv_weight(weight, alpha)
        acc = conv_acc(pack_activations(x, tau), packed_weight.words_t, 4, 70, 2, (0, 1, 0, 1))
        assert np.array_equal(acc, expected)


def layer_extras(seed: int, out_shape: tuple[int, ...], k: int):
    """k_weight [k, k], k_bias, s and the raw shortcut sc [N, O, Ho, Wo] of a packed conv layer, float32."""
    rng = np.random.default_rng(seed + 2)
    k_weight = rng.uniform(-0.5, 1.0, (k, k)).astype(np.float32)                 # [k, k]
    k_bias, s = np.float32(rng.uniform(-0.5, 0.5)), np.float32(rng.uniform(-1, 1))
    return k_weight, k_bias, s, rng.standard_normal(out_shape).astype(np.float32)


@given(
    seed=st.integers(0, 2**32 - 1),
    N=st.integers(1, 3),
    C=CHANNELS,
    O=st.sampled_from([5, TILE_WORDS + 3]),
    H=st.integers(1, 9),
    W=st.integers(1, 12),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=PADDINGS,
)
def test_packed_conv_layer_is_bidm_conv(seed, N, C, O, H, W, k, stride, padding) -> None:
    """packed_conv_layer = conv2d(sign(x + tau), alpha sign(W)) * K + s * sc with K = conv2d(mean_c |x|, k_weight)
    + k_bias (docs/METHOD.md §3), against float64 convs of the same float32 factors; its NumPy twin to a few ulps;
    the serial and parallel compilations byte for byte."""
    assume(fits(H, W, k, padding))
    x, tau, weight, alpha = conv_inputs(seed, N, C, O, H, W, k)
    z = pm1_conv(x, tau, weight, stride, padding) * alpha.astype(np.float64)[:, None, None]  # [N, O, Ho, Wo]
    k_weight, k_bias, s, sc = layer_extras(seed, z.shape, k)
    a_map = np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True)             # [N, 1, H, W]
    k_map = conv_nested_loops(a_map, k_weight[None, None].astype(np.float64), None, stride, padding) + k_bias
    expected = z * k_map + np.float64(s) * sc                                     # [N, O, Ho, Wo]
    packed_weight = pack_conv_weight(weight, alpha)
    out = packed_conv_layer(x, tau, packed_weight, stride, padding, k_weight, k_bias, s, sc)
    assert out.dtype == np.float32 and out.shape == expected.shape
    # float32 roundings of A, K (a sum of k*k products), the epilogue's two products and the final sum
    scale = np.abs(z) * np.abs(k_map).max() + np.abs(z) * np.abs(k_weight).sum() * a_map.max() + np.abs(s * sc)
    assert np.all(np.abs(out - expected) <= 16 * np.finfo(np.float32).eps * (scale + np.abs(k_bias) * np.abs(z)))
    twin = packed_conv_layer_ref(x, tau, packed_weight, stride, padding, k_weight, k_bias, s, sc)
    np.testing.assert_allclose(out, twin, rtol=TWIN_ULPS, atol=TWIN_ULPS * np.abs(twin).max())
    arrays = [np.empty((N, H, W, packed_weight.words.shape[3]), np.uint64), np.empty((N, H, W), np.float32)]
    outs = []
    for kernel in layer_kernel.compilations:
        outs.append(np.empty(out.shape, np.float32))
        kernel(x, tau, packed_weight.words_t, C, stride, as_padding(padding), packed_weight.alpha, k_weight, k_bias,
               s, sc, *arrays, outs[-1])
    assert outs[0].tobytes() == outs[1].tobytes()
    without = packed_conv_layer(x, tau, packed_weight, stride, padding, k_weight, k_bias, s, None)  # y = z * K
    np.testing.assert_allclose(without, out - s * sc, rtol=TWIN_ULPS, atol=4 * TWIN_ULPS * np.abs(out).max())
    twin = packed_conv_layer_ref(x, tau, packed_weight, stride, padding, k_weight, k_bias, s, None)
    np.testing.assert_allclose(without, twin, rtol=TWIN_ULPS, atol=TWIN_ULPS * np.abs(twin).max())


@given(seed=st.integers(0, 2**32 - 1), C=CHANNELS, H=st.integers(1, 9), stride=st.sampled_from([1, 2]))
def test_k_map_twin_sums_valid_taps_as_the_zero_padded_conv(seed, C, H, stride) -> None:
    """k_map_ref (the kernel's K, valid taps only) = the float64 conv of mean_c |x| with zero padding."""
    x, _, _, _ = conv_inputs(seed, 2, C, 1, H, H, 3)
    k_weight, k_bias, _, _ = layer_extras(seed, (1,), 3)
    a_map = np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True)             # [N, 1, H, W]
    expected = conv_nested_loops(a_map, k_weight[None, None].astype(np.float64), None, stride, 1)[:, 0] + k_bias
    got = k_map_ref(x, k_weight, k_bias, stride, 1, expected.shape[1:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * (np.abs(expected).max() + 1))


@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 3), I=CHANNELS, O=st.integers(1, 70))
def test_linear_equals_float64_pm1_matmul(seed, N, I, O) -> None:
    rng = np.random.default_rng(seed)
    x, weight = signed_ints(rng, (N, I)), signed_ints(rng, (O, I))                # [N, I], [O, I]
    tau = rng.integers(-1, 2, I).astype(np.float32)                               # [I]
    alpha = rng.uniform(0.1, 1.0, O).astype(np.float32)                           # [O]
    expected = pm1(x + tau) @ pm1(weight).T                                       # [N, O] float64
    packed_weight = pack_linear_weight(weight, alpha)
    packed = pack_signs(x + tau)                                                  # [N, Wd]
    acc = linear_acc(packed, packed_weight)
    assert acc.dtype == np.int32 and np.array_equal(acc, expected)
    assert np.array_equal(linear_acc_ref(packed, packed_weight.words, I), expected)
    out = packed_linear_layer(x, tau, packed_weight)
    np.testing.assert_allclose(out, expected * alpha.astype(np.float64), rtol=FLOAT32_ROUNDINGS, atol=0)
    np.testing.assert_allclose(out, packed_linear_layer_ref(x, tau, packed_weight), rtol=TWIN_ULPS, atol=0)


def test_bad_inputs_raise_one_line_errors() -> None:
    x, tau, weight, alpha = conv_inputs(0, 1, 8, 2, 4, 4, 3)
    packed_weight = pack_conv_weight(weight, alpha)
    k_weight, k_bias, s, sc = layer_extras(0, (1, 2, 4, 4), 3)

    def layer(x=x, tau=tau, stride=1, padding=1, k_weight=k_weight, sc=sc):
        return packed_conv_layer(x, tau, packed_weight, stride, padding, k_weight, k_bias, s, sc)

    with pytest.raises(ValueError, match=r"not float32 NCHW \[N, 8, H, W\]"):
        layer(x[:, :7])
    with pytest.raises(ValueError, match="stride must be >= 1"):
        layer(stride=0)
    with pytest.raises(ValueError, match=r"not float32 NCHW"):
        layer(x[0])
    with pytest.raises(ValueError, match="does not fit the kernel"):
        layer(x[:, :, :1, :1], padding=0)
    with pytest.raises(ValueError, match="k_weight"):
        layer(k_weight=np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="tau"):
        layer(tau=tau[:5])
    with pytest.raises(ValueError, match="not float32"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match="shortcut"):
        layer(sc=sc[:, :1])
    with pytest.raises(ValueError, match=r"not \[N, 8\]"):
        packed_linear_layer(np.ones((2, 9), np.float32), None, pack_linear_weight(np.ones((3, 8)), np.ones(3)))


def test_tile_popcount_needs_a_power_of_two_of_vectors() -> None:
    with pytest.raises(ValueError, match="is not a power of two"):
        make_tile_popcount(3)
