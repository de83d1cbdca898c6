"""The Numba im2col / col2im against their NumPy twins, on shapes that break kernels."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.nn.im2col import col2im, col2im_ref, im2col, im2col_ref

cases = st.tuples(
    st.integers(1, 3), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2, 3]),
    st.sampled_from([1, 2]), st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1),
)


@given(cases)
def test_numba_im2col_and_col2im_equal_their_twins(case):
    N, C, H, W, k, stride, pad, dtype, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    cols = im2col(x, k, k, stride, pad)
    np.testing.assert_array_equal(cols, im2col_ref(x, k, k, stride, pad))
    assert cols.dtype == dtype
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = col2im(dcols, x.shape, k, k, stride, pad)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx, col2im_ref(dcols, x.shape, k, k, stride, pad), rtol=rtol, atol=rtol)
    assert dx.shape == x.shape and dx.dtype == dtype


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 6))
    cols = im2col(x, 3, 3, 2, (0, 1, 0, 1))
    dcols = rng.standard_normal(cols.shape)
    assert np.isclose((cols * dcols).sum(), (x * col2im(dcols, x.shape, 3, 3, 2, (0, 1, 0, 1))).sum(), rtol=1e-12)
