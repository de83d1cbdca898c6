"""Packed inference: packed layers equal the float binary layers, export -> load round trip, refusals, CLI."""

from __future__ import annotations

from dataclasses import asdict

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cli
from bidm_ref.binary.bidm_layers import BinaryConv2d, BinaryLinear
from bidm_ref.binary.packed_layers import (
    PACKABLE,
    PackedConv2d,
    PackedLinear,
    pack_binary_layer,
    packable_options,
)
from bidm_ref.diffusion.samplers import sample_ddim
from bidm_ref.diffusion.schedule import Schedule, ScheduleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.bidm.tbs import sampling_eps_fn
from bidm_ref.models.config import UNetConfig
from bidm_ref.loading.export import export_checkpoint
from bidm_ref.loading.packed import export_packed
from bidm_ref.bidm.student import build_student
from bidm_ref.models.unet import UNet
from bidm_ref.nn.conv import conv2d
from bidm_ref.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

seeds = st.integers(0, 2**31 - 1)
# (kernel, padding, stride) of the UNet's binary convs: 1x1 attention, 3x3 ResBlock / Upsample, Downsample
GEOMETRIES = [(1, 0, 1), (1, 0, 2), (3, 1, 1), (3, 1, 2), (3, (0, 1, 0, 1), 2)]
MICRO = UNetConfig(ch=24, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                   in_channels=1, out_ch=1, resolution=8, groups=4)


def randomise_float_params(layer, rng: np.random.Generator) -> None:
    """Move every float parameter off its init (tau, K filter, shortcut scale and conv), so all terms matter."""
    for name, p in layer.named_parameters():
        p[...] = (rng.standard_normal(p.shape) * (0.5 if name.endswith("weight") else 0.3)).astype(p.dtype)


def packed_copy(layer):
    """The packed twin of one float binary layer: same float params, sign(W) words and alpha."""
    if isinstance(layer, BinaryConv2d):
        kh = layer.kernel_size
        O, C = layer.params["weight"].shape[:2]
        twin = PackedConv2d(C, O, kh, layer.stride, layer.padding, rng=np.random.default_rng(0), options=layer.options)
    else:
        O, I = layer.params["weight"].shape
        twin = PackedLinear(I, O, options=layer.options)
    twin.load_state_dict({k: v for k, v in layer.named_parameters() if k not in ("weight", "bias")})
    packed = pack_binary_layer(layer)
    twin.set_packed(packed.words, packed.alpha)
    return twin


@given(st.sampled_from(sorted(PACKABLE)), st.integers(1, 2), st.sampled_from([1, 3, 31, 64, 65, 70, 130]),
       st.sampled_from([1, 5, 17, 64]), st.integers(1, 4), st.integers(1, 4), st.sampled_from(GEOMETRIES), seeds)
def test_packed_conv_equals_float_binary_conv(method, N, C, O, h, w, geometry, seed):
    k, pad, stride = geometry
    rng = np.random.default_rng(seed)
    layer = BinaryConv2d(C, O, k, stride, pad, rng=rng, options=PACKABLE[method])
    randomise_float_params(layer, rng)
    x = rng.standard_normal((N, C, 2 * h, 2 * w)).astype(np.float32)             # even sizes: the shortcut fits
    y_float, _ = layer.forward(x)                                                 # [N, O, Ho, Wo]
    y_packed, _ = packed_copy(layer).forward(x)
    assert y_packed.dtype == np.float32 and y_packed.shape == y_float.shape
    # float32 rounding only; one flipped sign would move an output by 2 * alpha * K ~ 0.1 or more
    np.testing.assert_allclose(y_packed, y_float, rtol=1e-5, atol=1e-5 * np.abs(y_float).max())


def alpha_times_fan_in(layer) -> float:
    """max_o alpha_o * fan_in = the largest |output| the +-1 sum can reach before other scales."""
    w = layer.params["weight"]
    return float(np.abs(w).reshape(w.shape[0], -1).mean(axis=1).max() * w[0].size)


@given(st.sampled_from(sorted(PACKABLE)), st.integers(1, 3), st.sampled_from([1, 33, 63, 64, 65, 130, 200]),
       st.integers(1, 6), seeds)
def test_packed_linear_equals_float_binary_linear(method, N, I, O, seed):
    rng = np.random.default_rng(seed)
    layer = BinaryLinear(I, O, rng=rng, options=PACKABLE[method])
    randomise_float_params(layer, rng)
    x = rng.standard_normal((N, I)).astype(np.float32)
    y_float, _ = layer.forward(x)                                                 # [N, O]
    # the packed sum is exact; the float one has rounding ~ eps32 * sum_i |alpha w_i| (an output can be exactly 0)
    bound = alpha_times_fan_in(layer)
    np.testing.assert_allclose(packed_copy(layer).forward(x)[0], y_float, rtol=1e-5, atol=1e-5 * bound)


