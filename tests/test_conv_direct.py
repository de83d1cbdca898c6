"""The direct conv of the grid layout (nn/conv_direct.py): register tiles of OT output channels x 16 pixels.

Shapes that break it: output channels that are no multiple of OT (zero-padded weight rows), rows that are no
multiple of 16 (the last tile overlaps), rows narrower than a tile (tiles of grid cells across rows and images), one
and many channels, asymmetric padding, 1x1 to 5x5 kernels; float32 and float64. Against the nested-loop definition
in float64, its NumPy twin, and the grid layout's matmul forward; the backward from its saved input, checked as the
adjoint of the forward; the input gradient as a direct conv of dy.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bidm_ref.nn import conv, conv_direct, im2col, threaded
from bidm_ref.nn.conv import Conv2d, conv2d, conv2d_backward, conv_layout
from bidm_ref.nn.conv_direct import MIN_OUTPUTS, TILE_PIXELS, direct_conv, direct_conv_ref
from bidm_ref.nn.im2col import conv_geometry, grid_source
from fdcheck import check_module
from onethread import on_one_thread
from reference_ops import conv_nested_loops

cases = st.tuples(
    st.integers(1, 2), st.integers(1, 20), st.integers(MIN_OUTPUTS, 19), st.integers(1, 9), st.integers(3, 40),
    st.sampled_from([1, 3, 5]), st.tuples(*[st.integers(0, 2)] * 4), st.booleans(),
    st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1),
)


DIRECT_MIN_MACS = conv_direct.DIRECT_MIN_MACS  # the module's value (the fixture below lowers it in every test)


@pytest.fixture(autouse=True)
def small_convs_run_direct_too():
    """The tests' small shapes take the tiles as the large ones do (DIRECT_MIN_MACS only weighs set-up against speed)."""
    with mock.patch.object(conv_direct, "DIRECT_MIN_MACS", 1):
        yield


def draw(case):
    """(x, weight, bias, geometry) of a case that conv_layout gives the direct conv (on the grid)."""
    N, C, O, H, W, k, pad, with_bias, dtype, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = rng.standard_normal((O, C, k, k)).astype(dtype)
    bias = rng.standard_normal(O).astype(dtype) if with_bias else None
    geo, direct = conv_layout(x.shape, weight.shape, 1, pad)
    assume(direct)                                                                # rows of a tile, or mostly outputs
    assert geo.grid == (geo.Wo >= TILE_PIXELS)
    return x, weight, bias, geo


def rounding_bound(x, weight, dtype) -> np.ndarray:
    """|error| bound of a K-term float sum, per output: (K + 2) eps * sum |w| |x| (the nested-loop conv of |.|)."""
    K = weight[0].size
    scale = conv_nested_loops(np.abs(x.astype(np.float64)), np.abs(weight.astype(np.float64)), None, 1, 0)
    return (K + 2) * np.finfo(dtype).eps * (scale + 1)


@settings(max_examples=60, deadline=None)
@given(cases)
def test_direct_conv_equals_the_definition_and_its_twin(case):
    x, weight, bias, geo = draw(case)
    xp = grid_source(x, geo)
    y = direct_conv(xp, weight, bias, geo)
    assert y.dtype == x.dtype and y.shape == (x.shape[0], weight.shape[0], geo.Ho, geo.Wo)
    exact = conv_nested_loops(x.astype(np.float64), weight.astype(np.float64),
                              None if bias is None else bias.astype(np.float64), 1, geo.padding)
    padded = np.pad(x, ((0, 0), (0, 0), geo.padding[:2], geo.padding[2:]))        # bound on the padded input
    bound = rounding_bound(padded, weight, x.dtype)
    assert np.all(np.abs(y - exact) <= bound)
    assert np.all(np.abs(y - direct_conv_ref(xp, weight, bias, geo)) <= 2 * bound)


@settings(max_examples=30, deadline=None)
@given(cases)
def test_conv2d_forward_is_direct_and_its_backward_the_adjoint(case):
    """conv2d's forward takes the direct conv and equals the grid layout's matmul forward; the backward from what it
    saved (xp on the grid, x in the rows layout) is the adjoint of that forward in x and in the weight."""
    x, weight, bias, geo = draw(case)
    pad = geo.padding
    with mock.patch.object(conv, "direct_conv", wraps=conv.direct_conv) as direct:
        y, saved = conv2d(x, weight, bias, 1, pad)
    assert direct.call_count == 1
    with mock.patch.object(conv, "direct_fits", return_value=False), mock.patch.object(im2col, "GRID_MIN_OUTPUTS", 1):
        y_matmul, _ = conv2d(x, weight, bias, 1, pad)                             # the grid's matmul forward
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    dx, dweight, _ = conv2d_backward(dy, saved, weight, x.shape, 1, pad)
    y0, _ = conv2d(x, weight, None, 1, pad)
    padded = np.pad(x, ((0, 0), (0, 0), pad[:2], pad[2:]))
    assert np.all(np.abs(y - y_matmul) <= 2 * rounding_bound(padded, weight, x.dtype))
    if x.dtype == np.float64:
        assert np.isclose((dy * y0).sum(), (dx * x).sum(), rtol=1e-10)
        assert np.isclose((dy * y0).sum(), (dweight * weight).sum(), rtol=1e-10)


