"""Adam, gradient-norm clipping and EMA against closed forms and an independent textbook Adam."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from bidm_ref.train.adam import PARALLEL_MIN, Adam, AdamConfig, AdamScalars, adam_update, adam_update_ref
from bidm_ref.train.clip import clip_grad_norm
from bidm_ref.train.ema import EMA, ema_update, ema_update_ref

seeds = st.integers(0, 2**31 - 1)


def textbook_adam(p0, grad_fn, steps, lr, beta1, beta2, eps, weight_decay):
    """Kingma & Ba's Adam with torch's L2 term, written from the paper's formulas in float64."""
    p = np.array(p0, dtype=np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grad_fn(p) + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def quadratic(shape, rng):
    """f(p) = 0.5 * sum(a * (p - c)^2): returns (p0, a, c, grad function)."""
    a = rng.uniform(0.1, 3.0, size=shape)
    c = rng.normal(size=shape)
    p0 = rng.normal(size=shape)
    return p0, lambda p: a * (p - c)


def run_adam(config, p0, grad_fn, steps, dtype):
    """Our Adam on one parameter named like a model's, gradients recomputed each step."""
    params = {"down.0.conv.weight": p0.astype(dtype)}
    opt = Adam(config)
    for _ in range(steps):
        grads = {"down.0.conv.weight": grad_fn(params["down.0.conv.weight"]).astype(dtype)}
        opt.step(params, grads)
    return params["down.0.conv.weight"], opt


@given(
    shape=array_shapes(min_dims=0, max_dims=3, max_side=5),
    seed=seeds,
    lr=st.floats(1e-4, 0.3),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    steps=st.integers(1, 8),
)
def test_adam_matches_textbook_float64(shape, seed, lr, beta1, beta2, weight_decay, steps):
    p0, grad_fn = quadratic(shape, np.random.default_rng(seed))
    config = AdamConfig(lr=lr, beta1=beta1, beta2=beta2, eps=1e-8, weight_decay=weight_decay)
    ours, opt = run_adam(config, p0, grad_fn, steps, np.float64)
    expected = textbook_adam(p0, grad_fn, steps, lr, beta1, beta2, 1e-8, weight_decay)
    np.testing.assert_allclose(ours, expected, rtol=1e-11, atol=1e-12)
    assert opt.t == steps


def test_adam_float32_stays_float32_and_tracks_textbook():
    p0, grad_fn = quadratic((4, 3, 3, 3), np.random.default_rng(1))
    config = AdamConfig(lr=1e-2, weight_decay=0.1)
    ours, opt = run_adam(config, p0, grad_fn, 20, np.float32)
    expected = textbook_adam(p0, grad_fn, 20, 1e-2, 0.9, 0.999, 1e-8, 0.1)
    assert ours.dtype == np.float32
    assert opt.m["down.0.conv.weight"].dtype == np.float32 and opt.v["down.0.conv.weight"].dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5)


def test_adam_first_step_closed_form_in_place():
    # step 1: m_hat = g, v_hat = g^2, so p1 = p0 - lr * g / (|g| + eps)
    p = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    g = np.array([0.25, -4.0, 1e-3, 0.0], dtype=np.float32)
    params = {"w": p}
    Adam(AdamConfig(lr=0.01, eps=1e-3)).step(params, {"w": g})
    expected = np.array([1.0, -2.0, 0.5, 3.0]) - 0.01 * np.array([0.25 / 0.251, -4.0 / 4.001, 1e-3 / 2e-3, 0.0])
    assert params["w"] is p
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=0)


def test_adam_weight_decay_is_l2_not_decoupled():
    # zero gradient: only the L2 term wd * p drives the update, so step 1 moves p by lr * sign(p);
    # decoupled decay (AdamW) would instead shrink p by the factor (1 - lr * wd) to [1.96, -2.94]
    p = np.array([2.0, -3.0])
    Adam(AdamConfig(lr=0.1, eps=0.0, weight_decay=0.2)).step({"w": p}, {"w": np.zeros(2)})
    np.testing.assert_allclose(p, [1.9, -2.9], rtol=1e-14)


