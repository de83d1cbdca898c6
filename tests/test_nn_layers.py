"""Finite-difference checks (float64, shapes from hypothesis) for every nn layer, plus forward twins."""

from __future__ import annotations

from unittest import mock

import numpy as np
from scipy.special import expit
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.nn.activation import SiLU, silu_backward_ref, silu_forward_ref
from bidm_ref.nn import conv_direct
from bidm_ref.nn.attention import AttnBlock, attention_tiles_fit
from bidm_ref.nn.conv import Conv2d
from bidm_ref.nn.dropout import Dropout
from bidm_ref.nn.embedding import timestep_embedding
from bidm_ref.nn.groupnorm import (GroupNorm, group_norm_backward_ref, group_norm_kernel, group_norm_output_kernel,
                                   group_norm_ref)
from bidm_ref.nn.linear import Linear
from bidm_ref.nn.module import Module, inference, keeps_caches
from bidm_ref.nn.resample import (Downsample, Upsample, avg_pool2x, avg_pool2x_ref, avg_pool_kernel,
                                  upsample_kernel, upsample_nearest2x, upsample_nearest2x_ref)
from bidm_ref.nn.resblock import ResnetBlock
from fdcheck import check_module
from reference_ops import conv_nested_loops

seeds = st.integers(0, 2**31 - 1)


conv_cases = st.tuples(
    st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7),
    st.sampled_from([1, 2, 3]), st.sampled_from([1, 2]),
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), st.booleans(), seeds,
)


@given(conv_cases)
def test_conv2d_forward_equals_nested_loops(case):
    N, C, O, H, W, k, stride, pad, bias, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    layer = Conv2d(C, O, k, stride, pad, bias=bias, rng=rng).astype(np.float64)
    x = rng.standard_normal((N, C, H, W))
    y, _ = layer.forward(x)
    expected = conv_nested_loops(x, layer.params["weight"], layer.params.get("bias"), stride, pad)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@given(conv_cases)
def test_conv2d_backward_fd(case):
    N, C, O, H, W, k, stride, pad, bias, seed = case
    assume(H + pad[0] + pad[1] >= k and W + pad[2] + pad[3] >= k)
    rng = np.random.default_rng(seed)
    layer = Conv2d(C, O, k, stride, pad, bias=bias, rng=rng)
    check_module(layer, [rng.standard_normal((N, C, H, W))], layer.forward, rng)


def test_conv2d_rejects_mismatched_input():
    layer = Conv2d(3, 4, 3, 1, 1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not fit weight"):
        layer.forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        Conv2d(1, 1, 3, rng=np.random.default_rng(0)).forward(np.zeros((1, 1, 2, 2)))


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.booleans(), seeds)
def test_linear_backward_fd(N, I, O, bias, seed):
    rng = np.random.default_rng(seed)
    layer = Linear(I, O, bias=bias, rng=rng)
    check_module(layer, [rng.standard_normal((N, I))], layer.forward, rng)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.booleans(),
       st.booleans(), seeds)
def test_groupnorm_backward_fd(N, G, per_group, H, W, affine, silu, seed):
    """GroupNorm, and with silu=True SiLU(GroupNorm) in one layer."""
    assume(per_group * H * W > 1)
    rng = np.random.default_rng(seed)
    layer = GroupNorm(G, G * per_group, eps=1e-6, affine=affine)
    if affine:
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, G * per_group)
        layer.params["bias"][:] = rng.standard_normal(G * per_group)
    check_module(layer, [rng.standard_normal((N, G * per_group, H, W))], lambda x: layer.forward(x, silu=silu), rng)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), seeds)
