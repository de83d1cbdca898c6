"""Baseline binarizers of docs/METHOD.md §8 (XNOR++, DoReFa, ReActNet, ReSTE): surrogate finite differences,
forward equal to each method's definition in float64, sign(0) = +1, the new quantizers, ReSTE's schedule,
XNOR++'s Gamma sizing. (The FP "full" mode of every method is checked in test_binary_layers.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.binary.methods import METHODS, get_method
from bidm_ref.binary.quantizers import LayerScaledSignWeights, RectifiedSign
from bidm_ref.binary.reste import ReSTEConv2d
from binarycheck import away_from_kinks, randomise, surrogate_mode
from fdcheck import check_module
from reference_ops import conv_nested_loops, pm1, shortcut_reference

BASELINES = ("xnorpp", "dorefa", "reactnet", "reste")
KINKS = {"xnorpp": (1.0,), "dorefa": (1.0,), "reactnet": (1.0,), "reste": (0.1, 1.5)}   # besides 0, per surrogate
seeds = st.integers(0, 2**31 - 1)
channels = st.one_of(st.integers(1, 8), st.integers(9, 70))


@st.composite
def conv_cases(draw):
    """(method, N, C, O, HW, k, pad, stride, progress, seed); big channel counts get small images (loops are slow)."""
    method, C, O = draw(st.sampled_from(BASELINES)), draw(channels), draw(channels)
    k, pad = draw(st.sampled_from([(1, 0), (3, 1), (3, (0, 1, 0, 1))]))
    small = C * O <= 64
    N = draw(st.integers(1, 2)) if small else 1
    HW = draw(st.sampled_from([2, 4, 6] if small else [2, 4]))
    return method, N, C, O, HW, k, pad, draw(st.sampled_from([1, 2])), draw(st.floats(0, 1)), draw(seeds)


def set_up_conv(case):
    """The method's conv (float64, parameters randomised off the kinks) and an input x off the kinks."""
    method, N, C, O, HW, k, pad, stride, progress, seed = case
    rng = np.random.default_rng(seed)
    layer = get_method(method).conv(C, O, k, stride, pad, HW, rng).astype(np.float64)
    if method == "reste":
        layer.set_progress(progress)
    randomise(layer, rng, kinks=KINKS[method])
    tau = layer.params.get("tau", np.zeros(C))[:, None, None]                     # [C, 1, 1]
    x = away_from_kinks(rng.standard_normal((N, C, HW, HW)) + tau, kinks=KINKS[method]) - tau  # x + tau off the kinks
    try:
        layer.forward(x)
    except ValueError as err:
        assume("shortcut" not in str(err))   # ReActNet's identity shortcut needs Ho = H (stride 1, pad (0,1,0,1))
        raise
    return method, layer, x, rng


def rprelu_shift_off_kinks(layer, x):
    """Put each channel's RPReLU shift-in in the widest gap between its pre-activations r (its kink is at r = gamma)."""
    p = layer.params
    beta, zeta = p["rprelu_beta"].copy(), p["rprelu_zeta"].copy()
    p["rprelu_gamma"][...], p["rprelu_beta"][...], p["rprelu_zeta"][...] = 0, 1, 0
    r = layer.forward(x)[0]                                                       # identity RPReLU: y = r
    p["rprelu_beta"][...], p["rprelu_zeta"][...] = beta, zeta
    for o in range(r.shape[1]):
        values = np.unique(r[:, o])
        gap = int(np.argmax(np.diff(values))) if len(values) > 1 else None
        p["rprelu_gamma"][o] = values[0] - 0.5 if gap is None else (values[gap] + values[gap + 1]) / 2
    assume(np.abs(r - p["rprelu_gamma"][:, None, None]).min() > 1e-4)


@given(conv_cases())
def test_baseline_conv_surrogate_fd(case):
    method, layer, x, rng = set_up_conv(case)
    if method == "reactnet":
        rprelu_shift_off_kinks(layer, x)
    with surrogate_mode(layer):
        check_module(layer, [x], layer.forward, rng, rtol=1e-5)


