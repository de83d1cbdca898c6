"""torch_zip: real torch files (tests/data, see README there), round trips, refusals, corrupt files."""

from __future__ import annotations

import pickle
import pickletools
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bidm_ref.data.torch_zip import (
    ForbiddenGlobalError,
    TorchFileError,
    load_torch_file,
    load_torchscript,
    load_torchscript_params,
    save_torch_zip,
)

DATA = Path(__file__).parent / "data"


def expected_small() -> dict:
    """What tests/data/torch_small_*.pt hold, rebuilt from the formulas in tests/data/README.md."""
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    return {
        "a": a,
        "t": a.T,
        "s": a[1:, ::2],
        "h": np.arange(3, dtype=np.float16) / np.float16(4),
        "l": np.arange(5, dtype=np.int64) - 2,
        "nested": {
            "list": [np.array([True, False, True]), np.arange(6, dtype=np.int32).reshape(2, 3)],
            "tuple": (1, 2.5, "x", None),
        },
        "p": np.arange(2, dtype=np.float64) + 0.5,
        "b": np.array([1.5, -2.0, 0.09375], dtype=np.float32),  # bfloat16-exact values, widened
    }


def assert_same_tree(got: object, want: object, where: str = "root") -> None:
    """Equal structure, container types, array dtypes/shapes/values."""
    same_kind = type(got) is type(want) or (isinstance(got, dict) and isinstance(want, dict))
    assert same_kind, f"{where}: {type(got)} vs {type(want)}"
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            assert_same_tree(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), f"{where}: {got.dtype}{got.shape} vs {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=where)
        assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata, where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", ["torch_small_zip.pt", "torch_small_legacy.pt"])
def test_reads_real_torch_files(name):
    assert_same_tree(load_torch_file(DATA / name), expected_small())


def test_reads_real_torchscript_file():
    params = load_torchscript_params(DATA / "torchscript_small.pt")
    assert sorted(params) == ["conv.bias", "conv.weight", "inner.count", "inner.lin.bias", "inner.lin.weight"]
    np.testing.assert_array_equal(params["inner.lin.weight"], np.arange(6.0, dtype=np.float32).reshape(2, 3) / 2)
    np.testing.assert_array_equal(params["inner.lin.bias"], np.array([-1.0, 1.0], np.float32))
    np.testing.assert_array_equal(params["conv.weight"], np.arange(18.0, dtype=np.float32).reshape(2, 1, 3, 3) - 9)
    np.testing.assert_array_equal(params["conv.bias"], np.array([0.25, -0.25], np.float32))
    np.testing.assert_array_equal(params["inner.count"], np.arange(4, dtype=np.int64))
    root = load_torchscript(DATA / "torchscript_small.pt")
    inner = root.attributes["inner"]
    assert root.qualified_name == "__torch__.Outer"
    assert inner.qualified_name == "__torch__.Inner"
    assert inner.attributes["stride"] == 2 and inner.attributes["padding"] == [1, 2]


def test_torchscript_needs_its_own_loader():
    with pytest.raises(ForbiddenGlobalError, match="load_torchscript"):
        load_torch_file(DATA / "torchscript_small.pt")


def test_round_trip_mixed_tree(tmp_path):
    base = np.arange(30, dtype=np.float32).reshape(5, 6)
    tree = {
        "base": base,
        "views": [base.T, base[1:4, ::2], base[:, 3]],
        "half": (np.linspace(-1, 1, 7).astype(np.float16), {"deep": np.arange(-3, 4, dtype=np.int64).reshape(7, 1)}),
        "flags": np.array([[True], [False]]),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "big_int": 2**40,
        "negative": -7,
        "text": "ünïcode",
        "nothing": None,
    }
    path = tmp_path / "tree.pt"
    save_torch_zip(tree, path)
    assert_same_tree(load_torch_file(path), tree)


