"""The weight gradient of a direct grid conv by register tiles (nn/conv_direct_grad.py).

Shapes that break it: outputs and taps that are no multiple of a block (the last block overlaps the one before and
must not add its sums twice), one to three vectors per row, one and several images (rows that cross into the next
image), row segments of unequal length and empty ones (fewer rows than segments), chunks that end inside a segment,
1x1 to 5x5 kernels, asymmetric padding; float32 and float64. Against the NumPy twin in float64 (to rounding), the
serial and parallel compilations (same bytes), and conv2d_backward's finite differences where it takes the tiles.
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bidm_ref.nn import conv, conv_direct, conv_direct_grad
from bidm_ref.nn.conv import Conv2d, conv2d, conv2d_backward, conv_layout
from bidm_ref.nn.conv_direct_grad import (GRAD_LANES, GRAD_MAX_OUTPUTS, GRAD_OUTPUTS, GRAD_TAPS,
                                          direct_weight_grad, direct_weight_grad_kernel, direct_weight_grad_ref,
                                          grad_fits)
from bidm_ref.nn.im2col import conv_geometry, grid_source
from fdcheck import check_module


@st.composite
def grad_cases(draw):
    """(dy, xp, geometry) of a stride-1 grid conv whose output rows are whole vectors."""
    k = draw(st.sampled_from([1, 3, 5]))
    pad = draw(st.tuples(*[st.integers(0, min(2, k - 1))] * 4))
    vectors = draw(st.integers(1, 3))
    W = vectors * GRAD_LANES + k - 1 - pad[2] - pad[3]                            # Wo = vectors * V
    N, C, O, H = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(GRAD_OUTPUTS, 12)), \
        draw(st.integers(max(1, k - pad[0] - pad[1]), 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    geo = replace(conv_geometry((N, C, H, W), k, k, 1, pad), grid=True)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    dy = rng.standard_normal((N, O, geo.Ho, geo.Wo)).astype(dtype)
    return dy, grid_source(x, geo), geo


@settings(max_examples=60, deadline=None)
@given(grad_cases())
def test_the_tiles_equal_the_twin_to_rounding(case):
    dy, xp, geo = case
    assume(xp.shape[0] * geo.kh * geo.kw >= GRAD_TAPS)                            # fewer taps: grad_fits refuses them
    dweight = direct_weight_grad(dy, xp, geo)
    assert dweight.dtype == dy.dtype and dweight.shape == (dy.shape[1], xp.shape[0] * geo.kh * geo.kw)
    exact = direct_weight_grad_ref(dy.astype(np.float64), xp.astype(np.float64), geo)
    terms = dy.shape[0] * geo.Ho * geo.Wo
    scale = direct_weight_grad_ref(np.abs(dy.astype(np.float64)), np.abs(xp.astype(np.float64)), geo)
    assert np.all(np.abs(dweight - exact) <= (terms + 2) * np.finfo(dy.dtype).eps * scale)


def test_the_serial_and_the_parallel_compilation_write_the_same_bytes():
    rng = np.random.default_rng(4)
    geo = replace(conv_geometry((3, 7, 9, 16), 3, 3, 1, 1), grid=True)
    xp = grid_source(rng.standard_normal((3, 7, 9, 16)).astype(np.float32), geo)
    dy = rng.standard_normal((3, 11, 9, 16)).astype(np.float32)
    offsets = conv_direct.tap_offsets_flat(geo, 7)
    results = []
    for kernel in direct_weight_grad_kernel.compilations:
        partial = np.empty((conv_direct_grad.SEGMENTS, 11, offsets.size), dtype=np.float32)
        kernel(dy, xp, offsets, *geo.padded, 5, partial)                         # chunks of 5 rows: 27 rows, 4 tasks
        results.append(partial)
    assert results[0].tobytes() == results[1].tobytes()
    np.testing.assert_allclose(results[0].sum(axis=0), direct_weight_grad_ref(dy, xp, geo), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, weight_shape, stride, fits", [
    ((2, 16, 32, 32), (32, 16, 3, 3), 1, True),
    ((2, 16, 16, 16), (GRAD_OUTPUTS, 16, 3, 3), 1, True),
    ((2, 16, 16, 16), (GRAD_MAX_OUTPUTS + 1, 16, 3, 3), 1, False),                # BLAS's product is faster
    ((2, 16, 12, 12), (16, 16, 3, 3), 1, False),                                  # rows of 12: no whole vectors
    ((2, 16, 32, 32), (16, 16, 3, 3), 2, False),
])
def test_grad_fits_where_the_tiles_were_measured_faster(x_shape, weight_shape, stride, fits):
    geo = conv_geometry(x_shape, 3, 3, stride, 1)
    assert grad_fits(geo, weight_shape[0], weight_shape[1]) == fits


def test_conv2d_backward_takes_the_tiles_and_passes_finite_differences():
    """A Conv2d with a direct forward on the grid, rows of two vectors, odd channels: its backward runs the tiles for
    dW and the transposed direct conv for dx, and both pass FD (float64)."""
    rng = np.random.default_rng(6)
    layer = Conv2d(9, 10, 3, 1, 1, rng=rng).astype(np.float64)
    x = rng.standard_normal((2, 9, 3, 2 * GRAD_LANES))
    with mock.patch.object(conv_direct, "DIRECT_MIN_MACS", 1):
        geo, direct = conv_layout(x.shape, layer.params["weight"].shape, 1, 1)
        assert direct and geo.grid and grad_fits(geo, 10, 9)
        y, saved = conv2d(x, layer.params["weight"], None, 1, 1)
        with mock.patch.object(conv, "direct_weight_grad", wraps=conv.direct_weight_grad) as tiles:
            conv2d_backward(np.ones_like(y), saved, layer.params["weight"], x.shape, 1, 1)
        assert tiles.call_count == 1
        check_module(layer, [x], layer.forward, rng)
