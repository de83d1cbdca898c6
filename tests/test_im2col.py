"""The two column layouts of the float conv (nn/im2col.py) on shapes that break kernels: borders, odd sizes,
asymmetric padding, strides, 1x1 and 3x3, one channel and channel counts that are no power of two.

The rows layout's Numba kernels equal their NumPy twins exactly; the grid layout holds exactly the rows
layout's numbers and folds exactly as its twin (copies, taps summed in the same order); fold is the
adjoint of unfold; the conv on either layout equals the nested-loop definition; the chunked grid conv
equals the conv on whole columns for any chunk size, and so does the taps layout (conv_taps.py).
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.nn import conv, im2col
from bidm_ref.nn.conv import Conv2d, conv2d, conv2d_backward
from bidm_ref.nn.conv_taps import use_taps
from bidm_ref.nn.im2col import (col2im_rows, col2im_rows_ref, column_chunks, conv_geometry, fold_grid, fold_grid_chunk,
                                fold_grid_chunk_ref, from_columns, grid_chunk, grid_chunk_ref, grid_source,
                                grid_source_ref, im2col_nhwc, im2col_rows, im2col_rows_ref, to_columns, unfold_grid)
from fdcheck import check_module
from reference_ops import conv_nested_loops

shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 70), st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2, 3]),
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1),
)
ANY_SIZE_ON_THE_GRID = mock.patch.object(im2col, "GRID_MIN_OUTPUTS", 1)


def fits(H, W, k, pad) -> bool:
    return H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k


@given(shapes, st.sampled_from([1, 2]))
def test_rows_kernels_equal_their_numpy_twins(case, stride):
    N, C, H, W, k, pad, dtype, seed = case
    assume(fits(H, W, k, pad))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    geo = replace(conv_geometry(x.shape, k, k, stride, pad), grid=False)
    cols = im2col_rows(x, geo)
    np.testing.assert_array_equal(cols, im2col_rows_ref(x, geo))
    assert cols.dtype == dtype
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = col2im_rows(dcols, geo)
    np.testing.assert_array_equal(dx, col2im_rows_ref(dcols, geo))
    assert dx.shape == x.shape and dx.dtype == dtype


@given(shapes, st.sampled_from([1, 2]))
def test_rows_im2col_serial_and_parallel_compilations_write_the_same_bytes(case, stride):
    N, C, H, W, k, pad, dtype, seed = case
    assume(fits(H, W, k, pad))
    x_nhwc = np.random.default_rng(seed).standard_normal((N, H, W, C)).astype(dtype)
    geo = conv_geometry((N, C, H, W), k, k, stride, pad)
    top, _, left, _ = geo.padding
    outputs = []
    for kernel in im2col.im2col_rows_kernel.compilations:
        cols = np.full((N * geo.Ho * geo.Wo, k * k * C), np.nan, dtype=dtype)
        kernel(x_nhwc, k, k, stride, top, left, geo.Ho, geo.Wo, cols)
        outputs.append(cols)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], im2col_nhwc(x_nhwc, geo))
    np.testing.assert_array_equal(outputs[0], im2col_rows_ref(x_nhwc.transpose(0, 3, 1, 2), geo))


@given(shapes, st.booleans())
def test_grid_source_kernel_equals_its_numpy_twin(case, transposed):
    """Both compilations write the twin's bytes (padding zeros, x's rows), also from a non-contiguous x."""
    N, C, H, W, k, pad, dtype, seed = case
    assume(fits(H, W, k, pad))
    x = np.random.default_rng(seed).standard_normal((N, C, W, H)).astype(dtype)
    x = x.transpose(0, 1, 3, 2) if transposed else np.ascontiguousarray(x.transpose(0, 1, 3, 2))  # [N, C, H, W]
    geo = replace(conv_geometry(x.shape, k, k, 1, pad), grid=True)
    expected = grid_source_ref(x, geo)                                            # [C, L]
    assert grid_source(x, geo).tobytes() == expected.tobytes()
    top, _, left, _ = geo.padding
    for kernel in im2col.grid_source_kernel.compilations:
        xp = np.full((C, N, *geo.padded), np.nan, dtype=dtype)
        kernel(x, top, left, xp)
        assert xp.reshape(C, -1).tobytes() == expected.tobytes()


@given(shapes, st.integers(1, 2000))
def test_grid_chunk_kernels_equal_their_numpy_twins(case, width):
    N, C, H, W, k, pad, dtype, seed = case
    assume(fits(H, W, k, pad))
    rng = np.random.default_rng(seed)
    geo = replace(conv_geometry((N, C, H, W), k, k, 1, pad), grid=True)
    xp = grid_source(rng.standard_normal((N, C, H, W)).astype(dtype), geo)       # [C, L]
    start = int(rng.integers(0, geo.columns))
    stop = min(geo.columns, start + width)                                        # a chunk anywhere, up to the last column
    buffer = np.full(C * k * k * (stop - start) + 3, np.nan, dtype=dtype)
    np.testing.assert_array_equal(grid_chunk(xp, geo, start, stop, buffer), grid_chunk_ref(xp, geo, start, stop))
    dcols = rng.standard_normal((C * k * k, stop - start)).astype(dtype)
    dxp = rng.standard_normal(xp.shape).astype(dtype)                             # a fold adds to what is there
    dxp_ref = dxp.copy()
    fold_grid_chunk(dcols, geo, start, dxp)
    fold_grid_chunk_ref(dcols, geo, start, dxp_ref)
    assert dxp.tobytes() == dxp_ref.tobytes()


@given(shapes)
def test_grid_layout_holds_the_rows_numbers_exactly(case):
    N, C, H, W, k, pad, dtype, seed = case
    assume(fits(H, W, k, pad))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    geo = replace(conv_geometry(x.shape, k, k, 1, pad), grid=True)
    Ho, Wo = geo.Ho, geo.Wo
    grid = unfold_grid(x, geo)                                                    # [K, Q]
    assert grid.shape == (C * k * k, geo.columns) and grid.dtype == dtype
    rows = im2col_rows_ref(x, geo).reshape(N, Ho, Wo, k, k, C).transpose(5, 3, 4, 0, 1, 2).reshape(C * k * k, -1)
    np.testing.assert_array_equal(from_columns(grid, geo).transpose(1, 0, 2, 3).reshape(C * k * k, -1), rows)
    dy = rng.standard_normal((N, C * k * k, Ho, Wo)).astype(dtype)               # a gradient per valid cell
    d_rows = dy.reshape(N, C, k, k, Ho, Wo).transpose(0, 4, 5, 2, 3, 1).reshape(N * Ho * Wo, -1)
    np.testing.assert_array_equal(fold_grid(to_columns(dy, geo), geo), col2im_rows_ref(d_rows, geo))


@given(shapes, st.sampled_from([1, 2]))
def test_fold_is_the_adjoint_of_unfold_in_both_layouts(case, stride):
    N, C, H, W, k, pad, _, seed = case
    assume(fits(H, W, k, pad))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    rows_geo = replace(conv_geometry(x.shape, k, k, stride, pad), grid=False)
    cols = im2col_rows(x, rows_geo)
    dcols = rng.standard_normal(cols.shape)
    assert np.isclose((cols * dcols).sum(), (x * col2im_rows(dcols, rows_geo)).sum(), rtol=1e-10, atol=1e-10)
    grid_geo = replace(conv_geometry(x.shape, k, k, 1, pad), grid=True)
    dy = rng.standard_normal((N, C * k * k, grid_geo.Ho, grid_geo.Wo))
    dgrid = to_columns(dy, grid_geo)                                              # [K, Q], zero in garbage cells
    lhs = (unfold_grid(x, grid_geo) * dgrid).sum()
    assert np.isclose(lhs, (x * fold_grid(dgrid, grid_geo)).sum(), rtol=1e-10, atol=1e-10)


@given(shapes, st.sampled_from([1, 2]), st.integers(1, 5), st.booleans())
def test_conv_on_both_layouts_equals_the_nested_loop_definition(case, stride, out_channels, on_grid):
    N, C, H, W, k, pad, _, seed = case
    C = min(C, 6)
    assume(fits(H, W, k, pad))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, k, k))
    bias = rng.standard_normal(out_channels)
    with mock.patch.object(im2col, "GRID_MIN_OUTPUTS", 1 if on_grid else 10**9):
        pointwise = k == 1 and pad == (0, 0, 0, 0)
        geo = conv_geometry(x.shape, k, k, stride, pad)
        assert (geo.pointwise, geo.grid) == (pointwise, stride == 1 and on_grid and not pointwise)
        y, saved = conv2d(x, weight, bias, stride, pad)
        dy = rng.standard_normal(y.shape)
        dx, dweight, dbias = conv2d_backward(dy, saved, weight, x.shape, stride, pad)
        y0, _ = conv2d(x, weight, None, stride, pad)
    np.testing.assert_allclose(y, conv_nested_loops(x, weight, bias, stride, pad), rtol=1e-12, atol=1e-12)
    # the backward is the adjoint of the (linear) forward in x and in weight
    assert np.isclose((dy * y0).sum(), (dx * x).sum(), rtol=1e-10)
    assert np.isclose((dy * y0).sum(), (dweight * weight).sum(), rtol=1e-10)
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2]),
       st.integers(1, 5), st.booleans(), st.integers(0, 2**31 - 1))
def test_pointwise_conv_equals_the_nested_loop_definition(N, C, H, W, stride, out_channels, with_bias, seed):
    """1x1 convs without padding (the batched-matmul path), odd maps and stride 2 included; the general test above
    draws them rarely (its paddings are mostly non-zero)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, 1, 1))
    bias = rng.standard_normal(out_channels) if with_bias else None
    assert conv_geometry(x.shape, 1, 1, stride, 0).pointwise
    y, saved = conv2d(x, weight, bias, stride, 0)
    dy = rng.standard_normal(y.shape)
    dx, dweight, dbias = conv2d_backward(dy, saved, weight, x.shape, stride, 0)
    y0, _ = conv2d(x, weight, None, stride, 0)
    np.testing.assert_allclose(y, conv_nested_loops(x, weight, bias, stride, 0), rtol=1e-12, atol=1e-12)
    assert np.isclose((dy * y0).sum(), (dx * x).sum(), rtol=1e-10)
    assert np.isclose((dy * y0).sum(), (dweight * weight).sum(), rtol=1e-10)
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    if stride == 2:
        skipped = np.ones(x.shape, dtype=bool)
        skipped[:, :, ::2, ::2] = False
        assert not dx[skipped].any()


