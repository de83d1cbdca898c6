"""UNet: ddim's names and parameter count, whole-model finite differences, input checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bidm_ref.models.config import PRESETS, UNetConfig, preset
from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.models.unet import UNet
from fdcheck import check_module

MICRO = UNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.2,
                   in_channels=2, out_ch=2, resolution=8, groups=2)


def test_cifar10_preset_matches_ddim_parameter_count_and_runs():
    """ddim's CIFAR-10 model has 35,746,307 parameters (sum of its state_dict sizes)."""
    model = UNet(PRESETS["cifar10"], rng=np.random.default_rng(0))
    assert model.num_parameters() == 35_746_307
    names = [n for n, _ in model.named_parameters()]
    for key in ("temb.dense.0.weight", "down.0.block.0.conv1.weight", "down.1.attn.1.proj_out.weight",
                "down.2.downsample.conv.weight", "mid.attn_1.q.weight", "mid.block_2.temb_proj.bias",
                "up.3.block.2.nin_shortcut.weight", "up.1.upsample.conv.weight", "norm_out.weight", "conv_out.bias"):
        assert key in names, key
    assert "down.3.downsample.conv.weight" not in names and "up.0.upsample.conv.weight" not in names
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y, _ = model.forward(x, np.array([500]))
    assert y.shape == (1, 3, 32, 32) and y.dtype == np.float32 and np.isfinite(y).all()


def test_small_preset_is_tiny_with_twice_the_channels_and_two_blocks_per_level():
    assert preset("small") == replace(preset("tiny"), ch=32, num_res_blocks=2)   # the docstring's definition
    model = UNet(preset("small"), rng=np.random.default_rng(0))
    names = [n for n, _ in model.named_parameters()]
    assert "down.2.block.1.conv2.weight" in names and "up.0.block.2.conv1.weight" in names
    y, _ = model.forward(np.zeros((1, 1, 32, 32), np.float32), np.array([10]))
    assert y.shape == (1, 1, 32, 32) and np.isfinite(y).all()


def test_whole_unet_backward_fd_micro_config():
    rng = np.random.default_rng(0)
    model = UNet(MICRO, rng=rng)
    for _, p in model.named_parameters():
        p += rng.standard_normal(p.shape).astype(p.dtype) * 0.1
    x = rng.standard_normal((2, 2, 8, 8))
    t = np.array([3, 700])
    check_module(model, [x], lambda x: model.forward(x, t, np.random.default_rng(5)), rng, rtol=1e-5)


def test_eval_mode_is_deterministic_and_dropout_changes_output():
    rng = np.random.default_rng(0)
    model = UNet(MICRO, rng=rng)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    t = np.array([10])
    a, _ = model.forward(x, t)
    b, _ = model.forward(x, t)
    np.testing.assert_array_equal(a, b)
    c, _ = model.forward(x, t, np.random.default_rng(1))
    assert not np.array_equal(a, c)


def test_unet_rejects_bad_shapes_and_configs():
    model = UNet(MICRO, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expects x of shape \[N, 2, 8, 8\]"):
        model.forward(np.zeros((1, 3, 8, 8)), np.array([1]))
    with pytest.raises(ValueError, match="one timestep per image"):
        model.forward(np.zeros((2, 2, 8, 8)), np.array([1]))
    with pytest.raises(ValueError, match="not divisible by groups"):
        UNetConfig(ch=24)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert preset("tiny", channels=3).in_channels == 3


def test_sampling_steps_run_under_inference_with_the_forwards_bytes():
    """sampling_eps_fn runs the forward under nn.module.inference(): the eps of a plain forward, byte for byte, and no
    GroupNorm cache (norm_out's stands for all of them)."""
    model = UNet(replace(MICRO, dropout=0.0), rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    t = np.array([3, 700])
    eps, cache = model.forward(x, t)
    caches = []
    original = model.forward

    def recording_forward(x, t, rng=None):
        out, step_cache = original(x, t, rng)
        caches.append(step_cache)
        return out, step_cache

    model.forward = recording_forward
    assert sampling_eps_fn(model)(x, t).tobytes() == eps.tobytes()
    assert cache.norm_out is not None and caches[0].norm_out is None
