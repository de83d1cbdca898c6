"""fastexp.fast_exp and the fused kernels on it (SiLU forward, softmax over rows and over columns): NumPy twins,
accuracy, special values."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidm_ref.nn.activation import SiLU, silu_forward_ref
from bidm_ref.nn.attention import (COLUMNS, row_max, softmax, softmax_backward, softmax_backward_ref, softmax_columns,
                                   softmax_columns_kernel, softmax_columns_ref, softmax_ref)
from bidm_ref.nn.fastexp import SERIAL_ELEMENTS, fast_exp, fast_exp_ref


@numba.njit(error_model="numpy")
def exp_kernel(x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = fast_exp(x[i])


def kernel_exp(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    exp_kernel(x, y)
    return y


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, 89.5, -86.5, -87.0, -100.0, 1e-30],
                    np.float32)


def test_fast_exp_kernel_gives_the_twins_bytes_on_a_dense_grid_and_special_values():
    x = np.concatenate([np.linspace(-95, 95, 400_001, dtype=np.float32), SPECIALS])
    assert np.array_equal(kernel_exp(x).view(np.int32), fast_exp_ref(x).view(np.int32))


def test_fast_exp_is_within_one_ulp_of_float64_exp():
    x = np.linspace(-86.5, 88.72, 2_000_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))                                      # [M]
    ulps = np.abs(kernel_exp(x) - exact) / np.spacing(exact.astype(np.float32))
    assert ulps.max() <= 1.0


def test_fast_exp_special_values():
    y = kernel_exp(SPECIALS)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == np.float32(np.exp(np.float32(-86.5)))
    assert y[3] == y[4] == 1.0
    assert np.isfinite(y[5]) and y[6] == y[7] == np.inf                      # float32 overflows between the two
    assert abs(y[5] - np.exp(np.float64(SPECIALS[5]))) <= np.spacing(y[5])
    assert 0 < y[10] == y[8] < 3e-38                                          # clamped below -86.5, never 0


def test_fast_exp_on_float64_is_libm():
    x = np.linspace(-700, 700, 10_001)
    np.testing.assert_array_equal(kernel_exp(x), [math.exp(v) for v in x])
    np.testing.assert_array_equal(fast_exp_ref(x), kernel_exp(x))


@pytest.mark.parametrize("size", [10_007, SERIAL_ELEMENTS + 4])                   # the serial and the threaded kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_forward_kernel_gives_the_twins_bytes(dtype, size):
    x = np.concatenate([np.random.default_rng(0).standard_normal(size) * 30, [-100, 100, 0]]).astype(dtype)
    y, (_, s) = SiLU().forward(x.reshape(1, -1))
    y_ref, s_ref = silu_forward_ref(x)
    assert y.dtype == s.dtype == dtype
    np.testing.assert_array_equal(y.reshape(-1), y_ref)
    np.testing.assert_array_equal(s.reshape(-1), s_ref)
    assert 0 <= s.reshape(-1)[-3] < 1e-43 and s.reshape(-1)[-2] == 1          # sigmoid(-100), sigmoid(100)


def test_silu_forward_takes_a_strided_input():
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    np.testing.assert_array_equal(SiLU().forward(x[:, ::2])[0], silu_forward_ref(np.ascontiguousarray(x[:, ::2]))[0])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), scale=st.sampled_from([0.1, 3.0, 60.0]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
def test_softmax_kernel_gives_the_twins_bytes(rows, cols, scale, dtype, seed):
    x = (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(dtype)
    expected = softmax_ref(x)
    y = softmax(x.copy())
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)


@settings(max_examples=40, deadline=None)
@given(images=st.integers(1, 3), rows=st.integers(1, 20), cols=st.integers(1, 2 * COLUMNS + 9),
       scale=st.sampled_from([0.1, 3.0, 60.0]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_softmax_columns_gives_the_twins_bytes_and_the_row_softmax_of_the_transpose(images, rows, cols, scale, dtype,
                                                                                  seed):
    """Columns split into tasks of COLUMNS (widths below, at and above it): the twin's bytes from both compilations,
    the row softmax of the transposed array up to rounding (the sums run in another order), columns summing to 1."""
    x = (np.random.default_rng(seed).standard_normal((images, rows, cols)) * scale).astype(dtype)  # [N, J, I]
    expected = softmax_columns_ref(x, 0.7)
    for kernel in softmax_columns_kernel.compilations:
        y = x.copy()
        kernel(y, dtype(0.7))
        np.testing.assert_array_equal(y, expected)
    y = softmax_columns(x.copy(), 0.7)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, softmax(np.ascontiguousarray(x.transpose(0, 2, 1)), 0.7).transpose(0, 2, 1),
                               rtol=10 * tol, atol=tol)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=10 * tol)


def test_softmax_columns_refuses_what_it_cannot_update_in_place():
    with pytest.raises(ValueError, match="C-contiguous"):
        softmax_columns(np.zeros((2, 3, 4), dtype=np.float32).transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"\[N, J, I\]"):
        softmax_columns(np.zeros((3, 4), dtype=np.float32))


@numba.njit
def row_max_kernel(a):  # pragma: no cover - compiled
    return row_max(a)


@given(values=st.lists(st.sampled_from([-np.inf, -3.5, -0.0, 0.0, 1.25, 7.0, np.inf]) | st.floats(-1e30, 1e30),
                       min_size=1, max_size=40),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_row_max_is_numpys_max_for_any_length(values, dtype):
    """The 8 partial maxima and the tail give NumPy's max (ties, infinities, lengths below, at and above 8)."""
    a = np.array(values, dtype=dtype)
    assert row_max_kernel(a) == a.max()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_softmax_backward_kernel_gives_the_twins_bytes(rows, cols, dtype, seed):
    rng = np.random.default_rng(seed)
    y = softmax(rng.standard_normal((rows, cols)).astype(dtype) * 3)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    expected = softmax_backward_ref(dy, y)
    np.testing.assert_array_equal(softmax_backward(dy.copy(), y), expected)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_a_scaled_softmax_gives_the_bytes_of_scaling_first(rows, cols, dtype, seed):
    """softmax(x, s) is softmax(x *= s) and its backward the unscaled backward times s, byte for byte (the attention
    block folds 1/sqrt(C) into both instead of two passes over the logits)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 5).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    scale = 32 ** (-0.5)
    scaled = x.copy()
    scaled *= scale
    y = softmax(x.copy(), scale)
    np.testing.assert_array_equal(y, softmax(scaled))
    np.testing.assert_array_equal(y, softmax_ref(x, scale))
    unscaled = softmax_backward(dy.copy(), y)
    unscaled *= scale
    np.testing.assert_array_equal(softmax_backward(dy.copy(), y, scale), unscaled)
    np.testing.assert_array_equal(softmax_backward(dy.copy(), y, scale), softmax_backward_ref(dy, y, scale))


def test_threaded_softmax_kernels_give_the_twins_bytes():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((SERIAL_ELEMENTS // 250 + 1, 250)).astype(np.float32) * 4   # >= SERIAL_ELEMENTS
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = softmax(x.copy())
    np.testing.assert_array_equal(y, softmax_ref(x))
    np.testing.assert_array_equal(softmax_backward(dy.copy(), y), softmax_backward_ref(dy, y))


def test_softmax_backward_is_the_vector_jacobian_product_of_softmax():
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((4, 11)), rng.standard_normal((4, 11))       # float64
    y = softmax(x.copy())
    jacobians = np.einsum("ri,ij->rij", y, np.eye(11)) - np.einsum("ri,rj->rij", y, y)  # [R, J, J]
    np.testing.assert_allclose(softmax_backward(dy.copy(), y), np.einsum("rij,ri->rj", jacobians, dy), rtol=1e-12,
                               atol=1e-15)


def test_softmax_on_3d_logits_matches_the_textbook_formula():
    x = np.random.default_rng(2).standard_normal((3, 17, 29)).astype(np.float32) * 5
    exact = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    exact /= exact.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(softmax(x.copy()), exact, rtol=2e-6, atol=1e-9)


def test_softmax_propagates_nan_and_refuses_a_strided_array():
    x = np.zeros((2, 9), np.float32)
    x[1, 4] = np.nan
    y = softmax(x)
    assert np.all(np.isnan(y[1])) and np.allclose(y[0], 1 / 9)
    with pytest.raises(ValueError, match="C-contiguous"):
        softmax(np.zeros((4, 6), np.float32)[:, ::2])