def test_sign_of_zero_is_plus_one_exactly_as_the_float_layer():
    rng = np.random.default_rng(3)
    C, O = 70, 3
    layer = BinaryConv2d(C, O, 3, 1, 1, rng=rng)                                  # bidm: tau, learnable K
    randomise_float_params(layer, rng)
    tau = layer.params["tau"]
    tau[:35] = 0.5                                                                # exact in float32
    tau[35:] = 0.0
    w = layer.params["weight"]
    w[:, ::3] = 0.0                                                               # a third of the weights are 0
    x = rng.standard_normal((1, C, 4, 4)).astype(np.float32)
    x[:, :35, ::2] = -0.5                                                         # u = x + tau = 0 exactly
    x[:, 35:, 1::2] = -0.0                                                        # u = -0.0 + 0 = 0
    u = x + tau[:, None, None]
    assert np.count_nonzero(u == 0) > 500
    # the case discriminates: with sign(0) = -1 the +-1 conv differs
    plus = lambda a: np.where(a >= 0, 1.0, -1.0)  # noqa: E731
    minus = lambda a: np.where(a > 0, 1.0, -1.0)  # noqa: E731
    z_plus, _ = conv2d(plus(u).astype(np.float64), plus(w).astype(np.float64), None, 1, 1)
    z_minus, _ = conv2d(minus(u).astype(np.float64), minus(w).astype(np.float64), None, 1, 1)
    assert np.abs(z_plus - z_minus).max() >= 2
    y_float, _ = layer.forward(x)
    y_packed, _ = packed_copy(layer).forward(x)
    np.testing.assert_allclose(y_packed, y_float, rtol=1e-5, atol=1e-5 * np.abs(y_float).max())


