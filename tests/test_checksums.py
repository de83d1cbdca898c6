"""sha256 of the arrays every written file carries: the byte recipe, checkpoints, packed exports, caches, CLI."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

import cli
from bidm_ref.data.datasets import DataConfig
from bidm_ref.storage.hashing import arrays_sha256
from bidm_ref.metrics import evaluate
from bidm_ref.metrics.evaluate import FeatureSummary, Reference, load_summary, reference_summary
from bidm_ref.metrics.inception import POOL3_DIM, SPATIAL_DIM
from bidm_ref.loading import latent
from bidm_ref.loading.load import load_model
from bidm_ref.loading.export import export_checkpoint
from bidm_ref.loading.shipped import SHIPPED_FILES, WEIGHTS_DIR
from bidm_ref.train.adam import Adam
from bidm_ref.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from test_packed import write_student

# signatures of the checksummed HDF5 metadata structures (object headers, continuation chunks, dense-link
# fractal heaps and v2 B-trees): a damaged byte there fails HDF5's checksum instead of being parsed
CHECKSUMMED = rb"OHDR|OCHK|FRHP|FHDB|FHIB|BTHD|BTIN|BTLF"


def recipe_sha256(records: list[tuple[str, str, str, bytes]]) -> str:
    """The byte recipe of hashing.arrays_sha256's docstring, retyped: (name, dtype, shape, data) in sorted order."""
    digest = hashlib.sha256()
    for record in sorted(records):
        for field in (record[0].encode(), record[1].encode(), record[2].encode(), record[3]):
            digest.update(len(field).to_bytes(8, "little") + field)
    return digest.hexdigest()


def test_arrays_sha256_follows_the_documented_byte_recipe():
    arrays = {
        "params/b": np.array([[1.5, -2.0, 0.25]], dtype=np.float32),
        "params/a": np.array(7, dtype=np.uint64),
        "ema/mask": np.zeros((0, 2), dtype=np.bool_),
        "packed/flags": np.array([True, False, True]),
        "big.endian": np.array([1.0, 2.0], dtype=">f8"),
    }
    records = [
        ("params/b", "<f4", "1,3", b"\x00\x00\xc0\x3f" + b"\x00\x00\x00\xc0" + b"\x00\x00\x80\x3e"),
        ("params/a", "<u8", "", b"\x07" + b"\x00" * 7),
        ("ema/mask", "|b1", "0,2", b""),
        ("packed/flags", "|b1", "3", b"\x01\x00\x01"),
        ("big.endian", "<f8", "2", b"\x00\x00\x00\x00\x00\x00\xf0\x3f" + b"\x00\x00\x00\x00\x00\x00\x00\x40"),
    ]
    assert arrays_sha256(arrays) == recipe_sha256(records)
    assert arrays_sha256({}) == hashlib.sha256(b"").hexdigest()


def test_arrays_sha256_depends_on_content_not_on_layout():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.integers(0, 2**63, 5, dtype=np.uint64)
    reference = arrays_sha256({"a": a, "b": b})
    assert arrays_sha256({"b": b, "a": a}) == reference                            # insertion order
    assert arrays_sha256({"a": np.asfortranarray(a), "b": b}) == reference         # memory order
    assert arrays_sha256({"a": a.astype(">f4"), "b": b}) == reference              # byte order
    assert arrays_sha256({"a": np.concatenate([a, a], axis=1)[:, :6], "b": b}) == reference   # a strided view
    flipped = a.copy()
    flipped.reshape(-1).view(np.uint8)[37] ^= 1
    changed = [
        {"a": flipped, "b": b},                                                   # one bit of the data
        {"A": a, "b": b},                                                         # a name
        {"a": a.view(np.int32), "b": b},                                          # the dtype, same bytes
        {"a": a.reshape(6, 4), "b": b},                                           # the shape, same bytes
    ]
    assert len({reference, *(arrays_sha256(arrays) for arrays in changed)}) == 1 + len(changed)


def test_arrays_sha256_refuses_object_arrays():
    with pytest.raises(ValueError, match="x is an object array"):
        arrays_sha256({"x": np.array(["a", None], dtype=object)})


# ---------------------------------------------------------------- checkpoints


def write_full_checkpoint(path: Path) -> None:
    """A checkpoint with every part: /params, /ema, /optim/m, /optim/v and an extra uint64 group."""
    params = {"conv.weight": np.linspace(-1, 1, 54, dtype=np.float32).reshape(2, 3, 3, 3),
              "conv.bias": np.array([0.5, -0.5], dtype=np.float32)}
    opt = Adam()
    opt.step(params, {name: np.ones_like(p) for name, p in params.items()})
    ema = {name: p * np.float32(0.9) for name, p in params.items()}
    save_checkpoint(path, params=params, config={"model": {"ch": 8}}, step=3, ema=ema, optim=opt.state_dict(),
                    extra_groups={"packed": {"layer.words": np.arange(1, 9, dtype=np.uint64)}})


