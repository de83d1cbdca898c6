"""Schedule, loss and samplers: closed forms and an oracle model whose optimal eps is known."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.diffusion.loss import draw_timesteps, noise_loss
from bidm_ref.diffusion.samplers import sample_ddim, sample_ddpm, step_pairs, timestep_sequence
from bidm_ref.diffusion.schedule import Schedule, ScheduleConfig
from fdcheck import assert_close, directional_fd


def test_linear_schedule_closed_form():
    s = Schedule()
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02 and s.betas.dtype == np.float64
    prod = 1.0
    for t in range(11):
        prod *= 1 - (1e-4 + t * (0.02 - 1e-4) / 999)
    assert s.alpha_bar(10) == pytest.approx(prod, rel=1e-13)
    assert s.alpha_bar(-1) == 1.0
    with pytest.raises(ValueError, match="outside"):
        s.alpha_bar(1000)


def test_q_sample_formula_and_dtype():
    s = Schedule()
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    eps = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    t = np.array([0, 999])
    xt = s.q_sample(x0, t, eps)
    assert xt.dtype == np.float32
    a = s.alpha_bar(999)
    np.testing.assert_allclose(xt[1], np.sqrt(a) * x0[1] + np.sqrt(1 - a) * eps[1], rtol=1e-6)


def test_ddim_timestep_sequence():
    assert timestep_sequence(1000, 100)[:3] == [0, 10, 20] and timestep_sequence(1000, 100)[-1] == 990
    pairs = step_pairs(1000, 4)
    assert pairs == [(750, 500), (500, 250), (250, 0), (0, -1)]
    with pytest.raises(ValueError, match="sampling steps"):
        timestep_sequence(1000, 0)


def oracle(schedule, x0_star, seen):
    """The exact eps for a data distribution that is one point x0*."""

    def eps_fn(x, t):
        seen.append(int(t[0]))
        a = schedule.alpha_bar(int(t[0]))
        return (x - np.sqrt(a) * x0_star) / np.sqrt(1 - a)

    return eps_fn


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_the_single_data_point(eta):
    s = Schedule(ScheduleConfig(num_timesteps=100))
    rng = np.random.default_rng(0)
    x0_star = rng.uniform(-1, 1, (2, 1, 3, 3))
    seen, steps_seen = [], []
    out = sample_ddim(oracle(s, x0_star, seen), rng.standard_normal(x0_star.shape), s, 10, eta=eta, rng=rng,
                      callback=lambda step, t, x, e: steps_seen.append((step, t)))
    np.testing.assert_allclose(out, x0_star, rtol=1e-9, atol=1e-9)
    assert seen == list(range(90, -1, -10))
    assert steps_seen == list(enumerate(range(90, -1, -10)))


def test_ddpm_recovers_the_single_data_point_and_uses_noise():
    s = Schedule(ScheduleConfig(num_timesteps=50))
    rng = np.random.default_rng(1)
    x0_star = rng.uniform(-0.9, 0.9, (1, 1, 2, 2))
    draws = []

    def noise_fn(shape):
        draws.append(shape)
        return np.ones(shape)

    out = sample_ddpm(oracle(s, x0_star, []), rng.standard_normal(x0_star.shape), s, 5, noise_fn=noise_fn)
    np.testing.assert_allclose(out, x0_star, rtol=1e-9, atol=1e-9)
    assert len(draws) == 4
    with pytest.raises(ValueError, match="pass rng"):
        sample_ddpm(oracle(s, x0_star, []), x0_star, s, 5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_x0_keeps_every_x0_prediction_in_range(sampler):
    """A model whose eps points at x0* = 3 (outside the data range): clipped, every step's x0 prediction is
    clip(3) = 1 and the sample ends at 1; unclipped, DDIM follows the model to 3."""
    s = Schedule(ScheduleConfig(num_timesteps=100))
    rng = np.random.default_rng(0)
    x0_star = np.full((2, 1, 2, 2), 3.0)
    x_T = rng.standard_normal(x0_star.shape)
    run = {"ddim": lambda **kw: sample_ddim(oracle(s, x0_star, []), x_T, s, 10, **kw),
           "ddpm": lambda **kw: sample_ddpm(oracle(s, x0_star, []), x_T, s, 10, noise_fn=np.zeros, **kw)}[sampler]
    np.testing.assert_allclose(run(clip_x0=True), 1.0, rtol=1e-9)
    np.testing.assert_allclose(run(clip_x0=False), 3.0, rtol=1e-9)


def test_clip_x0_changes_nothing_when_the_model_predicts_in_range():
    s = Schedule(ScheduleConfig(num_timesteps=100))
    rng = np.random.default_rng(2)
    x0_star = rng.uniform(-0.9, 0.9, (2, 1, 3, 3))
    x_T = rng.standard_normal(x0_star.shape)
    clipped = sample_ddim(oracle(s, x0_star, []), x_T, s, 10, clip_x0=True)
    np.testing.assert_allclose(clipped, sample_ddim(oracle(s, x0_star, []), x_T, s, 10), rtol=1e-12, atol=1e-12)


def test_ddim_eta_zero_is_deterministic_and_keeps_float32():
    s = Schedule()
    x = np.random.default_rng(0).standard_normal((1, 1, 2, 2)).astype(np.float32)
    out = sample_ddim(lambda x, t: 0.1 * x, x, s, 5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, sample_ddim(lambda x, t: 0.1 * x, x, s, 5))


def test_noise_loss_value_and_gradient():
    rng = np.random.default_rng(0)
    eps, pred = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 2, 2))
    loss, grad = noise_loss(eps, pred)
    assert loss == pytest.approx(sum(((eps[i] - pred[i]) ** 2).sum() for i in range(3)) / 3)
    v = rng.standard_normal(pred.shape)
    assert_close(directional_fd(lambda: noise_loss(eps, pred)[0], pred, v, 1e-6), float((grad * v).sum()), "loss")


def test_antithetic_timesteps():
    t = draw_timesteps(np.random.default_rng(0), 7, 1000)
    assert t.shape == (7,) and t.min() >= 0 and t.max() <= 999
    np.testing.assert_array_equal(t[4:7], 999 - t[:3])


def test_generate_is_seeded_and_batches_the_remainder():
    from bidm_ref.diffusion.generate import SampleConfig, generate

    calls = []

    def make_eps_fn():
        calls.append(1)
        return lambda x, t: 0.1 * x

    cfg = SampleConfig(n=5, steps=3, seed=7, batch_size=2)
    a = generate(make_eps_fn, (1, 2, 2), Schedule(), cfg, progress=False)
    b = generate(make_eps_fn, (1, 2, 2), Schedule(), cfg, progress=False)
    assert a.shape == (5, 1, 2, 2) and a.dtype == np.float32 and len(calls) == 6
    np.testing.assert_array_equal(a, b)
    other = generate(make_eps_fn, (1, 2, 2), Schedule(), SampleConfig(n=5, steps=3, seed=8, batch_size=2), progress=False)
    assert not np.array_equal(a, other)
    with pytest.raises(ValueError, match="unknown sampler"):
        SampleConfig(sampler="euler")
