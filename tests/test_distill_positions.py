"""Distillation feature positions (docs/METHOD.md §11, item 3): the official CIFAR code's hooks as feature points
of the UNet, their outputs, and the BiDM objective's gradient through them by finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.bidm.config import BiDMConfig
from bidm_ref.bidm.objective import BiDMObjective, distill_points
from bidm_ref.bidm.spd import spd_loss
from bidm_ref.bidm.student import build_student
from bidm_ref.diffusion.loss import draw_timesteps, noise_loss
from bidm_ref.diffusion.schedule import Schedule
from bidm_ref.models.config import UNetConfig, preset
from bidm_ref.models.unet import UNet
from binarycheck import away_from_kinks, surrogate_mode
from fdcheck import assert_close, directional_fd

MICRO3 = UNetConfig(ch=4, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, in_channels=1,
                    out_ch=1, resolution=16, groups=2)


def test_official_positions_are_the_official_cifar_hooks_in_forward_order():
    """ddim's CIFAR-10 UNet (4 levels, 2 blocks per level): units 0-7 encoder, 8-9 middle."""
    model = UNet(preset("cifar10"), rng=np.random.default_rng(0))
    assert distill_points(model, "official") == [
        "down.0.downsample", "down.1.downsample", "down.2.downsample",  # down.{0,1,2}.downsample.conv
        "unit.7.conv2",                                                  # down.3.block.1.conv2
        "unit.9.conv2",                                                  # mid.block_2.conv2
        "up.3.upsample", "up.2.upsample", "up.1.upsample"]
    assert distill_points(model, "units") == list(range(len(model.units())))
    assert BiDMConfig().distill_positions == "units"
    with pytest.raises(ValueError, match=r"unknown --distill-positions 'hooks': use units or official"):
        BiDMConfig(distill_positions="hooks")


def test_a_conv2_point_is_the_block_output_minus_its_identity_shortcut():
    model = UNet(MICRO3, rng=np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((2, 1, 16, 16))
    _, cache = model.forward(x, np.array([3, 400]))
    points = UNet.point_outputs(cache)
    # MICRO3: units 0-2 encoder, 3 = mid.block_1 + attn_1, 4 = mid.block_2 (C -> C, identity shortcut)
    assert "unit.4.conv2" in points and model.units()[4] is model.mid_units[1]
    np.testing.assert_allclose(points["unit.4.conv2"], cache.features[4] - cache.features[3], atol=1e-12)
    np.testing.assert_array_equal(points["down.1.downsample"].shape, (2, 8, 4, 4))


def test_objective_with_official_positions_gradient_fd():
    rng = np.random.default_rng(3)
    teacher = UNet(MICRO3, rng=rng).astype(np.float64)
    student = build_student(MICRO3, "bidm", teacher.state_dict(), rng).astype(np.float64)
    for name, p in student.named_parameters():
        if name.endswith(("tau", "shortcut_scale", "k_bias")):
            p[...] = rng.standard_normal(p.shape) * 0.2
    cfg = BiDMConfig(tbs_connections=0, distill="spd", distill_lambda=0.5, spd_patches=2, distill_positions="official")
    schedule = Schedule()
    objective = BiDMObjective(student, teacher, schedule, cfg)
    points = distill_points(student, "official")
    x0 = away_from_kinks(np.random.default_rng(4).uniform(-1, 1, (2, 1, 16, 16)))
    with surrogate_mode(student):
        student.zero_grad()
        metrics = objective.step(x0, np.random.default_rng(5))
        grads = {n: g.copy() for n, g in student.named_grads()}
        draws = np.random.default_rng(5)
        t = draw_timesteps(draws, 2, 1000)
        eps = draws.standard_normal(x0.shape)
        x_t = schedule.q_sample(x0, t, eps)
        targets = UNet.point_outputs(teacher.forward(x_t, t)[1])

        def loss():
            pred, cache = student.forward(x_t, t)
            outputs = UNet.point_outputs(cache)
            d = spd_loss([outputs[p] for p in points], [targets[p] for p in points], 2)[0]
            return noise_loss(eps, pred)[0] + 0.5 * d

        assert metrics["loss"] == pytest.approx(loss(), rel=1e-12)
        params = dict(student.named_parameters())
        for name in ("down.0.downsample.conv.weight", "down.2.block.0.conv2.tau", "mid.block_2.conv1.weight",
                     "up.1.upsample.conv.k_weight", "up.0.block.1.conv2.weight"):
            v = rng.standard_normal(params[name].shape)
            assert_close(directional_fd(loss, params[name], v, 1e-6), float((grads[name] * v).sum()), name, rtol=1e-4)