@pytest.mark.parametrize("size", [7, PARALLEL_MIN + 3])                  # the serial and the threaded kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_adam_kernel_gives_the_numpy_twins_bytes(size, dtype, weight_decay):
    rng = np.random.default_rng(size)
    cfg = AdamConfig(lr=3e-3, weight_decay=weight_decay)
    ours = [rng.normal(size=size).astype(dtype), np.zeros(size, dtype), np.zeros(size, dtype)]  # p, m, v
    twin = [a.copy() for a in ours]
    for t in range(1, 6):
        grad = (rng.normal(size=size) * 10.0 ** rng.integers(-6, 3, size)).astype(dtype)  # magnitudes over 9 decades
        adam_update(*ours[:1], grad, *ours[1:], AdamScalars.at_step(cfg, t, cfg.lr))
        adam_update_ref(*twin[:1], grad, *twin[1:], AdamScalars.at_step(cfg, t, cfg.lr))
        for a, b in zip(ours, twin):
            assert a.dtype == dtype and a.tobytes() == b.tobytes()


def test_adam_kernel_divides_by_zero_as_numpy_does():
    # eps 0 and a zero gradient: 0 / 0 in the update, NaN in NumPy (no exception), and the same bytes in the kernel
    scalars = AdamScalars.at_step(AdamConfig(eps=0.0), 1, 2e-4)
    ours = [np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)]
    twin = [a.copy() for a in ours]
    grad = np.array([0.0, 1.0, 0.0, -2.0], np.float32)
    adam_update(ours[0], grad, ours[1], ours[2], scalars)
    with np.errstate(invalid="ignore"):
        adam_update_ref(twin[0], grad, twin[1], twin[2], scalars)
    assert np.isnan(ours[0][[0, 2]]).all() and np.isfinite(ours[0][[1, 3]]).all()
    assert ours[0].tobytes() == twin[0].tobytes()


def test_adam_takes_a_strided_gradient_and_refuses_a_strided_parameter():
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(6, 4)).astype(np.float32).T                      # [4, 6], not C-contiguous
    p, m, v = rng.normal(size=(4, 6)).astype(np.float32), np.zeros((4, 6), np.float32), np.zeros((4, 6), np.float32)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    scalars = AdamScalars.at_step(AdamConfig(), 1, 2e-4)
    adam_update(p, grad, m, v, scalars)
    adam_update_ref(p_ref, grad, m_ref, v_ref, scalars)
    assert p.tobytes() == p_ref.tobytes() and m.tobytes() == m_ref.tobytes()
    with pytest.raises(ValueError, match="parameter \\[6, 4\\] is not C-contiguous"):
        adam_update(p.T, grad.T, m.T, v.T, scalars)


def test_adam_step_at_a_scheduled_lr_equals_a_config_of_that_lr():
    rng = np.random.default_rng(4)
    grads = [{"w": rng.standard_normal((3, 5)).astype(np.float32)} for _ in range(3)]
    configured, scheduled = {"w": np.ones((3, 5), np.float32)}, {"w": np.ones((3, 5), np.float32)}
    by_config, by_step = Adam(AdamConfig(lr=3e-3)), Adam(AdamConfig(lr=1.0))
    for g in grads:
        by_config.step(configured, g)
        by_step.step(scheduled, g, lr=3e-3)
    np.testing.assert_array_equal(scheduled["w"], configured["w"])
    assert not np.array_equal(configured["w"], np.ones((3, 5), np.float32))


def test_adam_refuses_mismatched_grads():
    opt = Adam()
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        opt.step({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2)})
    with pytest.raises(ValueError, match="a is float64\\[3\\]"):
        opt.step({"a": np.zeros(2)}, {"a": np.zeros(3)})


def test_adam_config_refuses_bad_values():
    with pytest.raises(ValueError, match="beta1"):
        AdamConfig(beta1=1.0)
    with pytest.raises(ValueError, match="lr"):
        AdamConfig(lr=0.0)


def test_clip_known_vector_3_4_5():
    grads = {"a": np.array([3.0], dtype=np.float32), "b.c": np.array([[4.0]], dtype=np.float32)}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == 5.0
    np.testing.assert_allclose(grads["a"], [3.0 / (5.0 + 1e-6)], rtol=1e-7)
    np.testing.assert_allclose(grads["b.c"], [[4.0 / (5.0 + 1e-6)]], rtol=1e-7)
    assert grads["a"].dtype == np.float32