def test_groupnorm_kernels_equal_their_numpy_twins(N, G, per_group, H, W, dtype, seed):
    rng = np.random.default_rng(seed)
    C = G * per_group
    layer = GroupNorm(G, C, eps=1e-6).astype(dtype)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, C)
    layer.params["bias"][:] = rng.standard_normal(C)
    x = (rng.standard_normal((N, C, H, W)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    y, cache = layer.forward(x)
    gamma, beta = layer.params["weight"], layer.params["bias"]
    y_ref, xhat_ref, inv_std_ref = group_norm_ref(x, gamma, beta, G, 1e-6)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    dx = layer.backward(dy, cache)
    dx_ref, dgamma_ref, dbeta_ref = group_norm_backward_ref(dy, xhat_ref, inv_std_ref, gamma, G)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(layer.grads["weight"], dgamma_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(layer.grads["bias"], dbeta_ref, rtol=tol, atol=tol * 10)
    for kernel in group_norm_kernel.compilations:                                  # the layer picks one by size
        x4 = x.reshape(N, G, per_group, H * W)
        outs = [np.empty_like(x4), np.empty_like(x4), np.empty((0, 0, 0, 0), dtype=dtype), np.empty((N, G), dtype=dtype)]
        kernel(x4, np.empty((0, 0, 0), dtype=dtype), gamma.reshape(G, -1), beta.reshape(G, -1), 1e-6, *outs)
        np.testing.assert_allclose(outs[0].reshape(x.shape), y_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(outs[3], inv_std_ref.reshape(N, G), rtol=tol)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), seeds)
def test_groupnorm_fused_silu_equals_the_two_layers_and_their_twins(N, G, per_group, H, W, dtype, seed):
    """SiLU(GroupNorm(x)) in one kernel: the twins' values (group_norm_ref, silu_forward_ref / silu_backward_ref), the
    two separate layers' values, and the same bytes from the serial and the parallel compilation."""
    rng = np.random.default_rng(seed)
    C = G * per_group
    layer = GroupNorm(G, C, eps=1e-6).astype(dtype)
    gamma, beta = layer.params["weight"], layer.params["bias"]
    gamma[:] = rng.uniform(0.5, 1.5, C)
    beta[:] = rng.standard_normal(C)
    x = (rng.standard_normal((N, C, H, W)) * 3 + 1).astype(dtype)
    dz = rng.standard_normal(x.shape).astype(dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    z, cache = layer.forward(x, silu=True)
    dx = layer.backward(dz, cache)
    y_ref, xhat_ref, inv_std_ref = group_norm_ref(x, gamma, beta, G, 1e-6)
    z_ref, s_ref = silu_forward_ref(y_ref)
    dx_ref, dgamma_ref, dbeta_ref = group_norm_backward_ref(silu_backward_ref(y_ref, s_ref, dz), xhat_ref, inv_std_ref,
                                                            gamma, G)
    assert z.dtype == dx.dtype == dtype
    np.testing.assert_allclose(z, z_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(layer.grads["weight"], dgamma_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(layer.grads["bias"], dbeta_ref, rtol=tol, atol=tol * 10)
    unfused = GroupNorm(G, C, eps=1e-6).astype(dtype)
    unfused.load_state_dict(layer.state_dict())
    y, c_norm = unfused.forward(x)
    z2, c_act = SiLU().forward(y)
    np.testing.assert_allclose(z, z2, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, unfused.backward(SiLU().backward(dz, c_act), c_norm), rtol=tol, atol=tol * 10)
    x4 = x.reshape(N, G, per_group, H * W)
    outs = []
    for kernel in group_norm_kernel.compilations:
        out = [np.empty_like(x4) for _ in range(3)] + [np.empty((N, G), dtype=dtype)]    # y, xhat, s, inv_std
        kernel(x4, np.empty((0, 0, 0), dtype=dtype), gamma.reshape(G, -1), beta.reshape(G, -1), 1e-6, *out)
        outs.append(out)
    for parallel, serial in zip(*outs):
        assert parallel.tobytes() == serial.tobytes()


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 40), st.integers(1, 9), st.booleans(),
       st.booleans(), st.sampled_from([np.float32, np.float64]), seeds)
def test_groupnorm_under_inference_gives_the_same_bytes_and_no_cache(N, G, per_group, H, W, silu, shifted, dtype, seed):
    """Under nn.module.inference() the forward writes y alone (group_norm_output_kernel): the training forward's bytes
    from both compilations, with and without SiLU and shift, a cache of None, and a backward that refuses it."""
    rng = np.random.default_rng(seed)
    C = G * per_group
    layer = GroupNorm(G, C).astype(dtype)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, C)
    layer.params["bias"][:] = rng.standard_normal(C)
    x = (rng.standard_normal((N, C, H, W)) * 3 + 1).astype(dtype)
    shift = rng.standard_normal((N, C)).astype(dtype) if shifted else None
    y, cache = layer.forward(x, silu=silu, shift=shift)
    with inference():
        y_inference, no_cache = layer.forward(x, silu=silu, shift=shift)
    assert no_cache is None and y_inference.tobytes() == y.tobytes()
    x4 = x.reshape(N, G, per_group, H * W)
    shift3 = np.empty((0, 0, 0), dtype=dtype) if shift is None else shift.reshape(N, G, per_group)
    for kernel in group_norm_output_kernel.compilations:
        out = np.empty_like(x4)
        kernel(x4, shift3, layer.params["weight"].reshape(G, -1), layer.params["bias"].reshape(G, -1), 1e-6, silu, out)
        assert out.tobytes() == y.tobytes()
    with pytest.raises(RuntimeError, match="inference"):
        layer.backward(np.ones_like(y), no_cache)
    assert cache is not None and keeps_caches()


def test_inference_is_restored_after_the_block_and_after_an_error():
    assert keeps_caches()
    with inference():
        assert not keeps_caches()
        with inference():
            assert not keeps_caches()
        assert not keeps_caches()
    assert keeps_caches()
    with pytest.raises(ValueError):
        with inference():
            raise ValueError("inside")
    assert keeps_caches()


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       seeds)
def test_groupnorm_shift_is_the_norm_of_the_sum(N, G, per_group, H, W, silu, seed):
    """forward(x, shift=e) gives the bytes of forward(x + e[:, :, None, None]) (the ResnetBlock's temb add), and the
    same backward; a shift that is not [N, C] is refused."""
    rng = np.random.default_rng(seed)
    C = G * per_group
    layer = GroupNorm(G, C, eps=1e-6)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, C)
    layer.params["bias"][:] = rng.standard_normal(C)
    x = (rng.standard_normal((N, C, H, W)) * 3 + 1).astype(np.float32)
    e = rng.standard_normal((N, C)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    fused, c_fused = layer.forward(x, silu=silu, shift=e)
    summed, c_summed = layer.forward(x + e[:, :, None, None], silu=silu)
    assert fused.tobytes() == summed.tobytes()
    assert layer.backward(dy, c_fused).tobytes() == layer.backward(dy, c_summed).tobytes()
    with pytest.raises(ValueError, match="is not \\[N, C\\]"):
        layer.forward(x, shift=e[:, :-1] if C > 1 else e[:1, :0])


def test_groupnorm_forward_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3, 3)) * 5 + 2
    y, _ = GroupNorm(3, 6, eps=0.0, affine=False).forward(x)
    groups = y.reshape(2, 3, -1)
    np.testing.assert_allclose(groups.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(groups.std(axis=2), 1, atol=1e-12)


def test_groupnorm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="cannot be split into 4 groups"):
        GroupNorm(4, 6)