def test_packed_layers_refuse_backward_missing_weights_and_wrong_shapes():
    rng = np.random.default_rng(0)
    conv = PackedConv2d(4, 6, 3, 1, 1, rng=rng)
    with pytest.raises(RuntimeError, match="no packed weight"):
        conv.forward(np.zeros((1, 4, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"do not fit this layer's \[O, kh, kw, Wd\] = \[6, 3, 3, 1\]"):
        conv.set_packed(np.zeros((6, 1, 1, 1), dtype=np.uint64), np.ones(6, dtype=np.float32))
    conv.set_packed(np.zeros((6, 3, 3, 1), dtype=np.uint64), np.ones(6, dtype=np.float32))
    with pytest.raises(ValueError, match="not NCHW"):
        conv.forward(np.zeros((1, 5, 3, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="inference-only"):
        conv.backward(np.zeros((1, 6, 3, 3), dtype=np.float32), None)
    linear = PackedLinear(8, 2)
    with pytest.raises(RuntimeError, match="inference-only"):
        linear.backward(np.zeros((1, 2), dtype=np.float32), None)
    with pytest.raises(ValueError, match="cannot be packed: packed inference supports bidm, xnor, xnor_k"):
        packable_options("dorefa")


# ---------------------------------------------------------------- export -> load round trip on a micro student


def write_student(path, method: str, connections: int, seed: int = 0) -> None:
    """A float student checkpoint with non-trivial binarizer params, raw params and a different EMA."""
    rng = np.random.default_rng(seed)
    teacher = UNet(MICRO, rng=rng)
    student = build_student(MICRO, method, teacher.state_dict(), rng, connections, 1000)
    for name, p in student.named_parameters():
        if name.endswith(("tau", "k_bias", "shortcut_scale")):
            p[...] = 0.2 * rng.standard_normal(p.shape)
        elif name.endswith("k_weight"):
            p[...] += 0.02 * rng.standard_normal(p.shape)
        elif name == "tbs.a":
            p[...] = rng.uniform(0.1, 0.5, p.shape)
    params = student.state_dict()
    ema = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}
    config = {"model": asdict(MICRO), "schedule": asdict(ScheduleConfig()),
              "student": {"method": method, "teacher": "t.h5"}, "bidm": {"tbs_connections": connections}}
    save_checkpoint(path, params=params, ema=ema, config=config, step=7)


def agreement(packed: np.ndarray, simulated: np.ndarray) -> float:
    """Fraction of elements within 1e-4 relative (denominator floored at 1e-3 of the RMS)."""
    floor = 1e-3 * np.sqrt(np.mean(simulated.astype(np.float64) ** 2))
    return float(np.mean(np.abs(packed - simulated) <= 1e-4 * np.maximum(np.abs(simulated), floor)))


@pytest.mark.parametrize(("method", "connections"), [("bidm", 2), ("xnor", 0)])
def test_export_then_load_matches_the_float_student(tmp_path, method, connections):
    student_path, packed_path = tmp_path / "student.h5", tmp_path / "packed.h5"
    write_student(student_path, method, connections)
    summary = export_packed(str(student_path), str(packed_path))
    assert summary.weights == "ema" and summary.bytes_on_disk == packed_path.stat().st_size
    packed, config = load_model(str(packed_path))
    simulated, _ = load_model(str(student_path))
    assert config["student"]["method"] == method
    assert (packed.mixer is None) == (connections == 0)

    # a DDIM trajectory with the same x_T: every step's eps (TBS mixes from the second step on; without TBS
    # the steps are independent forwards, one is enough)
    schedule = Schedule(ScheduleConfig())
    x_T = np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)  # [N, C, H, W]
    num_steps = 3 if connections else 1
    eps = {}
    for name, model in (("packed", packed), ("simulated", simulated)):
        steps = []
        x0 = sample_ddim(sampling_eps_fn(model), x_T, schedule, num_steps, callback=lambda s, t, x, e: steps.append(e))
        eps[name] = (np.stack(steps), x0)
    fraction = agreement(eps["packed"][0], eps["simulated"][0])
    max_diff = float(np.abs(eps["packed"][1] - eps["simulated"][1]).max())
    print(f"{method}: {fraction:.4%} of eps within 1e-4 relative, max |x0 diff| {max_diff:.2e}")
    assert fraction > 0.99
    assert max_diff < 1e-2


def test_packed_file_layout(tmp_path):
    student_path, packed_path = tmp_path / "student.h5", tmp_path / "packed.h5"
    write_student(student_path, "bidm", 2)
    export_packed(str(student_path), str(packed_path))
    with h5py.File(student_path, "r") as h5:
        ema = {k: h5["ema"][k][...] for k in h5["ema"]}
    with h5py.File(packed_path, "r") as h5:
        assert h5.attrs["packed"] == 1 and h5.attrs["packed_weights"] == "ema"
        assert sorted(h5) == ["packed", "params"]
        params, packed = set(h5["params"]), {k: h5["packed"][k][...] for k in h5["packed"]}
    for layer in ("down.0.block.0.conv1", "up.0.block.0.conv1", "mid.attn_1.q", "down.0.downsample.conv",
                  "up.1.upsample.conv", "up.1.block.0.temb_proj"):
        assert f"{layer}.weight" not in params and f"{layer}.bias" not in params
    assert {"conv_in.weight", "temb.dense.0.bias", "down.0.block.0.conv1.tau", "down.0.block.0.conv1.k_weight",
            "up.0.block.0.conv1.shortcut.weight", "up.0.block.0.nin_shortcut.weight", "tbs.a"} <= params
    # bit by bit, independently of the packer: channel c -> word c // 64, bit c % 64, bit 1 where W < 0
    for layer in ("up.0.block.0.conv1", "up.1.block.0.temb_proj"):                # 72 in channels, 96 features
        w = ema[f"{layer}.weight"]
        words = packed[f"{layer}.words"]
        w_cl = w.transpose(0, 2, 3, 1) if w.ndim == 4 else w                      # [O, kh, kw, C] / [O, I]
        assert words.dtype == np.uint64 and words.shape == (*w_cl.shape[:-1], (w_cl.shape[-1] + 63) // 64)
        for index in np.ndindex(*w_cl.shape[:-1]):
            expected = [0] * words.shape[-1]
            for c, value in enumerate(w_cl[index]):
                if value < 0:
                    expected[c // 64] |= 1 << (c % 64)
            assert [int(v) for v in words[index]] == expected
        alpha = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).mean(axis=1)
        np.testing.assert_allclose(packed[f"{layer}.alpha"], alpha, rtol=1e-6)
    # 8 ResnetBlocks (conv1, conv2, temb_proj) + 4 AttnBlocks (q, k, v, proj_out) + Downsample + Upsample convs
    assert len([k for k in packed if k.endswith(".words")]) == 8 * 3 + 4 * 4 + 2


def test_export_refuses_other_methods_fp_models_and_packed_files(tmp_path):
    write_student(tmp_path / "dorefa.h5", "dorefa", 0)
    with pytest.raises(ValueError, match="'dorefa' cannot be packed: packed inference supports bidm, xnor, xnor_k"):
        export_packed(str(tmp_path / "dorefa.h5"), str(tmp_path / "out.h5"))
    teacher = UNet(MICRO, rng=np.random.default_rng(0))
    save_checkpoint(tmp_path / "fp.h5", params=teacher.state_dict(),
                    config={"model": asdict(MICRO), "schedule": asdict(ScheduleConfig())})
    with pytest.raises(ValueError, match="FP model, not a binary student"):
        export_packed(str(tmp_path / "fp.h5"), str(tmp_path / "out.h5"))
    write_student(tmp_path / "s.h5", "xnor", 0)
    export_packed(str(tmp_path / "s.h5"), str(tmp_path / "p.h5"))
    with pytest.raises(ValueError, match="already packed"):
        export_packed(str(tmp_path / "p.h5"), str(tmp_path / "out.h5"))
    with pytest.raises(ValueError, match="EMA weights only: drop --raw"):
        load_model(str(tmp_path / "p.h5"), use_ema=False)
    assert not (tmp_path / "out.h5").exists()


def corrupt_copy(src, dst, edit) -> None:
    """Copy, edit and drop arrays_sha256 (as in a file written before it), so the packed checks are reached."""
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as h5:
        edit(h5)
        del h5.attrs["arrays_sha256"]


def test_corrupt_packed_files_are_refused_with_one_line(tmp_path):
    write_student(tmp_path / "s.h5", "bidm", 2)
    good = tmp_path / "p.h5"
    export_packed(str(tmp_path / "s.h5"), str(good))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    layer = "down.0.block.0.conv2"

    def set_pad_bit(h5):
        words = h5["packed"][f"{layer}.words"][...]
        words[0, 0, 0, 0] |= np.uint64(1) << np.uint64(63)                        # 24 channels: bit 63 is padding
        h5["packed"][f"{layer}.words"][...] = words

    corrupt_copy(good, tmp_path / "missing.h5", lambda h5: h5["packed"].__delitem__(f"{layer}.alpha"))
    corrupt_copy(good, tmp_path / "extra.h5",
                 lambda h5: h5["packed"].create_dataset("x.words", data=np.zeros(1, np.uint64)))
    corrupt_copy(good, tmp_path / "padbits.h5", set_pad_bit)
    corrupt_copy(good, tmp_path / "noparam.h5", lambda h5: h5["params"].__delitem__(f"{layer}.tau"))
    cases = {
        "truncated.h5": "not a readable HDF5 file",
        "missing.h5": rf"lacks /packed/{layer}.alpha",
        "extra.h5": r"arrays no layer of its model uses \(\['x.words'\]\)",
        "padbits.h5": rf"/packed/{layer}: PackedConvWeight: pad bits beyond channel 24",
        "noparam.h5": rf"/params do not fit .*{layer}.tau",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as err:
            load_model(str(tmp_path / name))
        assert "\n" not in str(err.value)


def test_cli_export_prints_size_and_sample_runs_packed(tmp_path, capsys):
    write_student(tmp_path / "s.h5", "bidm", 2)
    packed = tmp_path / "p.h5"
    assert cli.main(["export", "--weights", str(tmp_path / "s.h5"), "--out", str(packed)]) == 0
    out = capsys.readouterr().out
    assert f"{packed.stat().st_size:,} bytes on disk" in out
    assert cli.main(["sample", "--weights", str(packed), "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "g.png"), "--npz", str(tmp_path / "g.npz")]) == 0
    assert np.load(tmp_path / "g.npz")["arr_0"].shape == (2, 8, 8, 1)
    before, _ = packed.read_bytes(), capsys.readouterr()
    assert cli.main(["export", "--weights", str(tmp_path / "s.h5"), "--out", str(packed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {packed} already exists") and err.count("\n") == 1
    assert packed.read_bytes() == before
    write_student(tmp_path / "d.h5", "reste", 0)
    assert cli.main(["export", "--weights", str(tmp_path / "d.h5"), "--out", str(tmp_path / "x.h5")]) == 2
    assert "supports bidm, xnor, xnor_k" in capsys.readouterr().err


def test_export_of_an_fp_model_keeps_the_ema_weights_only(tmp_path):
    rng = np.random.default_rng(3)
    teacher = UNet(MICRO, rng=rng)
    params = teacher.state_dict()
    ema = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}
    save_checkpoint(tmp_path / "fp.h5", params=params, ema=ema, step=5,
                    config={"model": asdict(MICRO), "schedule": asdict(ScheduleConfig())})
    summary = export_checkpoint(str(tmp_path / "fp.h5"), str(tmp_path / "slim.h5"))
    assert summary.weights == "ema" and summary.binary_layers == 0
    slim = load_checkpoint(str(tmp_path / "slim.h5"))
    assert slim.ema is None and slim.optim is None and slim.step == 5
    x = rng.standard_normal((2, MICRO.in_channels, MICRO.resolution, MICRO.resolution)).astype(np.float32)
    t = np.array([3, 700])
    from_slim, _ = load_model(str(tmp_path / "slim.h5"))
    from_full, _ = load_model(str(tmp_path / "fp.h5"))
    np.testing.assert_array_equal(from_slim.forward(x, t)[0], from_full.forward(x, t)[0])
    assert (tmp_path / "slim.h5").stat().st_size < (tmp_path / "fp.h5").stat().st_size
