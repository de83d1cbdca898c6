"""The stride-1 1x1 conv by register tiles (nn/conv_pointwise.py): 6 outputs x 64 pixels per tile.

Shapes that break it: output channels that are no multiple of 6 (zero weight rows), pixel counts that are no multiple
of 64 (the last tile overlaps), one and many input channels; float32 and float64, with and without bias. Against the
float64 product, its NumPy twin, the batched matmul conv2d runs elsewhere, serial against parallel bytes, and the
backward (conv.py's matmuls) as the adjoint of this forward by finite differences.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidm_ref.nn import conv_direct, conv_pointwise
from bidm_ref.nn.conv import Conv2d, conv2d
from bidm_ref.nn.conv_pointwise import (POINTWISE_OUTPUTS, POINTWISE_PIXELS, pointwise_conv, pointwise_conv_ref,
                                        pointwise_fits, tile_matmul, tile_matmul_ref)
from bidm_ref.nn.im2col import conv_geometry
from fdcheck import check_module
from onethread import on_one_thread


@pytest.fixture(autouse=True)
def tiles_wider_than_blas():
    """The rule's CPU condition on, and small shapes above its size floor, on every machine."""
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", True), \
            mock.patch.object(conv_pointwise, "DIRECT_MIN_MACS", 1):
        yield


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 70), st.integers(1, 20), st.integers(8, 13), st.integers(8, 13),
       st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_pointwise_conv_equals_the_product_and_its_twin(N, C, O, H, W, with_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((N, C, H * W)).astype(dtype)                         # [N, C, P]
    weight = rng.standard_normal((O, C, 1, 1)).astype(dtype)                     # [O, C, 1, 1]
    bias = rng.standard_normal(O).astype(dtype) if with_bias else None
    y = pointwise_conv(xs, weight, bias)                                          # [N, O, P]
    exact = np.einsum("oc,ncp->nop", weight[:, :, 0, 0].astype(np.float64), xs.astype(np.float64))
    exact = exact if bias is None else exact + bias[:, None]
    bound = (C + 2) * np.finfo(dtype).eps * (np.einsum("oc,ncp->nop", np.abs(weight[:, :, 0, 0]).astype(np.float64),
                                                       np.abs(xs).astype(np.float64)) + 1)
    assert y.dtype == dtype and y.shape == (N, O, H * W)
    assert np.all(np.abs(y - exact) <= bound)
    np.testing.assert_allclose(y, pointwise_conv_ref(xs, weight, bias), rtol=0, atol=bound.max())


def test_conv2d_runs_the_tiles_where_they_fit_and_gives_the_matmul_result():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 20, 9, 10)).astype(np.float32)                   # [N, C, H, W]: 90 pixels
    weight = rng.standard_normal((11, 20, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(11).astype(np.float32)
    assert pointwise_fits(conv_geometry(x.shape, 1, 1, 1, 0), x, weight)
    y, saved = conv2d(x, weight, bias, 1, 0)                                      # [N, O, H, W]
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", False):
        y_matmul, saved_matmul = conv2d(x, weight, bias, 1, 0)
    np.testing.assert_allclose(y, y_matmul, rtol=1e-5, atol=1e-5)
    assert np.array_equal(saved, saved_matmul)                                    # the same xs for the backward


@pytest.mark.parametrize("x_shape, stride, dtype, fits", [
    ((2, 8, 8, 8), 1, np.float32, True),                                          # 64 pixels: one tile
    ((2, 8, 7, 9), 1, np.float32, False),                                         # 63 pixels: fewer than a tile
    ((2, 8, 16, 16), 2, np.float32, False),                                       # strided: the matmul
    ((2, 8, 8, 8), 1, np.float16, False),
])
def test_pointwise_fits(x_shape, stride, dtype, fits):
    x = np.zeros(x_shape, dtype=dtype)
    weight = np.zeros((4, x_shape[1], 1, 1), dtype=np.float32 if dtype == np.float16 else dtype)
    assert pointwise_fits(conv_geometry(x_shape, 1, 1, stride, 0), x, weight) is fits
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", False):
        assert not pointwise_fits(conv_geometry(x_shape, 1, 1, stride, 0), x, weight)


def test_pointwise_conv_gives_the_same_bytes_on_one_thread_and_on_every_core():
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((3, 37, 5 * POINTWISE_PIXELS + 9)).astype(np.float32)  # [N, C, P]
    weight = rng.standard_normal((17, 37, 1, 1)).astype(np.float32)
    one_thread = on_one_thread(pointwise_conv, xs, weight, None)
    assert one_thread.tobytes() == pointwise_conv(xs, weight, None).tobytes()
    w = np.ascontiguousarray(weight[:, :, 0, 0]).reshape(-1)                      # [O*C]: 17 outputs in 3 tiles
    offsets = np.arange(37, dtype=np.int64) * xs.shape[2]                         # [C]
    outs = [np.empty((3, 17, xs.shape[2]), dtype=np.float32) for _ in range(2)]   # [N, O, P] each
    for kernel, out in zip(conv_pointwise.tile_matmul_kernel.compilations, outs):
        kernel(xs, offsets, w, 0, 37, 1, 17, np.zeros(0, dtype=np.float32), out)
    assert outs[0].tobytes() == outs[1].tobytes() == one_thread.tobytes()


def test_conv2d_backward_fd_after_the_tiled_forward():
    rng = np.random.default_rng(3)
    layer = Conv2d(6, 5, 1, 1, 0, rng=rng)
    layer.params = {name: value.astype(np.float64) for name, value in layer.params.items()}
    x = rng.standard_normal((2, 6, 8, 9))                                         # [N, C, H, W] float64, 72 pixels
    assert pointwise_fits(conv_geometry(x.shape, 1, 1, 1, 0), x, layer.params["weight"])
    check_module(layer, [x], layer.forward, rng)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(POINTWISE_OUTPUTS, 20), st.integers(POINTWISE_PIXELS, 150),
       st.sampled_from(["rows", "columns"]), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_tile_matmul_with_each_images_weight_read_by_rows_or_by_columns(N, K, O, P, read, dtype, seed):
    """Attention's products (nn/attention.py): each image's own weight, read as rows of [O, K] or columns of [K, O]
    (no copy), output counts that are no multiple of a tile (the last block overlaps), against the float64 product and
    the twin, and the same bytes from both compilations."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, K, P)).astype(dtype)                              # [N, K, P]
    if read == "rows":
        w = rng.standard_normal((N, O, K)).astype(dtype)                          # [N, O, K]
        strides, w_mat = (O * K, K, 1), w
    else:
        w = rng.standard_normal((N, K, O)).astype(dtype)                          # [N, K, O]
        strides, w_mat = (K * O, 1, O), w.transpose(0, 2, 1)
    y = tile_matmul(x, w, strides, O)                                             # [N, O, P]
    exact = np.einsum("nok,nkp->nop", w_mat.astype(np.float64), x.astype(np.float64))
    bound = (K + 2) * np.finfo(dtype).eps * (np.einsum("nok,nkp->nop", np.abs(w_mat).astype(np.float64),
                                                       np.abs(x).astype(np.float64)) + 1)
    assert y.shape == (N, O, P) and np.all(np.abs(y - exact) <= bound)
    np.testing.assert_allclose(y, tile_matmul_ref(x, w, strides, O), rtol=0, atol=bound.max())
    assert on_one_thread(tile_matmul, x, w, strides, O).tobytes() == y.tobytes()