@st.composite
def transposable_cases(draw_from):
    """Cases of `cases` that the transposed conv takes too: C >= 8 (its outputs), padding <= k - 1 on every side, rows
    of at least a tile (drawn directly: filtering `cases` rejects most draws)."""
    k = draw_from(st.sampled_from([1, 3, 5]))
    pad = draw_from(st.tuples(*[st.integers(0, min(2, k - 1))] * 4))
    return (draw_from(st.integers(1, 2)), draw_from(st.integers(MIN_OUTPUTS, 19)),
            draw_from(st.integers(MIN_OUTPUTS, 19)), draw_from(st.integers(k, 9)),
            draw_from(st.integers(TILE_PIXELS + 4, 40)), k, pad, False,
            draw_from(st.sampled_from([np.float32, np.float64])), draw_from(st.integers(0, 2**31 - 1)))


@settings(max_examples=30, deadline=None)
@given(transposable_cases())
def test_the_input_gradient_as_a_direct_conv_of_dy_equals_the_fold(case):
    """Where transposed_geometry takes it (C >= 8 outputs of the transposed conv), dx is the direct conv of dy with the
    flipped, transposed weight: the grid backward's fold (or the taps layout's product) gives the same (float64), and
    the same weight gradient (to rounding: conv_direct_grad's tiles take it where they fit)."""
    x, weight, bias, geo = draw(case)
    assert geo.grid and conv.transposed_geometry(geo, weight.shape) is not None
    x, weight = x.astype(np.float64), weight.astype(np.float64)
    y, saved = conv2d(x, weight, None, 1, geo.padding)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    with mock.patch.object(conv, "direct_conv", wraps=conv.direct_conv) as direct:
        dx, dweight, _ = conv2d_backward(dy, saved, weight, x.shape, 1, geo.padding)
    assert direct.call_count == 1
    with mock.patch.object(conv, "transposed_geometry", return_value=None):
        dx_fold, dweight_fold, _ = conv2d_backward(dy, saved, weight, x.shape, 1, geo.padding)
    np.testing.assert_allclose(dx, dx_fold, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dweight_fold, rtol=1e-12, atol=1e-12)   # the tiles' sums where grad_fits


@pytest.mark.parametrize("x_shape, grid", [((2, 8, 3, 17), True), ((2, 8, 6, 8), False)])
def test_conv2d_backward_fd_after_the_direct_forward(x_shape, grid):
    """FD of a Conv2d whose forward is direct: on the grid with the direct input gradient, and in the rows layout."""
    rng = np.random.default_rng(5)
    layer = Conv2d(8, 9, 3, 1, (1, 0, 2, 1), rng=rng)
    x = rng.standard_normal(x_shape)
    geo, direct = conv_layout(x.shape, layer.params["weight"].shape, 1, (1, 0, 2, 1))
    assert direct and geo.grid == grid
    assert conv.transposed_geometry(geo, layer.params["weight"].shape) is not None                 # used on the grid
    check_module(layer, [x], layer.forward, rng)