def conv_definition(method, layer, x):
    """Each method's conv by definition in float64: +-1 conv by loops times the method's scales."""
    p, w = layer.params, layer.params["weight"]

    def pm1_conv(u):
        return conv_nested_loops(pm1(u), pm1(w), None, layer.stride, layer.padding)

    if method == "xnorpp":
        gamma = p["gamma_out"][:, None, None] * p["gamma_h"][None, :, None] * p["gamma_w"][None, None, :]
        return pm1_conv(x) * gamma
    if method in ("dorefa", "reste"):
        return pm1_conv(x) * np.abs(w).mean()
    alpha = np.abs(w).reshape(w.shape[0], -1).mean(axis=1)[:, None, None]
    conv = None if layer.shortcut is None else (layer.shortcut.params["weight"], layer.shortcut.params["bias"])
    r = pm1_conv(x + p["tau"][:, None, None]) * alpha + p["shortcut_scale"] * shortcut_reference(x, layer.stride, conv)
    v = r - p["rprelu_gamma"][:, None, None]
    return np.where(v > 0, v, p["rprelu_beta"][:, None, None] * v) + p["rprelu_zeta"][:, None, None]


@given(conv_cases())
def test_baseline_conv_forward_equals_definition(case):
    method, layer, x, _ = set_up_conv(case)
    np.testing.assert_allclose(layer.forward(x)[0], conv_definition(method, layer, x), rtol=1e-10, atol=1e-10)


def linear_definition(method, layer, x):
    p, w = layer.params, layer.params["weight"]
    if method == "xnorpp":
        return pm1(x) @ pm1(w).T * p["gamma_out"]
    if method in ("dorefa", "reste"):
        return pm1(x) @ pm1(w).T * np.abs(w).mean()
    return pm1(x + p["tau"]) @ (pm1(w) * np.abs(w).mean(axis=1, keepdims=True)).T


@given(st.sampled_from(BASELINES), st.integers(1, 3), channels, channels, st.floats(0, 1), seeds)
def test_baseline_linear_surrogate_fd_and_definition(method, N, I, O, progress, seed):
    rng = np.random.default_rng(seed)
    layer = get_method(method).linear(I, O, rng).astype(np.float64)
    if method == "reste":
        layer.set_progress(progress)
    randomise(layer, rng, kinks=KINKS[method])
    tau = layer.params.get("tau", np.zeros(I))                                    # [I]
    x = away_from_kinks(rng.standard_normal((N, I)) + tau, kinks=KINKS[method]) - tau
    np.testing.assert_allclose(layer.forward(x)[0], linear_definition(method, layer, x), rtol=1e-12, atol=1e-12)
    with surrogate_mode(layer):
        check_module(layer, [x], layer.forward, rng)


@pytest.mark.parametrize("method", BASELINES)
def test_sign_of_zero_is_plus_one(method):
    # W = [[1, 0], [0, -1]], x = (0, 0.5): with sign(0) = +1, sign(x) = (1, 1), sign(W) = [[1, 1], [1, -1]],
    # so the +-1 products are (2, 0). Every method's scale is 0.5 here: XNOR++ a = mean|W[o]| = (0.5, 0.5)
    # (b = c = 1), DoReFa and ReSTE E = mean|W| = 2/4, ReActNet alpha = (0.5, 0.5) with tau = 0, s = 0 and
    # RPReLU at init (gamma = zeta = 0: 1 -> 1, 0 -> 0). Expected (1, 0); sign(0) = 0 would give (0, -0.5).
    rng = np.random.default_rng(0)
    m = get_method(method)
    w = np.array([[1.0, 0.0], [0.0, -1.0]])
    conv, lin = m.conv(2, 2, 1, 1, 0, 1, rng).astype(np.float64), m.linear(2, 2, rng).astype(np.float64)
    for layer in (conv, lin):
        layer.params["weight"][...] = w.reshape(layer.params["weight"].shape)
        if method == "xnorpp":
            layer.init_from_weights()
    np.testing.assert_allclose(conv.forward(np.array([0.0, 0.5]).reshape(1, 2, 1, 1))[0].ravel(), [1, 0])
    np.testing.assert_allclose(lin.forward(np.array([[0.0, 0.5]]))[0].ravel(), [1, 0])


