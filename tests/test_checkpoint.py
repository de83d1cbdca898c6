"""Checkpoint files: round trips, resume, config checks, refusal of bad files, atomic writes."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, from_dtype

from bidm_ref.train.adam import Adam, AdamConfig
from bidm_ref.storage.atomic import atomic_h5, atomic_write
from bidm_ref.storage.checkpoint import CheckpointError, check_config, load_checkpoint, load_config, save_checkpoint
from bidm_ref.train.clip import clip_grad_norm
from bidm_ref.train.ema import EMA

DTYPES = [np.float16, np.float32, np.float64, np.int32, np.uint64, np.bool_]
name_parts = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True) | st.integers(0, 20).map(str)
dotted_names = st.lists(name_parts, min_size=1, max_size=5).map(".".join)


@st.composite
def named_arrays(draw) -> dict[str, np.ndarray]:
    """A dict dotted name -> array of any of DTYPES, any small shape (0-d and empty included), finite."""
    out = {}
    for name in draw(st.lists(dotted_names, min_size=1, max_size=4, unique=True)):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        finite = {"allow_nan": False, "allow_infinity": False} if dtype.kind == "f" else {}
        shape = draw(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        out[name] = draw(arrays(dtype, shape, elements=from_dtype(dtype, **finite)))
    return out


def assert_same_arrays(actual: dict, expected: dict) -> None:
    """Same names in the same order, same dtypes, shapes and values."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert actual[name].shape == value.shape, name
        np.testing.assert_array_equal(actual[name], value)


def small_params(value: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "down.0.conv.weight": np.full((2, 1, 3, 3), value, dtype=np.float32),
        "down.0.conv.bias": np.zeros(2, dtype=np.float32),
    }


@given(params=named_arrays(), extra=named_arrays(), step=st.integers(0, 2**40), seed=st.integers(0, 2**63))
def test_round_trip_preserves_names_dtypes_order_and_attrs(tmp_path_factory, params, extra, step, seed):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.h5"
    rng_state = np.random.default_rng(seed).bit_generator.state
    config = {"model": {"ch": 64, "ch_mult": (1, 2, 2), "binarizer": "bidm"}, "train": {"lr": 2e-4}}
    save_checkpoint(
        path,
        params=params,
        config=config,
        step=step,
        rng_state=rng_state,
        extra_attrs={"note": "packed student", "n_bits": 1, "scale": 0.5},
        extra_groups={"packed": extra},
    )
    ckpt = load_checkpoint(path)
    assert_same_arrays(ckpt.params, params)
    assert_same_arrays(ckpt.groups["packed"], extra)
    assert ckpt.config == {"model": {"ch": 64, "ch_mult": [1, 2, 2], "binarizer": "bidm"}, "train": {"lr": 2e-4}}
    assert ckpt.step == step
    assert ckpt.rng_state == rng_state
    assert ckpt.attrs == {"note": "packed student", "n_bits": 1, "scale": 0.5}
    assert ckpt.ema is None and ckpt.optim is None


def test_file_layout_matches_design(tmp_path):
    path = tmp_path / "ckpt.h5"
    params = small_params()
    opt = Adam()
    opt.step(params, {name: np.ones_like(p) for name, p in params.items()})
    save_checkpoint(path, params=params, config={"a": 1}, step=5, ema=params, optim=opt.state_dict())
    with h5py.File(path, "r") as h5:
        assert list(h5) == ["params", "ema", "optim"]
        assert list(h5["params"]) == ["down.0.conv.weight", "down.0.conv.bias"]
        assert set(h5["optim"]) == {"m", "v"}
        assert h5["optim/m/down.0.conv.weight"].dtype == np.float32
        assert h5.attrs["format"] == "bidm-ckpt"
        assert h5.attrs["format_version"] == 1
        assert h5.attrs["config"] == '{"a": 1}'
        assert h5.attrs["step"] == 5
        assert h5.attrs["rng_state"] == "null"
        assert h5.attrs["optim_t"] == 1


def test_same_content_gives_same_bytes(tmp_path):
    for name in ("a.h5", "b.h5"):
        save_checkpoint(tmp_path / name, params=small_params(), config={"x": [1, 2]}, step=3, ema=small_params())
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def noisy_quadratic_grads(params: dict, rng: np.random.Generator) -> dict:
    """Gradient of 0.5 * |p - 1|^2 plus noise drawn from rng (so the RNG state matters on resume)."""
    return {name: (p - 1.0 + 0.1 * rng.normal(size=p.shape)).astype(p.dtype) for name, p in params.items()}


def train(params: dict, opt: Adam, ema: EMA, rng: np.random.Generator, steps: int) -> None:
    for _ in range(steps):
        grads = noisy_quadratic_grads(params, rng)
        clip_grad_norm(grads, 1.0)
        opt.step(params, grads)
        ema.update(params)


