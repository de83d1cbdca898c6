"""Layer variants from the official code (docs/METHOD.md §11, items 1 and 5): the Downsample padding applied to
x before the binarizer, and the binary conv without its scaled FP shortcut (plain XNOR-Net)."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cli
from bidm_ref.binary.bidm_layers import BIDM, XNOR, XNOR_LEARN_K, BinaryConv2d
from bidm_ref.binary.methods import BinaryLayers
from bidm_ref.binary.variant import LayerVariant
from bidm_ref.diffusion.schedule import ScheduleConfig
from bidm_ref.loading.export import export_checkpoint
from bidm_ref.loading.load import load_model
from bidm_ref.storage.checkpoint import load_checkpoint
from bidm_ref.train.adam import AdamConfig
from bidm_ref.train.run import StudentConfig, train
from bidm_ref.train.trainer import TrainConfig
from binarycheck import away_from_kinks, randomise, surrogate_mode
from fdcheck import check_module
from reference_ops import conv_nested_loops, pm1, shortcut_reference
from test_trainer import micro_teacher

OPTIONS = {"bidm": BIDM, "xnor": XNOR, "xnor_k": XNOR_LEARN_K}
DOWNSAMPLE = (3, 2, (0, 1, 0, 1))  # kernel, stride, padding of ddim's Downsample conv


def variant_conv(method, C, O, fp_shortcut, pad_before_sign, seed, conv=DOWNSAMPLE):
    k, stride, pad = conv
    rng = np.random.default_rng(seed)
    options = replace(OPTIONS[method], fp_shortcut=fp_shortcut, pad_before_sign=pad_before_sign)
    layer = BinaryConv2d(C, O, k, stride, pad, rng=rng, options=options).astype(np.float64)
    randomise(layer, rng)
    return layer, rng


def official_reference(layer, x):
    """The official code's Downsample by its definition: F.pad(x, (0, 1, 0, 1)), then BNNConv2d with padding 0
    (torch.sign replaced by this project's sign(0) = +1): loops in float64."""
    w = layer.params["weight"]
    tau = layer.params.get("tau", np.zeros(x.shape[1]))
    k_w = layer.params.get("k_weight", np.full((1, 1, *w.shape[2:]), 1.0 / (w.shape[2] * w.shape[3])))
    k_b = layer.params.get("k_bias", np.zeros(1))
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    alpha = np.abs(w).reshape(w.shape[0], -1).mean(axis=1)
    z = conv_nested_loops(pm1(xp + tau[:, None, None]), pm1(w), None, layer.stride, 0) * alpha[None, :, None, None]
    k_map = conv_nested_loops(np.abs(xp).mean(axis=1, keepdims=True), k_w, k_b, layer.stride, 0)
    y = z * k_map
    if layer.options.fp_shortcut:
        H, W = x.shape[2:]
        pooled = shortcut_reference(xp[:, :, :H // 2 * 2, :W // 2 * 2], layer.stride)  # torch's avg_pool2d floors
        y = y + layer.params["shortcut_scale"] * pooled
    return y


cases = st.tuples(st.sampled_from(sorted(OPTIONS)), st.integers(1, 2), st.integers(1, 4), st.sampled_from([2, 4, 6]),
                  st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))


@given(cases)
def test_variant_conv_surrogate_fd(case):
    """Float64 finite differences of the variant's backward (pad_before_sign and/or no shortcut) against the
    surrogate forward; C == O so the average-pool shortcut applies at stride 2."""
    method, N, C, HW, fp_shortcut, pad_before_sign, seed = case
    layer, rng = variant_conv(method, C, C, fp_shortcut, pad_before_sign, seed)
    x = away_from_kinks(rng.standard_normal((N, C, HW, HW)))
    with surrogate_mode(layer):
        check_module(layer, [x], layer.forward, rng, rtol=1e-5)


@given(cases)
def test_official_padding_forward_equals_the_official_definition(case):
    method, N, C, HW, fp_shortcut, _, seed = case
    layer, rng = variant_conv(method, C, C, fp_shortcut, True, seed)
    x = rng.standard_normal((N, C, HW, HW))
    np.testing.assert_allclose(layer.forward(x)[0], official_reference(layer, x), rtol=1e-10, atol=1e-10)


def test_official_and_zero_padding_differ_only_where_a_padded_tap_meets_a_negative_threshold():
    """With tau < 0 a padded tap is sign(tau) = -1 officially and 0 here: the last output row and column differ,
    the interior agrees; tau's gradient differs too (ApproxSign'(tau) at the padded taps)."""
    zero, rng = variant_conv("bidm", 3, 3, True, False, 0)
    official, _ = variant_conv("bidm", 3, 3, True, True, 0)
    for layer in (zero, official):
        layer.params["tau"][...] = -0.4
    x = rng.standard_normal((2, 3, 6, 6))
    y_zero, c_zero = zero.forward(x)
    y_official, c_official = official.forward(x)
    np.testing.assert_array_equal(y_zero[:, :, :-1, :-1], y_official[:, :, :-1, :-1])
    assert np.all(y_zero[:, :, -1, :] != y_official[:, :, -1, :])
    dy = rng.standard_normal(y_zero.shape)
    zero.backward(dy, c_zero)
    official.backward(dy, c_official)
    assert not np.allclose(zero.grads["tau"], official.grads["tau"])


def test_no_shortcut_conv_has_no_shortcut_params_and_is_z_times_k():
    layer, rng = variant_conv("xnor", 3, 5, False, False, 1, conv=(3, 1, 1))
    assert not any(name.startswith("shortcut") for name, _ in layer.named_parameters())
    with_shortcut, _ = variant_conv("xnor", 3, 5, True, False, 1, conv=(3, 1, 1))
    with_shortcut.params["weight"][...] = layer.params["weight"]
    with_shortcut.params["shortcut_scale"][...] = 0.0
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_array_equal(layer.forward(x)[0], with_shortcut.forward(x)[0])


def test_the_factory_gives_the_official_padding_to_the_downsample_conv_only():
    body = BinaryLayers("bidm", variant=LayerVariant(downsample_pad="official", fp_shortcut=False))
    rng = np.random.default_rng(0)
    down, conv3 = body.conv(4, 4, 3, 2, (0, 1, 0, 1), rng=rng), body.conv(4, 4, 3, 1, 1, rng=rng)
    assert down.options.pad_before_sign and not conv3.options.pad_before_sign
    assert not down.options.fp_shortcut and not conv3.options.fp_shortcut
    with pytest.raises(ValueError, match=r"is an option of the methods bidm, xnor, xnor_k, not of 'dorefa'"):
        BinaryLayers("dorefa", variant=LayerVariant(fp_shortcut=False))
    with pytest.raises(ValueError, match=r"unknown --downsample-pad 'both': use zero or official"):
        LayerVariant(downsample_pad="both")


def test_a_variant_student_keeps_its_variant_in_the_checkpoint_and_the_packed_export_refuses_it(tmp_path):
    data, teacher = micro_teacher(tmp_path)
    student = StudentConfig(method="bidm", teacher=teacher, downsample_pad="official", fp_shortcut=False)
    train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, batch_size=4, out_dir=str(tmp_path / "s")),
          student=student, progress=False)
    ckpt = str(tmp_path / "s" / "ckpt.h5")
    assert load_checkpoint(ckpt).config["student"] == {"method": "bidm", "teacher": teacher,
                                                        "downsample_pad": "official", "fp_shortcut": False}
    model, _ = load_model(ckpt)
    downsample = model.downsamples[0].conv
    assert downsample.options.pad_before_sign and "shortcut_scale" not in downsample.params
    with pytest.raises(ValueError, match=r"cannot compute --downsample-pad official .*: sample the float checkpoint"):
        export_checkpoint(ckpt, str(tmp_path / "packed.h5"))


