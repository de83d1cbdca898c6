"""Binary layers: surrogate finite differences, exact forward twins, full mode, sign(0) = +1."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bidm_ref.binary.bidm_layers import BIDM, XNOR, XNOR_LEARN_K, BinaryConv2d, BinaryLinear
from bidm_ref.binary.methods import METHODS, BinaryLayers, get_method
from bidm_ref.binary.quantizers import ApproxSign, ClippedSign, ScaledSignWeights, sign
from bidm_ref.nn.conv import Conv2d
from bidm_ref.nn.linear import Linear
from binarycheck import away_from_kinks, randomise, surrogate_mode
from fdcheck import check_module
from reference_ops import conv_nested_loops, pm1, shortcut_reference

seeds = st.integers(0, 2**31 - 1)
OPTIONS = {"bidm": BIDM, "xnor": XNOR, "xnor_k": XNOR_LEARN_K}


conv_cases = st.tuples(
    st.sampled_from(sorted(OPTIONS)), st.integers(1, 2), st.integers(1, 4), st.integers(1, 4),
    st.integers(2, 6).map(lambda v: 2 * (v // 2)), st.sampled_from([(1, 0), (3, 1), (3, (0, 1, 0, 1))]),
    st.sampled_from([1, 2]), seeds,
)


def conv_case(case):
    """(layer, x, rng) of a drawn case; cases whose FP shortcut cannot match the output shape are skipped."""
    method, N, C, O, HW, (k, pad), stride, seed = case
    rng = np.random.default_rng(seed)
    layer = BinaryConv2d(C, O, k, stride, pad, rng=rng, options=OPTIONS[method]).astype(np.float64)
    randomise(layer, rng)
    x = away_from_kinks(rng.standard_normal((N, C, HW, HW)))
    try:
        layer.forward(x)
    except ValueError as err:
        assume("shortcut" not in str(err))
        raise
    return layer, x, rng


@given(conv_cases)
def test_binary_conv_surrogate_fd(case):
    layer, x, rng = conv_case(case)
    with surrogate_mode(layer):
        check_module(layer, [x], layer.forward, rng, rtol=1e-5)


def scaled_conv_reference(layer, x):
    """§1 by definition in float64: ±1 conv by loops, alpha, K map by loops, shortcut."""
    w = layer.params["weight"]
    k_w = layer.params.get("k_weight", np.full((1, 1, *w.shape[2:]), 1.0 / (w.shape[2] * w.shape[3])))
    k_b = layer.params.get("k_bias", np.zeros(1))
    tau = layer.params.get("tau", np.zeros(x.shape[1]))
    alpha = np.abs(w).reshape(w.shape[0], -1).mean(axis=1)
    z = conv_nested_loops(pm1(x + tau[:, None, None]), pm1(w), None, layer.stride, layer.padding)
    z *= alpha[None, :, None, None]
    k_map = conv_nested_loops(np.abs(x).mean(axis=1, keepdims=True), k_w, k_b, layer.stride, layer.padding)
    conv = None if layer.shortcut is None else (layer.shortcut.params["weight"], layer.shortcut.params["bias"])
    return z * k_map + layer.params["shortcut_scale"] * shortcut_reference(x, layer.stride, conv)


@given(conv_cases)
def test_binary_conv_forward_equals_definition(case):
    layer, x, _ = conv_case(case)
    y, _ = layer.forward(x)
    np.testing.assert_allclose(y, scaled_conv_reference(layer, x), rtol=1e-10, atol=1e-10)


def test_sign_of_zero_is_plus_one_in_every_path():
    z = np.array([-0.0, 0.0, -1e-30, 1e-30])
    np.testing.assert_array_equal(sign(z), [1, 1, -1, 1])
    for q in (ApproxSign(), ClippedSign()):
        np.testing.assert_array_equal(q(z), [1, 1, -1, 1])
    rng = np.random.default_rng(0)
    layer = BinaryConv2d(2, 2, 1, 1, 0, rng=rng, options=BIDM).astype(np.float64)
    layer.params["weight"][...] = np.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)
    x = np.zeros((1, 2, 1, 1))
    x[0, 1] = 0.5
    y, _ = layer.forward(x)
    # sign(0)=+1 for both the weight 0 and the input 0; alpha = 0.5 for both rows; K = mean|x| = 0.25
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5 * (1 + 1) * 0.25, 0.5 * (1 - 1) * 0.25])


def test_quantizer_pseudo_gradients_match_their_surrogates():
    u = np.array([-1.5, -0.75, -0.25, 0.25, 0.75, 1.5])
    h = 1e-7
    for q in (ApproxSign(), ClippedSign(), ScaledSignWeights()):
        numeric = (q.surrogate(u + h) - q.surrogate(u - h)) / (2 * h)
        np.testing.assert_allclose(q.grad(u, np.ones_like(u)), numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ApproxSign().grad(u, np.ones_like(u)), [0, 0.5, 1.5, 1.5, 0.5, 0])
    edges = np.array([-1.0, -0.0, 0.0, 1.0, 1 - 2**-24], dtype=np.float32)      # the kinks and the last float below 1
    slope = ApproxSign().grad(edges, np.ones_like(edges))
    assert slope.dtype == np.float32 and not np.signbit(slope).any()            # outside |u| < 1 an exact +0
    np.testing.assert_array_equal(slope, [0, 2, 2, 0, 2**-23])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_full_mode_equals_the_fp_layers(method):
    rng = np.random.default_rng(0)
    m = get_method(method)
    conv = m.conv(3, 5, 3, 2, (0, 1, 0, 1), 8, rng).astype(np.float64)
    fp = Conv2d(3, 5, 3, 2, (0, 1, 0, 1), rng=rng).astype(np.float64)
    fp.params["weight"][...] = conv.params["weight"]
    fp.params["bias"][...] = conv.params["bias"]
    conv.binarize = False
    x = rng.standard_normal((2, 3, 8, 8))
    np.testing.assert_array_equal(conv.forward(x)[0], fp.forward(x)[0])
    check_module(conv, [x], conv.forward, rng)
    lin = m.linear(4, 6, rng).astype(np.float64)
    fpl = Linear(4, 6, rng=rng).astype(np.float64)
    fpl.load_state_dict({"weight": lin.params["weight"], "bias": lin.params["bias"]})
    lin.binarize = False
    v = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(lin.forward(v)[0], fpl.forward(v)[0])


@given(st.sampled_from(sorted(OPTIONS)), st.integers(1, 3), st.integers(1, 70), st.integers(1, 5), seeds)
def test_binary_linear_surrogate_fd_and_definition(method, N, I, O, seed):
    rng = np.random.default_rng(seed)
    layer = BinaryLinear(I, O, rng=rng, options=OPTIONS[method]).astype(np.float64)
    randomise(layer, rng)
    x = away_from_kinks(rng.standard_normal((N, I)))
    tau = layer.params.get("tau", np.zeros(I))
    w = layer.params["weight"]
    expected = pm1(x + tau) @ (pm1(w) * np.abs(w).mean(axis=1, keepdims=True)).T
    np.testing.assert_allclose(layer.forward(x)[0], expected, rtol=1e-12, atol=1e-12)
    with surrogate_mode(layer):
        check_module(layer, [x], layer.forward, rng)


def test_binary_layers_factory_and_errors():
    rng = np.random.default_rng(0)
    layer = BinaryLayers("bidm").at(16).conv(4, 8, 3, 1, 1, rng=rng)
    assert sorted(layer.params) == ["bias", "k_bias", "k_weight", "shortcut_scale", "tau", "weight"]
    assert [n for n, _ in layer.named_parameters()][-2:] == ["shortcut.weight", "shortcut.bias"]
    assert sorted(BinaryLayers("xnor").conv(4, 4, 3, 1, 1, rng=rng).params) == ["bias", "shortcut_scale", "weight"]
    with pytest.raises(ValueError, match="unknown binarization method"):
        BinaryLayers("ternary")
    with pytest.raises(ValueError, match="stride 1 or 2"):
        BinaryConv2d(2, 2, 3, 3, 1, rng=rng)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_binary_conv_shares_the_switchable_full_mode(method):
    from bidm_ref.binary.switchable import SwitchableConv2d

    conv = get_method(method).conv(2, 3, 3, 1, 1, 4, np.random.default_rng(0))
    assert isinstance(conv, SwitchableConv2d) and conv.binarize