def test_rectified_sign_slopes_surrogate_and_hand_values():
    u = np.array([-2.0, -1.2, -0.5, -0.05, 0.03, 0.3, 0.9, 1.4, 1.7])
    h = 1e-7
    for o in (1.0, 2.0, 3.0):
        q = RectifiedSign(o=o)
        numeric = (q.surrogate(u + h) - q.surrogate(u - h)) / (2 * h)
        np.testing.assert_allclose(q.grad(u, np.ones_like(u)), numeric, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(q(u), np.where(u >= 0, 1.0, -1.0))
    q = RectifiedSign(o=1.0)   # o = 1: the clipped STE on [-1.5, 1.5]
    np.testing.assert_allclose(q.grad(u, np.ones_like(u)), [0, 1, 1, 1, 1, 1, 1, 1, 0])
    q = RectifiedSign(o=3.0)   # secant 0.1^(1/3) / 0.1 = 10^(2/3) near 0, (1/3) |u|^(-2/3) up to 1.5, 0 beyond
    slopes = q.grad(np.array([0.05, -0.1, 0.8, 1.5, 1.6]), np.ones(5))
    np.testing.assert_allclose(slopes, [10 ** (2 / 3), 10 ** (2 / 3), 0.8 ** (-2 / 3) / 3, 1.5 ** (-2 / 3) / 3, 0])
    # surrogate: the line through (0, 0) and (0.1, 0.1^(1/3)), then the cube root, flat beyond 1.5
    np.testing.assert_allclose(q.surrogate(np.array([0.05, 0.1, -0.8, 2.0])),
                               [0.05 * 10 ** (2 / 3), 0.1 ** (1 / 3), -(0.8 ** (1 / 3)), 1.5 ** (1 / 3)])


def test_layer_scaled_sign_weights():
    w = np.array([[1.0, -3.0], [0.0, 2.0]])
    q = LayerScaledSignWeights()
    np.testing.assert_array_equal(q(w), [[1.5, -1.5], [1.5, 1.5]])   # E = (1 + 3 + 0 + 2) / 4, sign(0) = +1
    dv = np.array([[0.3, -2.0], [5.0, 0.1]])
    np.testing.assert_array_equal(q.grad(w, dv), dv)                   # identity STE, no clipping
    np.testing.assert_array_equal(q.surrogate(w), w)


def test_reste_schedule_and_errors():
    rng = np.random.default_rng(0)
    layer = get_method("reste").conv(2, 3, 3, 1, 1, 4, rng)
    lin = get_method("reste").linear(2, 3, rng)
    for progress, o in ((0.0, 1.0), (0.5, 3 - math.sqrt(2)), (1.0, 3.0)):   # 1 + 2 (1 - cos(pi p / 2))
        for m in (layer, lin):
            m.set_progress(progress)
            assert m.act.o == pytest.approx(o, abs=1e-12) and m.weights.o == pytest.approx(o, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layer.set_progress(1.5)
    with pytest.raises(ValueError, match="o_end"):
        ReSTEConv2d(2, 3, 3, 1, 1, rng=rng, o_end=0.5)


def test_xnorpp_gamma_sizes_init_and_resolution_errors():
    rng = np.random.default_rng(0)
    m = get_method("xnorpp")
    down = m.conv(2, 3, 3, 2, (0, 1, 0, 1), 8, rng)       # (8 + 1 - 3) // 2 + 1 = 4
    assert down.params["gamma_h"].shape == (4,) and down.params["gamma_w"].shape == (4,)
    lopsided = m.conv(1, 1, 3, 1, (0, 1, 1, 1), 8, rng)   # H: 8 + 1 - 3 + 1 = 7, W: 8 + 2 - 3 + 1 = 8
    assert lopsided.params["gamma_h"].shape == (7,) and lopsided.params["gamma_w"].shape == (8,)
    down.params["weight"][...] = 0.5
    down.params["weight"][1] = -2.0
    down.init_from_weights()
    np.testing.assert_array_equal(down.params["gamma_out"], [0.5, 2.0, 0.5])
    with pytest.raises(ValueError, match="resolution"):
        down.forward(np.ones((1, 2, 6, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="BinaryLayers"):
        m.conv(2, 3, 3, 1, 1, 0, rng)


def test_baselines_are_registered():
    assert set(BASELINES) <= set(METHODS)
    rng = np.random.default_rng(0)
    names = {method: sorted(get_method(method).conv(4, 8, 3, 1, 1, 8, rng).params) for method in BASELINES}
    assert names["xnorpp"] == ["bias", "gamma_h", "gamma_out", "gamma_w", "weight"]
    assert names["dorefa"] == names["reste"] == ["bias", "weight"]
    assert names["reactnet"] == ["bias", "rprelu_beta", "rprelu_gamma", "rprelu_zeta", "shortcut_scale", "tau", "weight"]