def edit_config(path, edit):
    """Rewrite a checkpoint's config attr by hand, as files written before a change have it."""
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["config"])
        edit(config)
        h5.attrs["config"] = json.dumps(config, sort_keys=True)


def test_old_student_checkpoints_load_with_the_defaults_and_a_packed_variant_is_refused(tmp_path):
    data, teacher = micro_teacher(tmp_path)
    train(data, ScheduleConfig(), AdamConfig(), TrainConfig(steps=1, batch_size=4, out_dir=str(tmp_path / "s")),
          student=StudentConfig(method="bidm", teacher=teacher), progress=False)
    ckpt, packed = str(tmp_path / "s" / "ckpt.h5"), str(tmp_path / "packed.h5")
    export_checkpoint(ckpt, packed)
    edit_config(ckpt, lambda config: config.update(student={"method": "bidm", "teacher": teacher}))
    model, _ = load_model(ckpt)
    downsample = model.downsamples[0].conv
    assert not downsample.options.pad_before_sign and "shortcut_scale" in downsample.params
    edit_config(packed, lambda config: config["bidm"].update(tbs_layout="official-cifar"))
    with pytest.raises(ValueError, match=r"last-units layout only and cannot run a --tbs-layout official-cifar"):
        load_model(packed)
    edit_config(packed, lambda config: config["student"].update(downsample_pad="official"))
    with pytest.raises(ValueError, match=r"packed kernel pads the \+-1 activations with zeros and cannot compute"):
        load_model(packed)


def test_the_train_flags_reach_the_checkpoint_and_a_resume_checks_them(tmp_path, capsys):
    data, teacher = micro_teacher(tmp_path)
    out = tmp_path / "cli_student"
    argv = ["--threads", "1", "train", "--method", "bidm", "--teacher", teacher, "--data-dir", data.data_dir,
            "--batch-size", "4", "--out", str(out), "--downsample-pad", "official", "--no-fp-shortcut",
            "--distill-positions", "official"]
    assert cli.main([*argv, "--steps", "1"]) == 0
    config = load_checkpoint(out / "ckpt.h5").config
    assert (config["student"]["downsample_pad"], config["student"]["fp_shortcut"]) == ("official", False)
    assert config["bidm"]["distill_positions"] == "official"
    assert cli.main([*argv, "--steps", "2", "--resume"]) == 0                     # the same flags again: accepted
    capsys.readouterr()
    assert cli.main(["--threads", "1", "train", "--out", str(out), "--steps", "3", "--resume",
                     "--downsample-pad", "zero"]) == 2
    assert "--downsample-pad \"zero\" differs from the run's student.downsample_pad" in capsys.readouterr().err