def test_clip_leaves_small_gradients_untouched():
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert clip_grad_norm(grads, max_norm=10.0) == 5.0
    assert grads["a"][0] == 3.0 and grads["b"][0] == 4.0


@given(seed=seeds, n_arrays=st.integers(1, 4), max_norm=st.floats(0.01, 100.0))
def test_clip_norm_and_result(seed, n_arrays, max_norm):
    rng = np.random.default_rng(seed)
    grads = {f"g.{i}": rng.normal(size=rng.integers(1, 20, size=2)).astype(np.float32) for i in range(n_arrays)}
    expected_norm = math.sqrt(math.fsum(float(x) ** 2 for g in grads.values() for x in g.ravel()))
    before = {name: g.copy() for name, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    scale = min(1.0, max_norm / (expected_norm + 1e-6))
    for name in grads:
        np.testing.assert_allclose(grads[name], before[name] * scale, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_nonfinite_raises_and_leaves_grads(bad):
    grads = {"a": np.array([1.0, bad], dtype=np.float32)}
    with pytest.raises(FloatingPointError, match="diverged.*NaN/Inf gradient.*learning rate"):
        clip_grad_norm(grads, 1.0)
    assert grads["a"][0] == 1.0


def test_ema_closed_form_on_constant():
    # shadow_k = c + mu^k (s0 - c) for constant parameter c
    s0 = np.array([1.0, -2.0, 4.0])
    c = np.array([0.5, 0.5, -1.0])
    ema = EMA(decay=0.9)
    ema.register({"w": s0})
    for _ in range(7):
        ema.update({"w": c})
    np.testing.assert_allclose(ema.shadow["w"], c + 0.9**7 * (s0 - c), rtol=1e-14)


@given(seed=seeds, k=st.integers(1, 10), decay=st.floats(0.0, 1.0))
def test_ema_weighted_sum_of_history(seed, k, decay):
    # shadow_k = mu^k p_0 + (1 - mu) * sum_{j=1..k} mu^(k-j) p_j
    rng = np.random.default_rng(seed)
    history = rng.normal(size=(k + 1, 3))
    ema = EMA(decay)
    ema.register({"w": history[0]})
    for j in range(1, k + 1):
        ema.update({"w": history[j]})
    expected = decay**k * history[0] + (1 - decay) * sum(decay ** (k - j) * history[j] for j in range(1, k + 1))
    np.testing.assert_allclose(ema.shadow["w"], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("size", [5, PARALLEL_MIN + 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ema_kernel_gives_the_numpy_twins_bytes(size, dtype):
    rng = np.random.default_rng(size)
    ours = rng.normal(size=size).astype(dtype)
    twin = ours.copy()
    for decay in (0.9999, 0.5, 0.0, 1.0):
        p = rng.normal(size=size).astype(dtype)
        ema_update(ours, p, decay)
        ema_update_ref(twin, p, decay)
        assert ours.tobytes() == twin.tobytes()


def test_ema_register_copies_and_keeps_dtype():
    p = np.ones(3, dtype=np.float32)
    ema = EMA(0.5)
    ema.register({"w": p})
    p[...] = 3.0
    ema.update({"w": p})
    assert ema.shadow["w"].dtype == np.float32
    np.testing.assert_array_equal(ema.shadow["w"], [2.0, 2.0, 2.0])


def test_ema_swapped_into_restores_even_on_error():
    trained = np.array([1.0, 2.0])
    params = {"w": trained}
    ema = EMA(0.5)
    ema.register({"w": np.array([9.0, 9.0])})
    with ema.swapped_into(params):
        assert params["w"] is trained
        np.testing.assert_array_equal(trained, [9.0, 9.0])
    np.testing.assert_array_equal(trained, [1.0, 2.0])
    with pytest.raises(RuntimeError, match="boom"), ema.swapped_into(params):
        raise RuntimeError("boom")
    np.testing.assert_array_equal(trained, [1.0, 2.0])
    ema.copy_to(params)
    np.testing.assert_array_equal(trained, [9.0, 9.0])


def test_ema_refuses_use_before_register_and_mismatch():
    ema = EMA()
    with pytest.raises(ValueError, match="register"):
        ema.update({"w": np.zeros(2)})
    ema.register({"w": np.zeros(2)})
    with pytest.raises(ValueError, match="EMA shadows"):
        ema.update({"w": np.zeros(3)})