def test_resume_from_checkpoint_continues_identically(tmp_path):
    path = tmp_path / "ckpt.h5"
    config = AdamConfig(lr=1e-2, weight_decay=1e-3)
    rng = np.random.default_rng(7)
    params = small_params(0.0)
    opt, ema = Adam(config), EMA(0.9)
    ema.register(params)
    train(params, opt, ema, rng, 3)
    save_checkpoint(
        path, params=params, config={}, step=3, ema=ema.state_dict(), optim=opt.state_dict(),
        rng_state=rng.bit_generator.state,
    )
    train(params, opt, ema, rng, 4)

    ckpt = load_checkpoint(path)
    resumed_opt, resumed_ema = Adam(config), EMA(0.9)
    resumed_opt.load_state_dict(ckpt.optim)
    resumed_ema.load_state_dict(ckpt.ema)
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = ckpt.rng_state
    resumed_params = ckpt.params
    train(resumed_params, resumed_opt, resumed_ema, resumed_rng, 4)

    assert resumed_opt.t == opt.t == 7
    assert_same_arrays(resumed_params, params)
    assert_same_arrays(resumed_ema.shadow, ema.shadow)
    assert_same_arrays(resumed_opt.m, opt.m)
    assert_same_arrays(resumed_opt.v, opt.v)


def test_check_config_names_first_differing_key():
    saved = {"model": {"ch": 64, "ch_mult": [1, 2, 2]}, "train": {"lr": 2e-4}}
    with pytest.raises(ValueError) as err:
        check_config(saved, {"model": {"ch": 32, "ch_mult": (1, 2, 2)}}, what="run/ckpt.h5")
    assert str(err.value) == (
        "run/ckpt.h5 was written for model.ch=64 but this model has model.ch=32: "
        "pass the matching --preset or another checkpoint"
    )
    with pytest.raises(ValueError, match=r"for model\.ch_mult\[2\]=2 but this model has model\.ch_mult\[2\]=4"):
        check_config(saved, {"model": {"ch": 64, "ch_mult": (1, 2, 4)}})
    with pytest.raises(ValueError, match=r"for model\.ch_mult=\[1, 2, 2\] but this model has model\.ch_mult=\[1, 2\]"):
        check_config(saved, {"model": {"ch_mult": [1, 2]}})
    with pytest.raises(ValueError, match=r"^checkpoint has no model\.dropout but this model has model\.dropout=0\.1"):
        check_config(saved, {"model": {"dropout": 0.1}})
    with pytest.raises(ValueError, match='for model="tiny" but this model has model="cifar10"'):
        check_config({"model": "tiny"}, {"model": "cifar10"})


def test_check_config_accepts_match_and_ignores_keys_only_saved():
    saved = {"model": {"ch": 64, "ch_mult": [1, 2, 2]}, "train": {"lr": 2e-4}}
    check_config(saved, {"model": {"ch": 64, "ch_mult": (1, 2, 2)}})
    check_config(saved, {})


def test_load_with_expected_config_refuses_mismatch(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={"model": {"ch": 64}})
    assert load_checkpoint(path, expected_config={"model": {"ch": 64}}).config == {"model": {"ch": 64}}
    with pytest.raises(ValueError, match=f"^{path} was written for model.ch=64 but this model has model.ch=32"):
        load_checkpoint(path, expected_config={"model": {"ch": 32}})


