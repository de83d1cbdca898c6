"""TBS in the official CIFAR code's layout (docs/METHOD.md §11, item 2): positions, init, the sampler's cache,
and the student UNet's gradient by finite differences in float64, the table included."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from bidm_ref.bidm.config import BiDMConfig
from bidm_ref.bidm.student import build_student, build_unet
from bidm_ref.binary.methods import BinaryLayers
from bidm_ref.diffusion.schedule import ScheduleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.models.config import UNetConfig
from bidm_ref.models.unet import UNet
from bidm_ref.storage.checkpoint import save_checkpoint
from binarycheck import away_from_kinks, surrogate_mode
from fdcheck import assert_close, directional_fd
from samplercheck import sampler_caches
from test_student import SMALL

MICRO3 = UNetConfig(ch=4, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, in_channels=1,
                    out_ch=1, resolution=8, groups=2)


def official_student(seed=0):
    rng = np.random.default_rng(seed)
    teacher = UNet(MICRO3, rng=rng)
    student = build_student(MICRO3, "bidm", teacher.state_dict(), rng, 2, 1000, tbs_layout="official-cifar")
    return student.astype(np.float64)


def test_official_layout_mixes_decoder_level_1_and_its_upsample_in_column_1_from_zero():
    student = official_student()
    units = student.units()
    level1 = [units.index(unit) for unit in student.up_units[1]]
    assert student.mixer.points == {**{b: ("up.2.upsample", 1) for b in level1},
                                    "up.1.upsample": ("up.1.upsample", 1)}
    assert student.mixer.params["a"].shape == (100, len(MICRO3.ch_mult))
    assert not student.mixer.params["a"].any()
    assert BiDMConfig().tbs_layout == "last-units"
    with pytest.raises(ValueError, match=r"official-cifar needs >= 3 levels .* use --tbs-layout last-units"):
        build_unet(SMALL, BinaryLayers("bidm"), 2, 1000, tbs_layout="official-cifar")


def test_official_layout_output_is_the_mix_of_the_units_with_the_cached_upsample():
    student = official_student(1)
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((2, 1, 8, 8)), np.array([5, 777])
    _, plain = student.forward(x, t)
    cache = {p: rng.standard_normal(h.shape) for p, h in UNet.point_outputs(plain).items()}
    student.mixer.remember(cache)
    a = rng.uniform(0.1, 0.9, student.mixer.params["a"].shape)
    student.mixer.params["a"][...] = a
    _, mixed = student.forward(x, t)
    outputs = UNet.point_outputs(mixed)
    w = a[t // 10, 1][:, None, None, None]
    # the first up.1 unit gets the same input as without TBS (levels above 1 do not mix), so its mix is exact
    first = student.units().index(student.up_units[1][0])
    np.testing.assert_allclose(outputs[first], (1 - w) * plain.features[first] + w * cache["up.2.upsample"])
    for b in range(first):
        np.testing.assert_array_equal(outputs[b], plain.features[b])


def test_the_sampler_cache_holds_the_previous_step_s_source_outputs():
    student = official_student(3)
    student.mixer.params["a"][...] = 0.5
    caches, outputs = sampler_caches(student, np.random.default_rng(4).standard_normal((2, 1, 8, 8)), 3)
    assert caches[0] is None
    for s in (1, 2):
        assert sorted(caches[s]) == ["up.1.upsample", "up.2.upsample"]
        for p, cached in caches[s].items():
            np.testing.assert_array_equal(cached, outputs[s - 1][p])


def test_official_layout_student_gradient_fd_including_the_table():
    student = official_student(5)
    rng = np.random.default_rng(6)
    for name, p in student.named_parameters():
        if name.endswith(("tau", "shortcut_scale", "k_bias")):
            p[...] = rng.standard_normal(p.shape) * 0.2
    x = away_from_kinks(rng.uniform(-1, 1, (2, 1, 8, 8)))
    t = np.array([12, 480])
    _, plain = student.forward(x, t)
    student.mixer.remember({p: rng.standard_normal(h.shape) for p, h in UNet.point_outputs(plain).items()})
    student.mixer.params["a"][...] = rng.uniform(0.1, 0.9, student.mixer.params["a"].shape)
    dout = rng.standard_normal(plain.features[0].shape[:1] + (1, 8, 8))
    with surrogate_mode(student):
        student.zero_grad()
        _, cache = student.forward(x, t)
        dx = student.backward(dout, cache)
        grads = {n: g.copy() for n, g in student.named_grads()}

        def loss():
            return float((student.forward(x, t)[0] * dout).sum())

        v = rng.standard_normal(x.shape)
        assert_close(directional_fd(loss, x, v, 1e-6), float((dx * v).sum()), "x", rtol=1e-4)
        params = dict(student.named_parameters())
        for name in ("tbs.a", "up.1.block.0.conv2.weight", "up.1.upsample.conv.tau", "up.2.block.1.conv1.weight"):
            v = rng.standard_normal(params[name].shape)
            assert_close(directional_fd(loss, params[name], v, 1e-6), float((grads[name] * v).sum()), name, rtol=1e-4)
    assert np.count_nonzero(grads["tbs.a"][:, [0, 2]]) == 0 and np.count_nonzero(grads["tbs.a"][:, 1]) > 0


@pytest.mark.parametrize("layout", ["official-cifar", None])
def test_a_checkpoint_keeps_its_layout_and_one_without_the_key_loads_last_units(tmp_path, layout):
    student = official_student(7) if layout else build_student(MICRO3, "bidm", UNet(MICRO3, rng=np.random.default_rng(
        7)).state_dict(), np.random.default_rng(7), 2, 1000)
    bidm = {k: v for k, v in asdict(BiDMConfig(tbs_layout=layout or "last-units")).items()
            if layout or k != "tbs_layout"}  # a checkpoint written before the option has no tbs_layout
    config = {"model": asdict(MICRO3), "schedule": asdict(ScheduleConfig()), "bidm": bidm,
              "student": {"method": "bidm", "teacher": "t.h5"}}
    params = {n: v.astype(np.float32) for n, v in student.named_parameters()}
    save_checkpoint(tmp_path / "s.h5", params=params, config=config)
    model, _ = load_model(str(tmp_path / "s.h5"))
    assert model.mixer.points == student.mixer.points
    if layout is None:
        assert model.mixer.points == {b: (b, k) for k, b in enumerate(range(len(model.units()) - 2, len(model.units())))}