def test_views_share_one_storage_like_torch(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "views.pt"
    save_torch_zip({"a": base, "t": base.T, "s": base[1:, ::2], "own": np.ones(2, np.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        storages = sorted(n for n in archive.namelist() if "/data/" in n)
    assert storages == ["views/data/0", "views/data/1"]


dtypes = st.sampled_from([np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_])


@given(st.data(), dtypes, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
def test_round_trip_random_views(data, dtype, shape):
    base = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False)))
    slicer = tuple(slice(data.draw(st.integers(0, n - 1)), None, data.draw(st.integers(1, 3))) for n in shape)
    view = base[slicer]
    tree = {"base": base, "view": view, "transposed": view.T, "copy": np.ascontiguousarray(view[..., ::-1])}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.pt"
        save_torch_zip(tree, path)
        assert_same_tree(load_torch_file(path), tree)


def test_writer_layout_matches_torch(tmp_path):
    path = tmp_path / "x.pt"
    save_torch_zip({"w": np.ones((2, 2), np.float32)}, path)
    with zipfile.ZipFile(path) as mine, zipfile.ZipFile(DATA / "torch_small_zip.pt") as real:
        my_records = {n.split("/", 1)[1] for n in mine.namelist()}
        real_records = {n.split("/", 1)[1] for n in real.namelist()} - {".data/serialization_id"}
        assert my_records == {r for r in real_records if not r.startswith("data/") or r == "data/0"}
        raw = path.read_bytes()
        for info in mine.infolist():  # record data starts on 64-byte boundaries, as torch.save aligns it
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        my_globals = pickle_globals(mine.read("x/data.pkl"))
        real_globals = pickle_globals(real.read("torch_small_zip/data.pkl"))
    assert my_globals == {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"}
    assert my_globals <= real_globals


def pickle_globals(raw: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}


def builtins_open_pickle(target: Path) -> bytes:
    """Protocol-2 pickle that, if executed, would create `target` via builtins.open(target, 'w')."""
    text = str(target).encode()
    return b"\x80\x02cbuiltins\nopen\nX" + struct.pack("<I", len(text)) + text + b"X\x01\x00\x00\x00w\x86R."


def zip_with_pickle(path: Path, pickled: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickled)
        archive.writestr("evil/version", b"3\n")


def test_malicious_zip_is_refused_without_running_anything(tmp_path):
    target = tmp_path / "pwned"
    zip_with_pickle(tmp_path / "evil.pt", builtins_open_pickle(target))
    with pytest.raises(ForbiddenGlobalError, match="builtins.open"):
        load_torch_file(tmp_path / "evil.pt")
    with pytest.raises(ForbiddenGlobalError, match="builtins.open"):
        load_torchscript(tmp_path / "evil.pt")
    assert not target.exists()


def test_malicious_legacy_file_is_refused(tmp_path):
    target = tmp_path / "pwned"
    header = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    (tmp_path / "evil.pt").write_bytes(header + builtins_open_pickle(target))
    with pytest.raises(ForbiddenGlobalError, match="builtins.open"):
        load_torch_file(tmp_path / "evil.pt")
    assert not target.exists()


def test_truncated_zip_gives_a_clear_error(tmp_path):
    path = tmp_path / "x.pt"
    save_torch_zip({"w": np.arange(1000, dtype=np.float32)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TorchFileError, match="truncated or corrupt zip"):
        load_torch_file(path)


def test_short_storage_record_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_torch_zip({"w": np.arange(10, dtype=np.float32)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            dst.writestr(name.replace("good/", "bad/"), src.read(name)[:-4] if name.endswith("data/0") else src.read(name))
    with pytest.raises(TorchFileError, match="holds 36 bytes, expected 40"):
        load_torch_file(bad)


def test_truncated_legacy_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    raw = (DATA / "torch_small_legacy.pt").read_bytes()
    for cut in (len(raw) - 3, 300, 20):
        path.write_bytes(raw[:cut])
        with pytest.raises(TorchFileError, match="truncated"):
            load_torch_file(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    path = tmp_path / "text.pt"
    path.write_bytes(b"hello world")
    with pytest.raises(TorchFileError, match="not a PyTorch checkpoint"):
        load_torch_file(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_torch_file(tmp_path / "missing.pt")


def test_big_endian_archive_is_byteswapped(tmp_path):
    little = tmp_path / "le.pt"
    tree = {"f": np.array([1.5, -2.25], np.float32), "i": np.array([1, -2, 3], np.int64)}
    save_torch_zip(tree, little)
    big = tmp_path / "be.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for name in src.namelist():
            raw = src.read(name)
            if name.endswith("byteorder"):
                raw = b"big"
            elif name.endswith("data/0"):
                raw = np.frombuffer(raw, "<f4").astype(">f4").tobytes()
            elif name.endswith("data/1"):
                raw = np.frombuffer(raw, "<i8").astype(">i8").tobytes()
            dst.writestr(name.replace("le/", "be/"), raw)
    assert_same_tree(load_torch_file(big), tree)


def test_writer_rejects_unsupported_values(tmp_path):
    with pytest.raises(TypeError, match="cannot store set"):
        save_torch_zip({"s": {1, 2}}, tmp_path / "x.pt")
    with pytest.raises(TypeError, match="uint16"):
        save_torch_zip({"u": np.zeros(2, np.uint16)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_bytes_in_state_are_read_via_latin1(tmp_path):
    zip_with_pickle(tmp_path / "b.pt", pickle.dumps({"raw": b"\x00\xffab"}, protocol=2))
    assert load_torch_file(tmp_path / "b.pt") == {"raw": b"\x00\xffab"}