@pytest.mark.parametrize("height, width", [(20, 37), (9, 8)])                  # row tiles; cell tiles (W < PT)
def test_direct_conv_gives_the_same_bytes_on_one_thread_and_on_every_core(height, width):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, height, width)).astype(np.float32)
    weight = rng.standard_normal((11, 7, 3, 3)).astype(np.float32)
    geo = conv_geometry(x.shape, 3, 3, 1, 1)
    assert (geo.Wo >= TILE_PIXELS) == (width >= TILE_PIXELS)
    xp = grid_source(x, geo)
    serial = on_one_thread(direct_conv, xp, weight, None, geo)
    assert serial.tobytes() == direct_conv(xp, weight, None, geo).tobytes()
    np.testing.assert_allclose(serial, direct_conv_ref(xp, weight, None, geo), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, weight_shape, stride, direct, grid", [
    ((2, 3, 32, 32), (16, 3, 3, 3), 1, True, True),
    ((2, 16, 16, 16), (8, 16, 3, 3), 1, True, True),                              # 16x16: on the grid for the tiles
    ((2, 128, 16, 16), (128, 128, 3, 3), 1, True, True),                          # K = DIRECT_MAX_TAPS = 1152
    ((2, 256, 16, 16), (256, 256, 3, 3), 1, False, False),                        # more taps: rows layout, BLAS
    ((2, 16, 64, 8), (16, 16, 3, 3), 1, True, False),                             # narrow rows: cell tiles, rows backward
    ((2, 16, 4, 4), (16, 16, 3, 3), 1, False, False),                             # padding cells > half the grid
    ((2, 16, 32, 32), (7, 16, 3, 3), 1, False, True),                             # fewer outputs than a tile: taps
    ((2, 16, 32, 32), (16, 16, 3, 3), 2, False, False),
    ((2, 16, 32, 32), (16, 16, 1, 1), 1, False, False),                           # pointwise
])
def test_conv_layout_runs_the_tiles_where_they_fit(x_shape, weight_shape, stride, direct, grid):
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", False):
        geo, takes = conv_layout(x_shape, weight_shape, stride, 1 if weight_shape[2] == 3 else 0)
    assert (takes, geo.grid) == (direct, grid)


@pytest.mark.parametrize("x_shape, direct", [
    ((2, 256, 16, 16), True),                                                     # K = 2304, rows of 16: row tiles
    ((2, 512, 16, 16), True),                                                     # K = 4608 = WIDE_TILES_MAX_TAPS
    ((2, 513, 16, 16), False),
    ((2, 256, 8, 8), False),                                                      # cell tiles keep DIRECT_MAX_TAPS
])
def test_row_tiles_take_more_taps_where_they_are_wider_than_blas(x_shape, direct):
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", True):
        assert conv_layout(x_shape, (64, x_shape[1], 3, 3), 1, 1)[1] is direct


@pytest.mark.parametrize("avx512, cores, wider", [
    (True, ["Haswell"], True), (True, ["Zen"], True), (True, ["SkylakeX"], False),
    (True, ["Haswell", "SkylakeX"], False), (False, ["Haswell"], False), (True, [], False),
])
def test_tiles_are_wider_than_blas_only_with_avx512_tiles_over_narrower_openblas_kernels(avx512, cores, wider):
    pools = [{"internal_api": "openblas", "architecture": core} for core in cores] + [{"internal_api": "openmp"}]
    with mock.patch("threadpoolctl.threadpool_info", return_value=pools), \
            mock.patch.object(conv_direct, "compiles_for", return_value=avx512):
        assert conv_direct.tiles_wider_than_blas() is wider


def test_direct_conv_with_many_taps_equals_its_twin():
    """K = 256 * 9 = 2304 taps, beyond DIRECT_MAX_TAPS: the sums the wide row tiles run."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 256, 6, 18)).astype(np.float32)                  # [N, C, H, W]
    weight = rng.standard_normal((9, 256, 3, 3)).astype(np.float32)              # [O, C, kh, kw]
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", True):
        geo, direct = conv_layout(x.shape, weight.shape, 1, 1)
    assert direct and geo.grid
    xp = grid_source(x, geo)
    y = direct_conv(xp, weight, None, geo)                                        # [N, O, Ho, Wo]
    np.testing.assert_allclose(y, direct_conv_ref(xp, weight, None, geo), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(y, conv_nested_loops(x.astype(np.float64), weight.astype(np.float64), None, 1, 1),
                               rtol=1e-4, atol=1e-3)


def test_convs_below_direct_min_macs_keep_blas():
    with mock.patch.object(conv_direct, "DIRECT_MIN_MACS", DIRECT_MIN_MACS):
        assert conv_layout((2, 32, 16, 16), (32, 32, 3, 3), 1, 1)[1]                # 4.7M multiply-adds
        assert not conv_layout((1, 32, 16, 16), (32, 32, 3, 3), 1, 1)[1]           # 2.4M: the matmul


@pytest.mark.parametrize("features, avx512", [("+avx2,+fma,-avx512f", False),
                                               ("+avx2,+avx512f,+avx512vpopcntdq", True)])
def test_the_tile_height_follows_the_features_numba_compiles_for(features, avx512):
    with mock.patch.object(threaded.config, "CPU_FEATURES", features):
        assert threaded.compiles_for("avx512f") is avx512
        assert threaded.compiles_for("avx512vpopcntdq") is avx512
        assert not threaded.compiles_for("avx512")                               # whole names only