def assert_one_line_error(path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.h5")


def test_not_hdf5_and_truncated(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file\n" * 100)
    assert_one_line_error(garbage, "not a readable HDF5 file")
    good = tmp_path / "good.h5"
    save_checkpoint(good, params={"w": np.arange(5000, dtype=np.float64)}, config={})
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(truncated, "not a readable HDF5 file")


def test_wrong_format(tmp_path):
    path = tmp_path / "golden.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "bidm-golden"
    assert_one_line_error(path, "format is 'bidm-golden', expected 'bidm-ckpt'")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    assert_one_line_error(plain, "lacks the root attribute 'format'")


def test_load_config_reads_the_config_alone_with_the_same_refusals(tmp_path):
    path = tmp_path / "ckpt.h5"
    config = {"model": {"ch": 4, "ch_mult": [1, 2]}, "train": {"steps": 3}}
    save_checkpoint(path, params=small_params(), config=config, step=3)
    assert load_config(path) == config == load_checkpoint(path).config
    other = tmp_path / "golden.h5"
    with h5py.File(other, "w") as h5:
        h5.attrs["format"] = "bidm-golden"
    with pytest.raises(CheckpointError, match="format is 'bidm-golden', expected 'bidm-ckpt'"):
        load_config(other)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        load_config(truncated)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.h5")


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={})
    with h5py.File(path, "r+") as h5:
        h5.attrs["format_version"] = 2
    assert_one_line_error(path, "format_version 2, but this bidm-ref reads format_version 1 only")


def test_missing_attr_or_group_is_refused(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={})
    with h5py.File(path, "r+") as h5:
        del h5.attrs["step"]
    assert_one_line_error(path, "lacks the root attribute 'step'")
    save_checkpoint(path, params=small_params(), config={})
    with h5py.File(path, "r+") as h5:
        del h5["params"]
    assert_one_line_error(path, "expected an HDF5 Group at /params, found nothing")


def edit_without_digest(path, edit) -> None:
    """Edit a checkpoint in place and drop its arrays_sha256, as in a file written before it: the checks
    after the sha256 must still refuse what the edit broke (with the sha256 the edit itself is refused)."""
    with h5py.File(path, "r+") as h5:
        edit(h5)
        del h5.attrs["arrays_sha256"]


def test_nan_param_is_refused_on_load_and_save(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={})
    edit_without_digest(path, lambda h5: h5["params/down.0.conv.bias"].__setitem__(1, np.inf))
    assert_one_line_error(path, "/params/down.0.conv.bias contains NaN or Inf")
    bad = small_params()
    bad["down.0.conv.weight"][0, 0, 1, 1] = np.nan
    with pytest.raises(CheckpointError, match="/params/down.0.conv.weight contains NaN or Inf"):
        save_checkpoint(tmp_path / "new.h5", params=bad, config={})
    assert not (tmp_path / "new.h5").exists()


def test_inconsistent_parts_are_refused(tmp_path):
    params = small_params()
    ema = {"down.0.conv.weight": params["down.0.conv.weight"], "down.0.conv.bias": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointError, match="/ema: down.0.conv.bias is float32\\[3\\]"):
        save_checkpoint(tmp_path / "a.h5", params=params, config={}, ema=ema)
    path = tmp_path / "b.h5"
    save_checkpoint(path, params=params, config={}, ema=params)
    edit_without_digest(path, lambda h5: h5.__delitem__("ema/down.0.conv.bias"))
    assert_one_line_error(path, "/ema do not match /params: missing \\['down.0.conv.bias'\\]")


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot be an HDF5 name"):
        save_checkpoint(tmp_path / "a.h5", params={"a/b": np.zeros(1)}, config={})
    with pytest.raises(CheckpointError, match="reserved names"):
        save_checkpoint(tmp_path / "a.h5", params={"a": np.zeros(1)}, config={}, extra_attrs={"step": 3})
    with pytest.raises(CheckpointError, match="reserved names"):
        save_checkpoint(tmp_path / "a.h5", params={"a": np.zeros(1)}, config={}, extra_groups={"ema": {}})


def test_an_in_place_edit_is_refused_as_damage_before_the_other_checks(tmp_path):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={})
    with h5py.File(path, "r+") as h5:
        h5["params/down.0.conv.bias"][1] = np.nan
    assert_one_line_error(path, "is damaged: its arrays do not match the sha256 written with them")


def test_h5py_errors_while_reading_are_one_line(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(), config={})
    for error in (RuntimeError("Unable to get group info (incorrect metadata checksum)"),
                  KeyError("Unable to synchronously open object (bad object header version number)"),
                  TypeError("No NumPy equivalent for TypeBitfieldID exists")):
        def fail(self, *args, error=error):
            raise error

        monkeypatch.setattr(h5py.Dataset, "__getitem__", fail)
        assert_one_line_error(path, f"not a readable HDF5 file \\(corrupt or truncated: {type(error).__name__}: ")
    monkeypatch.undo()
    load_checkpoint(path)


def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, params=small_params(1.0), config={"version": "old"})
    old_bytes = path.read_bytes()
    real_create_dataset = h5py.Group.create_dataset
    calls = []

    def create_dataset_then_fail(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_create_dataset(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset_then_fail)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, params=small_params(2.0), config={"version": "new"})
    monkeypatch.undo()
    assert len(calls) == 2
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["ckpt.h5"]
    assert load_checkpoint(path).config == {"version": "old"}


def test_atomic_helpers_replace_on_success_only(tmp_path):
    path = tmp_path / "sub" / "out.json"
    with atomic_write(path, "w") as handle:
        handle.write("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path, "w") as handle:
        handle.write("second")
        raise RuntimeError("boom")
    assert path.read_text() == "first"
    h5_path = tmp_path / "sub" / "x.h5"
    with pytest.raises(RuntimeError, match="boom"), atomic_h5(h5_path) as h5:
        h5.create_dataset("x", data=np.zeros(2))
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path / "sub")) == ["out.json"]