def datasets_of(path: Path) -> dict[str, tuple[int, int, np.ndarray]]:
    """{dataset path without '/': (byte offset of its raw data in the file, its size in bytes, its array)}."""
    found = {}
    with h5py.File(path, "r") as h5:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                found[name] = (item.id.get_offset(), item.id.get_storage_size(), item[...])
        h5.visititems(visit)
    return found


def flip_byte(src: Path, dst: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= mask
    dst.write_bytes(bytes(data))


def assert_refused_as_damaged(path: Path, load=load_checkpoint) -> None:
    with pytest.raises(CheckpointError, match="is damaged: its arrays do not match the sha256 written with them"
                       ) as err:
        load(str(path))
    message = str(err.value)
    assert message.startswith(f"{path} is damaged") and message.endswith(": restore it or re-create it")
    assert "\n" not in message


def test_the_digest_covers_every_dataset_by_its_group_path(tmp_path):
    path = tmp_path / "ckpt.h5"
    write_full_checkpoint(path)
    arrays = {name: array for name, (_, _, array) in datasets_of(path).items()}
    assert sorted(arrays) == ["ema/conv.bias", "ema/conv.weight", "optim/m/conv.bias", "optim/m/conv.weight",
                              "optim/v/conv.bias", "optim/v/conv.weight", "packed/layer.words",
                              "params/conv.bias", "params/conv.weight"]
    with h5py.File(path, "r") as h5:
        assert h5.attrs["arrays_sha256"] == arrays_sha256(arrays)
    assert "arrays_sha256" not in load_checkpoint(path).attrs


def test_a_flipped_byte_in_any_dataset_is_refused(tmp_path):
    good = tmp_path / "good.h5"
    write_full_checkpoint(good)
    for name, (offset, size, _) in datasets_of(good).items():
        damaged = tmp_path / f"damaged-{name.replace('/', '_')}.h5"
        flip_byte(good, damaged, offset + size // 2)                              # low bit: values stay finite
        assert_refused_as_damaged(damaged)
    load_checkpoint(good)


def test_a_copy_with_another_file_layout_still_verifies(tmp_path):
    src, dst = tmp_path / "contiguous.h5", tmp_path / "chunked.h5"
    write_full_checkpoint(src)
    with h5py.File(src, "r") as h5, h5py.File(dst, "w") as out:
        for key, value in h5.attrs.items():
            out.attrs[key] = value
        for name, (_, _, array) in sorted(datasets_of(src).items(), reverse=True):
            out.create_dataset(name, data=array, chunks=True, compression="gzip", shuffle=True)
    assert src.read_bytes() != dst.read_bytes()
    copy = load_checkpoint(dst)
    original = load_checkpoint(src)
    for name, array in original.dataset_arrays().items():
        np.testing.assert_array_equal(copy.dataset_arrays()[name], array)


def test_a_file_written_before_the_digest_still_loads(tmp_path):
    path = tmp_path / "old.h5"
    write_full_checkpoint(path)
    expected = load_checkpoint(path)
    with h5py.File(path, "r+") as h5:
        del h5.attrs["arrays_sha256"]
        h5["params/conv.bias"][0] = 0.75                                          # unverifiable: nothing to compare
    ckpt = load_checkpoint(path)
    assert ckpt.params["conv.bias"][0] == 0.75
    np.testing.assert_array_equal(ckpt.params["conv.weight"], expected.params["conv.weight"])


def test_the_shipped_weights_carry_a_digest_that_verifies():
    for name in SHIPPED_FILES:
        path = WEIGHTS_DIR / name
        with h5py.File(path, "r") as h5:
            assert "arrays_sha256" in h5.attrs                                  # exported since 2026-12-01
        load_checkpoint(str(path))                                               # checks it


def checksummed_damages(data: bytes) -> list[tuple[str, int]]:
    """(what, offset) of bytes to flip in HDF5 metadata: the superblock version, and one byte inside every
    checksummed structure (6 bytes past its signature). Unchecksummed metadata (the global heap of
    variable-length strings) is left alone: some damage there makes libhdf5 loop instead of failing."""
    return [("superblock version", 8)] + [(match.group().decode(), match.start() + 6)
                                          for match in re.finditer(CHECKSUMMED, data)]


def test_damaged_hdf5_metadata_is_a_one_line_checkpoint_error(tmp_path):
    good = tmp_path / "good.h5"
    params = {f"layer{k}.weight": np.full(3, k, np.float32) for k in range(12)}    # > 8 links: dense storage
    save_checkpoint(good, params=params, config={"model": {"ch": 8}}, step=1)
    damages = checksummed_damages(good.read_bytes())
    assert {"OHDR", "FRHP", "BTHD", "BTLF"} <= {what for what, _ in damages}
    causes = set()
    for what, offset in damages:
        damaged = tmp_path / f"damaged-{offset}.h5"
        flip_byte(good, damaged, offset, 0xFF)
        try:
            ckpt = load_checkpoint(damaged)
        except CheckpointError as err:
            message = str(err)
            assert message.startswith(str(damaged)) and "\n" not in message, (what, offset)
            causes.add(type(err.__cause__))
        else:                                                                     # an index this reader never uses
            for name, array in params.items():
                np.testing.assert_array_equal(ckpt.params[name], array)
    assert RuntimeError in causes and KeyError in causes and OSError in causes


# ---------------------------------------------------------------- packed exports and the CLI


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory) -> Path:
    """A packed bidm student written by loading/export.py."""
    folder = tmp_path_factory.mktemp("packed")
    write_student(folder / "student.h5", "bidm", 2)
    export_checkpoint(str(folder / "student.h5"), str(folder / "packed.h5"))
    return folder / "packed.h5"


def test_a_flipped_byte_in_packed_words_is_refused(packed_file, tmp_path):
    offset, size, words = datasets_of(packed_file)["packed/down.0.block.0.conv1.words"]
    assert words.dtype == np.uint64
    damaged = tmp_path / "damaged.h5"
    flip_byte(packed_file, damaged, offset + 8 * (size // 16))                     # channel 0 of a middle word
    assert_refused_as_damaged(damaged, load=load_model)
    load_model(str(packed_file))


def cli_error_line(capfd, argv: list[str]) -> str:
    """The stderr of `cli.main(argv)`, which must exit 2 with exactly one line."""
    assert cli.main(argv) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_cli_sample_refuses_damaged_packed_files_with_one_line(packed_file, tmp_path, capfd):
    offset, size, _ = datasets_of(packed_file)["params/conv_in.weight"]
    flipped = tmp_path / "flipped.h5"
    flip_byte(packed_file, flipped, offset + size // 2)
    metadata = tmp_path / "metadata.h5"
    heap = next(offset for what, offset in checksummed_damages(packed_file.read_bytes()) if what == "FRHP")
    flip_byte(packed_file, metadata, heap, 0xFF)
    out = tmp_path / "x.png"
    sample = ["sample", "--n", "1", "--steps", "2", "--out", str(out), "--weights"]
    line = cli_error_line(capfd, [*sample, str(flipped)])
    assert line.startswith(f"error: {flipped} is damaged: its arrays do not match the sha256 written with them")
    line = cli_error_line(capfd, [*sample, str(metadata)])
    assert line.startswith(f"error: {metadata} is not a readable HDF5 file") and "RuntimeError" in line
    assert not out.exists()


# ---------------------------------------------------------------- caches


def test_latent_cache_is_verified_and_a_damaged_one_refused(tmp_path, monkeypatch):
    means = np.random.default_rng(1).standard_normal((3, 4, 2, 2)).astype(np.float32)
    monkeypatch.setattr(latent, "load_images", lambda cfg: None)
    monkeypatch.setattr(latent, "encode_means", lambda ae, images, progress: means)
    ae_path, cfg = str(tmp_path / "ae.h5"), DataConfig(data_dir=str(tmp_path))
    np.testing.assert_array_equal(latent.cached_means(None, ae_path, "0" * 64, cfg, progress=False), means)
    (cache,) = tmp_path.glob("latents-*.npz")

    def encode_again(ae, images, progress):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(latent, "encode_means", encode_again)
    np.testing.assert_array_equal(latent.cached_means(None, ae_path, "0" * 64, cfg, progress=False), means)
    with np.load(cache) as npz:
        stored = dict(npz)
    stored["means"][1, 2, 0, 1] += 1
    np.savez(cache, **stored)
    with pytest.raises(ValueError) as err:
        latent.cached_means(None, ae_path, "0" * 64, cfg, progress=False)
    assert str(err.value).startswith(f"latent cache {cache} is damaged: its means do not match the sha256")
    assert str(err.value).endswith("delete it to encode again") and "\n" not in str(err.value)


def test_reference_statistics_cache_is_verified_and_a_damaged_one_refused(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    summary = FeatureSummary(rng.standard_normal(POOL3_DIM), np.eye(POOL3_DIM), rng.standard_normal(SPATIAL_DIM),
                             np.eye(SPATIAL_DIM), rng.standard_normal((3, POOL3_DIM)).astype(np.float32))
    monkeypatch.setattr(evaluate, "summarize", lambda images, weights, batch_size, desc, shard_map: summary)
    weights = SimpleNamespace(source_sha256="f" * 64)
    reference_summary(Reference("ref", lambda: None), weights, tmp_path, batch_size=1, progress=False)
    (cache,) = tmp_path.glob("ref--inception-*.npz")
    np.testing.assert_array_equal(load_summary(cache).pool3, summary.pool3)
    with np.load(cache) as npz:
        stored = dict(npz)
    stored["pool3_mean"][5] += 1e-9
    np.savez(cache, **stored)
    with pytest.raises(ValueError) as err:
        load_summary(cache)
    assert str(err.value).startswith(f"reference statistics cache {cache} is damaged: its arrays do not match")
    assert str(err.value).endswith("delete it to recompute") and "\n" not in str(err.value)
    del stored["summary_sha256"]
    np.savez(cache, **stored)
    assert load_summary(cache).pool3_mean[5] == stored["pool3_mean"][5]            # written before the digest