@given(shapes, st.integers(1, 4), st.integers(1, 3000))
def test_chunked_conv_equals_the_conv_on_whole_columns(case, out_channels, chunk_bytes):
    """The grid conv builds its columns in chunks; with any chunk size it computes the whole-columns conv."""
    N, C, H, W, k, pad, _, seed = case
    assume(fits(H, W, k, pad) and k > 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, k, k))
    with ANY_SIZE_ON_THE_GRID:
        geo = conv_geometry(x.shape, k, k, 1, pad)
    cols = unfold_grid(x, geo)                                                    # [K, Q] whole
    y_whole = from_columns(weight.reshape(out_channels, -1) @ cols, geo)
    dy = rng.standard_normal(y_whole.shape)
    dy_cols = to_columns(dy, geo)
    dx_whole = fold_grid(weight.reshape(out_channels, -1).T @ dy_cols, geo)
    dw_whole = (dy_cols @ cols.T).reshape(weight.shape)
    with (mock.patch.object(im2col, "CHUNK_BYTES", chunk_bytes), mock.patch.object(im2col, "MIN_CHUNK_COLUMNS", 1),
          ANY_SIZE_ON_THE_GRID):
        width = max(1, chunk_bytes // (C * k * k * 8))
        assert len(column_chunks(geo.columns, C * k * k, 8)) == -(-geo.columns // width)
        y, saved = conv2d(x, weight, None, 1, pad)
        dx, dweight, _ = conv2d_backward(dy, saved, weight, x.shape, 1, pad)
    np.testing.assert_allclose(y, y_whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dw_whole, rtol=1e-12, atol=1e-12)


@given(shapes, st.integers(1, 4), st.integers(1, 3000))
def test_taps_layout_equals_the_grid_layout_and_the_nested_loops(case, out_channels, chunk_bytes):
    """The taps layout (conv_taps.py) of a grid conv, any chunk size: the nested-loop conv, and the grid layout's
    forward and gradients (float64, to rounding)."""
    N, C, H, W, k, pad, _, seed = case
    assume(fits(H, W, k, pad) and 2 * out_channels <= C)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    weight = rng.standard_normal((out_channels, C, k, k))
    dy = None
    results = []
    for taps in (True, False):
        with (mock.patch.object(im2col, "CHUNK_BYTES", chunk_bytes), mock.patch.object(im2col, "MIN_CHUNK_COLUMNS", 1),
              mock.patch.object(conv, "use_taps", return_value=taps), ANY_SIZE_ON_THE_GRID):
            y, saved = conv2d(x, weight, None, 1, pad)
            dy = rng.standard_normal(y.shape) if dy is None else dy
            results.append((y, *conv2d_backward(dy, saved, weight, x.shape, 1, pad)[:2]))
    np.testing.assert_allclose(results[0][0], conv_nested_loops(x, weight, None, 1, pad), rtol=1e-12, atol=1e-12)
    for taps_result, grid_result in zip(*results):
        np.testing.assert_allclose(taps_result, grid_result, rtol=1e-12, atol=1e-12)


def test_conv2d_takes_the_taps_layout_on_the_grid_when_outputs_are_at_most_half_the_inputs():
    geo = conv_geometry((2, 16, 32, 32), 3, 3, 1, 1)
    assert geo.grid and use_taps(geo, 8) and use_taps(geo, 1) and not use_taps(geo, 9)
    assert not use_taps(conv_geometry((2, 16, 16, 16), 3, 3, 1, 1), 1)           # rows layout: no taps


def test_conv2d_backward_fd_in_the_taps_layout():
    rng = np.random.default_rng(4)
    layer = Conv2d(6, 2, 3, 1, (1, 0, 2, 1), rng=rng)
    with ANY_SIZE_ON_THE_GRID, mock.patch.object(im2col, "CHUNK_BYTES", 200), mock.patch.object(im2col, "MIN_CHUNK_COLUMNS", 1):
        assert use_taps(conv_geometry((2, 6, 5, 4), 3, 3, 1, (1, 0, 2, 1)), 2)
        check_module(layer, [rng.standard_normal((2, 6, 5, 4))], layer.forward, rng)


def test_pointwise_for_unpadded_1x1_grid_for_large_maps_rows_for_the_rest():
    assert conv_geometry((2, 3, 32, 32), 3, 3, 1, 1).grid
    assert not conv_geometry((2, 3, 16, 16), 3, 3, 1, 1).grid and not conv_geometry((2, 3, 32, 32), 3, 3, 2, 1).grid
    for stride in (1, 2):
        geo = conv_geometry((2, 3, 64, 64), 1, 1, stride, 0)
        assert geo.pointwise and not geo.grid
    padded = conv_geometry((2, 3, 64, 64), 1, 1, 1, 1)
    assert not padded.pointwise and padded.grid


def test_column_chunks_cover_every_column_once():
    geo = conv_geometry((3, 5, 17, 13), 3, 3, 1, 1)
    for chunk_bytes in (1, 1000, 10**5, 10**9):
        chunks = column_chunks(geo.columns, 45, 4, chunk_bytes)
        assert chunks[0][0] == 0 and chunks[-1][1] == geo.columns
        assert all(stop == start for (_, stop), (start, _) in zip(chunks, chunks[1:]))
        assert all(stop - start <= max(im2col.MIN_CHUNK_COLUMNS, chunk_bytes // 180) for start, stop in chunks)
