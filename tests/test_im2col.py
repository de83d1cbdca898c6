"""The two column layouts of the float conv (nn/im2col.py) on shapes that break kernels: borders, odd sizes,
asymmetric padding, 1x1 and 3x3, one channel and channel counts that are no power of two.

The grid layout (stride 1) must hold exactly the dense layout's columns at its valid cells and fold
exactly as the dense layout does (both are copies and the taps are summed in the same order); fold is
the adjoint of unfold; the conv built on them equals the nested-loop definition.
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.nn.conv import conv2d, conv2d_backward
from bidm_ref.nn import im2col
from bidm_ref.nn.im2col import column_chunks, conv_geometry, fold, from_columns, to_columns, unfold, unfold_dense
from reference_ops import conv_nested_loops

shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2, 3]),
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1),
)


def grid_cells_as_dense(cols: np.ndarray, geo) -> np.ndarray:
    """The valid cells of grid-layout columns [K, Q] in the dense order [K, N*Ho*Wo] (via from_columns)."""
    return from_columns(cols, geo).transpose(1, 0, 2, 3).reshape(cols.shape[0], -1)


@given(shapes)
def test_grid_layout_equals_the_dense_definition_exactly(case):
    N, C, H, W, k, pad, dtype, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    geo = conv_geometry(x.shape, k, k, 1, pad)
    dense_geo = replace(geo, grid=False)
    cols = unfold(x, geo)                                                         # [K, Q] grid
    assert cols.shape == (C * k * k, geo.columns) and cols.dtype == dtype
    dense = unfold_dense(x, dense_geo)                                            # [K, N*Ho*Wo]
    np.testing.assert_array_equal(grid_cells_as_dense(cols, geo), dense)
    dy = rng.standard_normal((N, C * k * k, geo.Ho, geo.Wo)).astype(dtype)      # a gradient per valid cell
    d_grid = fold(to_columns(dy, geo), geo)
    d_dense = fold(dy.transpose(1, 0, 2, 3).reshape(C * k * k, -1), dense_geo)
    assert geo.grid
    np.testing.assert_array_equal(d_grid, d_dense)


@given(shapes, st.sampled_from([1, 2]))
def test_fold_is_the_adjoint_of_unfold(case, stride):
    N, C, H, W, k, pad, _, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    geo = conv_geometry(x.shape, k, k, stride, pad)
    dy = rng.standard_normal((N, C * k * k, geo.Ho, geo.Wo))
    dcols = to_columns(dy, geo)                                                   # [K, Q], zero in garbage cells
    lhs = float((unfold(x, geo) * dcols).sum())
    rhs = float((x * fold(dcols, geo)).sum())
    assert np.isclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@given(shapes, st.sampled_from([1, 2]), st.integers(1, 5))
def test_conv_on_both_layouts_equals_the_nested_loop_definition(case, stride, out_channels):
    N, C, H, W, k, pad, _, seed = case
    C = min(C, 6)
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, k, k))
    bias = rng.standard_normal(out_channels)
    y, cols = conv2d(x, weight, bias, stride, pad)
    np.testing.assert_allclose(y, conv_nested_loops(x, weight, bias, stride, pad), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dweight, dbias = conv2d_backward(dy, cols, weight, x.shape, stride, pad)
    # the backward is the adjoint of the (linear) forward in x and in weight
    y0, _ = conv2d(x, weight, None, stride, pad)
    assert np.isclose((dy * y0).sum(), (dx * x).sum(), rtol=1e-10)
    assert np.isclose((dy * y0).sum(), (dweight * weight).sum(), rtol=1e-10)
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@given(shapes, st.integers(1, 4), st.integers(1, 3000))
def test_chunked_conv_equals_the_conv_on_whole_columns(case, out_channels, chunk_bytes):
    """The stride-1 conv builds its columns in chunks; with any chunk size it computes the whole-columns conv."""
    N, C, H, W, k, pad, _, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k and k > 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, k, k))
    geo = conv_geometry(x.shape, k, k, 1, pad)
    cols = unfold(x, geo)                                                         # [K, Q] whole
    y_whole = from_columns(weight.reshape(out_channels, -1) @ cols, geo)
    dy = rng.standard_normal(y_whole.shape)
    dy_cols = to_columns(dy, geo)
    dx_whole = fold(weight.reshape(out_channels, -1).T @ dy_cols, geo)
    dw_whole = (dy_cols @ cols.T).reshape(weight.shape)
    with mock.patch.object(im2col, "CHUNK_BYTES", chunk_bytes), mock.patch.object(im2col, "MIN_CHUNK_COLUMNS", 1):
        width = max(1, chunk_bytes // (C * k * k * 8))
        assert len(column_chunks(geo, C * k * k, 8)) == -(-geo.columns // width)
        y, saved = conv2d(x, weight, None, 1, pad)
        dx, dweight, _ = conv2d_backward(dy, saved, weight, x.shape, 1, pad)
    np.testing.assert_allclose(y, y_whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dw_whole, rtol=1e-12, atol=1e-12)


def test_column_chunks_cover_every_column_once():
    geo = conv_geometry((3, 5, 17, 13), 3, 3, 1, 1)
    for chunk_bytes in (1, 1000, 10**5, 10**9):
        chunks = column_chunks(geo, 45, 4, chunk_bytes)
        assert chunks[0][0] == 0 and chunks[-1][1] == geo.columns
        assert all(stop == start for (_, stop), (start, _) in zip(chunks, chunks[1:]))
        assert all(stop - start <= max(im2col.MIN_CHUNK_COLUMNS, chunk_bytes // 180) for start, stop in chunks)
