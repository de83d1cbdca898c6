"""TBS and SPD: finite differences in float64, identities, the sampler's cache, the 3-pass step by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidm_ref.bidm.config import BiDMConfig
from bidm_ref.bidm.objective import BiDMObjective
from bidm_ref.bidm.spd import l2_loss, spd_loss
from bidm_ref.bidm.tbs import attach_tbs, last_units_tbs
from bidm_ref.diffusion.loss import draw_timesteps, noise_loss
from bidm_ref.diffusion.schedule import Schedule
from bidm_ref.bidm.student import build_student
from bidm_ref.models.unet import UNet
from binarycheck import away_from_kinks, surrogate_mode
from fdcheck import assert_close, directional_fd
from samplercheck import sampler_caches
from test_student import SMALL

seeds = st.integers(0, 2**31 - 1)


def micro_pair(seed=0, connections=2):
    rng = np.random.default_rng(seed)
    teacher = UNet(SMALL, rng=rng).astype(np.float64)
    student = build_student(SMALL, "bidm", teacher.state_dict(), rng).astype(np.float64)
    attach_tbs(student, connections, 1000)
    student.astype(np.float64)
    return teacher, student


@given(st.integers(1, 3), st.integers(1, 3), seeds)
def test_tbs_mixing_fd_including_the_table(N, C, seed):
    rng = np.random.default_rng(seed)
    tbs = last_units_tbs(num_units=5, first_decoder_unit=2, connections=2, num_timesteps=1000).astype(np.float64)
    tbs.params["a"][...] = rng.uniform(0, 1, tbs.params["a"].shape)
    t = rng.integers(0, 1000, N)
    b = 4
    h = rng.standard_normal((N, C, 3, 3))
    tbs.cache = {3: rng.standard_normal((N, C, 3, 3)), 4: rng.standard_normal((N, C, 3, 3))}
    out, cache = tbs.forward(b, h, t)
    dout = rng.standard_normal(out.shape)
    tbs.zero_grad()
    dh = tbs.backward(b, dout, cache)
    loss = lambda: float((tbs.forward(b, h, t)[0] * dout).sum())  # noqa: E731
    v = rng.standard_normal(h.shape)
    assert_close(directional_fd(loss, h, v, 1e-6), float((dh * v).sum()), "dh")
    va = rng.standard_normal(tbs.params["a"].shape)
    grad_a = tbs.grads["a"].copy()
    assert_close(directional_fd(loss, tbs.params["a"], va, 1e-6), float((grad_a * va).sum()), "da")
    assert np.count_nonzero(grad_a[:, 0]) == 0, "unit 3 was not used: no gradient for its column"
    j = t // 10
    np.testing.assert_allclose(out, (1 - tbs.params["a"][j, 1])[:, None, None, None] * h
                               + tbs.params["a"][j, 1][:, None, None, None] * tbs.cache[4])


def test_tbs_with_zero_table_equals_no_tbs_and_first_unit_untouched():
    teacher, student = micro_pair(connections=2)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    t = np.array([10, 500])
    plain, c_plain = student.forward(x, t)
    student.mixer.remember([f + 1.0 for f in UNet.unit_features(c_plain)])
    student.mixer.params["a"][...] = 0.0
    mixed, _ = student.forward(x, t)
    np.testing.assert_array_equal(mixed, plain)
    student.mixer.params["a"][...] = 0.3
    assert not np.array_equal(student.forward(x, t)[0], plain)
    with pytest.raises(ValueError, match="TBS connections must be in"):
        attach_tbs(build_student(SMALL, "bidm", teacher.state_dict(), np.random.default_rng(0)), 99, 1000)


def test_sampler_cache_at_step_s_is_the_mixed_outputs_of_step_s_minus_1():
    _, student = micro_pair(connections=3)
    caches, outputs = sampler_caches(student, np.random.default_rng(2).standard_normal((2, 1, 8, 8)), 4)
    assert caches[0] is None and len(caches) == 4
    units = len(student.units())
    for s in range(1, 4):
        assert sorted(caches[s]) == list(range(units - 3, units))
        for b, cached in caches[s].items():
            np.testing.assert_array_equal(cached, outputs[s - 1][b])


@pytest.mark.parametrize("variant", ["gram", "token"])
@given(st.integers(1, 2), st.integers(1, 3), st.sampled_from([4, 6, 8]), seeds)
def test_spd_loss_fd(variant, N, C, HW, seed):
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((N, C, HW, HW)), rng.standard_normal((N, C + 1, 4, 4))]
    targets = [f + 0.5 * rng.standard_normal(f.shape) for f in feats]
    loss, grads = spd_loss(feats, targets, 2, variant)
    for f, g in zip(feats, grads):
        v = rng.standard_normal(f.shape)
        numeric = directional_fd(lambda: spd_loss(feats, targets, 2, variant)[0], f, v, 1e-6)
        assert_close(numeric, float((g * v).sum()), f"spd {variant}", rtol=1e-5)


def test_spd_definition_on_one_patch_and_zero_for_identical_features():
    rng = np.random.default_rng(0)
    F, G = rng.standard_normal((1, 2, 2, 2)), rng.standard_normal((1, 2, 2, 2))
    Q = np.einsum("ncij,nckj->ncik", F, F)
    R = np.einsum("ncij,nckj->ncik", G, G)
    expected = np.linalg.norm((Q / np.linalg.norm(Q) - R / np.linalg.norm(R)).ravel())
    assert spd_loss([F], [G], 1, "gram")[0] == pytest.approx(expected, rel=1e-6)
    tokens = F.reshape(1, 2, 4).transpose(0, 2, 1)
    Qt = tokens @ tokens.transpose(0, 2, 1)
    tg = G.reshape(1, 2, 4).transpose(0, 2, 1)
    Rt = tg @ tg.transpose(0, 2, 1)
    assert spd_loss([F], [G], 1, "token")[0] == pytest.approx(
        np.linalg.norm((Qt / np.linalg.norm(Qt) - Rt / np.linalg.norm(Rt)).ravel()), rel=1e-6)
    assert spd_loss([F], [F], 1)[0] == pytest.approx(1e-6)
    assert spd_loss([F], [3 * F], 1)[0] == pytest.approx(1e-6), "SPD is invariant to feature scale"
    with pytest.raises(ValueError, match="cannot be split"):
        spd_loss([F], [G], 4)


@pytest.mark.parametrize("variant", ["gram", "token"])
def test_spd_of_an_all_zero_patch_is_finite(variant):
    rng = np.random.default_rng(1)
    F, zero = rng.standard_normal((2, 3, 4, 4)), np.zeros((2, 3, 4, 4))
    loss, (grad,) = spd_loss([zero], [F], 2, variant)
    assert loss == pytest.approx(1.0, rel=1e-9), "Qn = 0 against a unit-norm Qn_hat"
    assert np.array_equal(grad, np.zeros_like(grad))
    loss, (grad,) = spd_loss([F], [zero], 2, variant)
    assert loss == pytest.approx(1.0, rel=1e-9) and np.all(np.isfinite(grad))


def test_l2_loss_value_and_fd():
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 1, 2, 2))]
    targets = [rng.standard_normal(f.shape) for f in feats]
    loss, grads = l2_loss(feats, targets)
    assert loss == pytest.approx(np.mean([np.mean((f - g) ** 2) for f, g in zip(feats, targets)]))
    v = rng.standard_normal(feats[0].shape)
    assert_close(directional_fd(lambda: l2_loss(feats, targets)[0], feats[0], v, 1e-6), float((grads[0] * v).sum()), "l2")


def test_three_pass_step_equals_the_loss_computed_by_hand():
    teacher, student = micro_pair(seed=3, connections=2)
    schedule = Schedule()
    cfg = BiDMConfig(tbs_connections=2, distill="spd", distill_lambda=0.05, spd_patches=2)
    x0 = np.random.default_rng(4).uniform(-1, 1, (3, 1, 8, 8))
    metrics = BiDMObjective(student, teacher, schedule, cfg).step(x0, np.random.default_rng(9))
    assert student.mixer.cache is None, "the training cache must not leak into the next step or into sampling"

    rng = np.random.default_rng(9)
    t = draw_timesteps(rng, 3, 1000)
    eps = rng.standard_normal(x0.shape)
    x_t = schedule.q_sample(x0, t, eps)
    t_prev = np.minimum(t + 1, 999)
    student.mixer.forget()
    _, c_prev = student.forward(schedule.q_sample(x0, t_prev, eps), t_prev)
    student.mixer.remember(UNet.unit_features(c_prev))
    pred, c_s = student.forward(x_t, t)
    _, c_t = teacher.forward(x_t, t)
    by_hand = noise_loss(eps, pred)[0] + 0.05 * spd_loss(UNet.unit_features(c_s), UNet.unit_features(c_t), 2)[0]
    assert metrics["loss"] == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("distill", ["spd", "l2"])
def test_whole_bidm_objective_gradient_fd(distill):
    """Directional FD of the main pass's loss (noise + lambda * distillation, TBS mixing with the cache held
    fixed: no gradient flows through the cache) against the gradients of one BiDM step."""
    teacher, student = micro_pair(seed=5, connections=2)
    rng = np.random.default_rng(6)
    for name, p in student.named_parameters():
        if name.endswith(("tau", "shortcut_scale", "k_bias")):
            p[...] = rng.standard_normal(p.shape) * 0.2
    cfg = BiDMConfig(tbs_connections=2, distill=distill, distill_lambda=0.5, spd_patches=2)
    schedule = Schedule()
    objective = BiDMObjective(student, teacher, schedule, cfg)
    x0 = away_from_kinks(np.random.default_rng(7).uniform(-1, 1, (2, 1, 8, 8)))
    with surrogate_mode(student):
        student.zero_grad()
        objective.step(x0, np.random.default_rng(8))
        grads = {n: g.copy() for n, g in student.named_grads()}
        rng_step = np.random.default_rng(8)
        t = draw_timesteps(rng_step, 2, 1000)
        eps = rng_step.standard_normal(x0.shape)
        t_prev = np.minimum(t + 1, 999)
        _, c_prev = student.forward(schedule.q_sample(x0, t_prev, eps), t_prev)
        student.mixer.remember(UNet.unit_features(c_prev))
        x_t = schedule.q_sample(x0, t, eps)
        targets = UNet.unit_features(teacher.forward(x_t, t)[1])

        def loss():
            pred, cache = student.forward(x_t, t)
            return noise_loss(eps, pred)[0] + 0.5 * objective.distill(UNet.unit_features(cache), targets)[0]

        params = dict(student.named_parameters())
        for name in ("tbs.a", "up.1.block.1.conv2.weight", "mid.block_1.conv1.tau", "down.0.block.0.conv1.k_weight",
                     "up.0.block.1.temb_proj.weight"):
            v = rng.standard_normal(params[name].shape)
            assert_close(directional_fd(loss, params[name], v, 1e-6), float((grads[name] * v).sum()), name, rtol=1e-4)


def test_for_method_gives_bidm_tbs_and_spd_and_the_baselines_the_plain_loss():
    full = BiDMConfig.for_method("bidm")
    assert (full.tbs_connections, full.distill) == (2, "spd")
    for method in ("xnor", "reactnet", "xnor_k"):
        plain = BiDMConfig.for_method(method)
        assert (plain.tbs_connections, plain.distill) == (0, "none")
    chosen = BiDMConfig.for_method("xnor", tbs_connections=1, distill="l2", distill_lambda=0.5)
    assert (chosen.tbs_connections, chosen.distill, chosen.distill_lambda) == (1, "l2", 0.5)
    assert BiDMConfig.for_method("bidm", tbs_connections=0).tbs_connections == 0   # an explicit 0 is kept