@given(st.integers(1, 3), st.integers(1, 5), seeds)
def test_silu_backward_fd(N, D, seed):
    rng = np.random.default_rng(seed)
    check_module(SiLU(), [rng.standard_normal((N, D)) * 3], SiLU().forward, rng)


@given(st.integers(1, 300), st.sampled_from([np.float32, np.float64]), seeds)
def test_silu_matches_expit_and_its_backward_kernel_its_twin(size, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(size) * 8).astype(dtype)
    x[: size // 10] = rng.choice([-120.0, -40.0, 0.0, 40.0, 120.0], size // 10)  # exp over- and underflow
    dy = rng.standard_normal(size).astype(dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-14
    y, cache = SiLU().forward(x)
    np.testing.assert_allclose(y, x * expit(x), rtol=tol, atol=tol)
    dx = SiLU().backward(dy, cache)
    np.testing.assert_allclose(dx, silu_backward_ref(x, expit(x), dy), rtol=tol, atol=tol)
    assert y.dtype == dx.dtype == dtype and np.isfinite(y).all() and np.isfinite(dx).all()


def test_silu_values_and_no_overflow():
    x = np.array([-1000.0, -1.0, 0.0, 2.0, 1000.0])
    y, _ = SiLU().forward(x)
    np.testing.assert_allclose(y, [0.0, -1 / (1 + np.e), 0.0, 2 / (1 + np.exp(-2)), 1000.0], rtol=1e-15, atol=1e-300)


@given(st.sampled_from([0.0, 0.1, 0.5]), seeds)
def test_dropout_backward_fd_with_fixed_seed(p, seed):
    rng = np.random.default_rng(seed)
    layer = Dropout(p)
    check_module(layer, [rng.standard_normal((3, 4, 2, 2))], lambda x: layer.forward(x, np.random.default_rng(seed)), rng)


def test_dropout_eval_identity_and_train_statistics():
    x = np.ones((200, 100))
    y, _ = Dropout(0.25).forward(x)
    assert y is x
    y, _ = Dropout(0.25).forward(x, np.random.default_rng(0))
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.01
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.booleans(), seeds)
def test_upsample_backward_fd(N, C, H, W, with_conv, seed):
    rng = np.random.default_rng(seed)
    layer = Upsample(C, with_conv, rng=rng)
    check_module(layer, [rng.standard_normal((N, C, H, W))], layer.forward, rng)


def test_upsample_nearest_values():
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    y, _ = Upsample(1, False, rng=np.random.default_rng(0)).forward(x)
    np.testing.assert_array_equal(y[0, 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.sampled_from([np.float32, np.float64]),
       seeds)
def test_avg_pool_equals_numpys_mean_over_the_blocks(N, C, h, w, dtype, seed):
    """avg_pool2x writes each block's mean out as ((a + b) + (c + d)) / 4; NumPy's mean over the block axes, which
    it replaced, sums in that order or another (it depends on the shape): they agree to one rounding."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C, 2 * h + 1, 2 * w + 1)) * 10.0 ** rng.integers(-4, 5, (1, C, 1, 1))).astype(dtype)
    blocks = x[:, :, : 2 * h, : 2 * w].reshape(N, C, h, 2, w, 2)                  # odd sizes: the last row/col drop
    means = blocks.astype(np.float64).mean(axis=(3, 5))                           # [N, C, h, w]
    bound = 2 * np.finfo(dtype).eps * np.abs(blocks).astype(np.float64).mean(axis=(3, 5))
    assert np.all(np.abs(avg_pool2x(x) - means) <= bound)


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9), st.sampled_from([np.float32, np.float64]),
       seeds)
def test_upsample_and_avg_pool_kernels_give_their_twins_bytes(N, C, H, W, dtype, seed):
    """Both compilations of each pass (odd sizes: the pool drops the last row and column) against the NumPy twins,
    also on a non-contiguous input."""
    x = (np.random.default_rng(seed).standard_normal((N, C, H, W)) * 3).astype(dtype)  # [N, C, H, W]
    for kernel in upsample_kernel.compilations:
        y = np.empty((N, C, 2 * H, 2 * W), dtype=dtype)
        kernel(x, y)
        assert y.tobytes() == upsample_nearest2x_ref(x).tobytes()
    for kernel in avg_pool_kernel.compilations:
        y = np.empty((N, C, H // 2, W // 2), dtype=dtype)
        kernel(x, y)
        assert y.tobytes() == avg_pool2x_ref(x).tobytes()
    strided = x[:, ::-1]                                                          # [N, C, H, W] view
    assert upsample_nearest2x(strided).tobytes() == upsample_nearest2x_ref(strided).tobytes()
    assert avg_pool2x(strided).tobytes() == avg_pool2x_ref(strided).tobytes()


@given(st.integers(1, 2), st.integers(1, 4), st.integers(2, 7), st.integers(2, 7), st.booleans(), seeds)
def test_downsample_backward_fd(N, C, H, W, with_conv, seed):
    rng = np.random.default_rng(seed)
    layer = Downsample(C, with_conv, rng=rng)
    check_module(layer, [rng.standard_normal((N, C, H, W))], layer.forward, rng)


def test_downsample_matches_ddim_asymmetric_padding():
    """ddim pads (left 0, right 1, top 0, bottom 1) then convolves 3x3 stride 2 without padding."""
    rng = np.random.default_rng(3)
    layer = Downsample(2, True, rng=rng).astype(np.float64)
    x = rng.standard_normal((1, 2, 6, 6))
    y, _ = layer.forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    expected = conv_nested_loops(xp, layer.conv.params["weight"], layer.conv.params["bias"], 2, (0, 0, 0, 0))
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    pooled, _ = Downsample(2, False, rng=rng).forward(x)
    np.testing.assert_allclose(pooled[0, 1, 2, 1], x[0, 1, 4:6, 2:4].mean())


def test_timestep_embedding_ddim_convention():
    t = np.array([0, 1, 999])
    emb = timestep_embedding(t, 8, np.float64)
    freq = np.exp(-np.log(10000.0) * np.arange(4) / 3)
    np.testing.assert_allclose(emb[:, :4], np.sin(t[:, None] * freq))
    np.testing.assert_allclose(emb[:, 4:], np.cos(t[:, None] * freq))
    assert freq[0] == 1.0 and np.isclose(freq[-1], 1e-4)
    odd = timestep_embedding(t, 9, np.float64)
    np.testing.assert_array_equal(odd[:, 8], 0)
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(np.zeros((2, 2)), 8)


def attention_direct(x, block):
    """Per-position loops of ddim's attention, for the forward twin."""
    h, _ = block.norm.forward(x)
    q, k, v = (block.q.forward(h)[0], block.k.forward(h)[0], block.v.forward(h)[0])
    N, C, H, W = x.shape
    o = np.zeros_like(x)
    for n in range(N):
        qf, kf, vf = q[n].reshape(C, -1), k[n].reshape(C, -1), v[n].reshape(C, -1)
        for i in range(H * W):
            logits = np.array([qf[:, i] @ kf[:, j] for j in range(H * W)]) / np.sqrt(C)
            a = np.exp(logits - logits.max())
            a /= a.sum()
            o[n].reshape(C, -1)[:, i] = vf @ a
    return x + block.proj_out.forward(o)[0]


@given(st.integers(1, 2), st.sampled_from([(1, 2), (2, 2), (2, 4)]), st.integers(1, 4), st.integers(1, 4), seeds)
def test_attention_backward_fd_and_forward_twin(N, groups_ch, H, W, seed):
    groups, C = groups_ch
    rng = np.random.default_rng(seed)
    block = AttnBlock(C, rng=rng, groups=groups)
    x = rng.standard_normal((N, C, H, W))
    check_module(block, [x], block.forward, rng)
    np.testing.assert_allclose(block.forward(x)[0], attention_direct(x, block), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tiles", [True, False])
def test_attention_by_register_tiles_and_by_matmuls(tiles):
    """At 64 positions and more the forward runs its products by register tiles where they are wider than BLAS's
    kernels (attention.py): forced on and off on every machine, the per-position twin's values and an FD-checked
    backward through the transposed attention it caches."""
    rng = np.random.default_rng(4)
    block = AttnBlock(8, rng=rng, groups=2)
    for name, value in block.named_parameters():
        value[...] = rng.standard_normal(value.shape) * 0.2                      # proj_out is not zero
    x = rng.standard_normal((2, 8, 8, 9))                                         # [N, C, H, W]: 72 positions
    with mock.patch.object(conv_direct, "TILES_WIDER_THAN_BLAS", tiles):
        assert attention_tiles_fit(x) is tiles
        np.testing.assert_allclose(block.forward(x)[0], attention_direct(x, block), rtol=1e-10, atol=1e-12)
        check_module(block, [x], block.forward, rng)


@given(st.integers(1, 2), st.sampled_from([(2, 2), (2, 4), (4, 2)]), st.integers(1, 4), st.integers(1, 4),
       st.booleans(), st.sampled_from([0.0, 0.3]), seeds)
def test_resnet_block_backward_fd(N, chans, H, W, conv_shortcut, p, seed):
    ci, co = chans
    rng = np.random.default_rng(seed)
    block = ResnetBlock(ci, co, 5, p, rng=rng, conv_shortcut=conv_shortcut, groups=2)
    inputs = [rng.standard_normal((N, ci, H, W)), rng.standard_normal((N, 5))]
    check_module(block, inputs, lambda x, e: block.forward(x, e, np.random.default_rng(seed)), rng)


def test_resnet_block_names_follow_ddim():
    rng = np.random.default_rng(0)
    names = [n for n, _ in ResnetBlock(4, 8, 6, 0.1, rng=rng, conv_shortcut=True, groups=2).named_parameters()]
    assert names == [
        "norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "temb_proj.weight", "temb_proj.bias",
        "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias", "conv_shortcut.weight", "conv_shortcut.bias",
    ]


def test_registry_zero_grad_and_state_dict():
    rng = np.random.default_rng(0)
    root = Module()
    root.add_child("a", Linear(2, 3, rng=rng))
    y, c = root.children["a"].forward(np.ones((1, 2), np.float32))
    root.children["a"].backward(np.ones_like(y), c)
    assert any(g.any() for _, g in root.named_grads())
    root.zero_grad()
    assert not any(g.any() for _, g in root.named_grads())
    state = {k: v + 1 for k, v in root.state_dict().items()}
    root.load_state_dict(state)
    np.testing.assert_array_equal(root.state_dict()["a.bias"], state["a.bias"])
    with pytest.raises(KeyError, match="missing"):
        root.load_state_dict({"a.weight": state["a.weight"]})
    with pytest.raises(ValueError, match="a.bias: model has shape"):
        root.load_state_dict({"a.weight": state["a.weight"], "a.bias": np.zeros(4)})
