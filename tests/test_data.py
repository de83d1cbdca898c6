"""Dataset readers: IDX, CIFAR-10 python batches, image folders, named data sets, batching.

Dimensions: N images, C channels, H, W spatial, B batch size.
Every fixture is written here, in tmp_path, by code independent of the readers (struct for IDX,
hand-written pickle opcodes for Python 2 CIFAR batches, Pillow for images).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bidm_ref.data import cifar10, datasets
from bidm_ref.data.batches import BatchSampler
from bidm_ref.data.cifar10 import ForbiddenGlobalError, read_batch, read_split
from bidm_ref.data.datasets import DataConfig, channels_of, load_images, load_labeled
from bidm_ref.data.idx import read_idx
from bidm_ref.data.image_folder import list_image_files, read_image_folder


def assert_one_line(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    """The error message is one line and contains every word."""
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array, by the format's definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def test_idx_hand_written_bytes(tmp_path):
    raw = b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes([0, 1, 2, 250, 254, 255])
    path = tmp_path / "hand-idx2-ubyte"
    path.write_bytes(raw)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 2], [250, 254, 255]])


@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    gz=st.booleans(),
)
def test_idx_round_trip_plain_and_gz(shape, seed, gz):
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = write_idx(Path(folder) / ("x.gz" if gz else "x"), array)
        out = read_idx(path, ndim=len(shape))
    assert out.dtype == np.uint8 and out.shape == tuple(shape)
    np.testing.assert_array_equal(out, array)


def test_idx_gz_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda raw: raw[:-1], ["truncated", "12 data bytes, found 11"]),
        (lambda raw: raw[:6], ["truncated IDX header"]),
        (lambda raw: raw[:3], ["too short"]),
        (lambda raw: raw + b"\x00", ["corrupt", "1 bytes after"]),
        (lambda raw: b"\x01" + raw[1:], ["not an IDX file"]),
        (lambda raw: raw[:2] + b"\x0d" + raw[3:], ["element type 0x0d"]),
        (lambda raw: raw[:3] + b"\x00" + raw[4:], ["0 dimensions"]),
        (lambda raw: raw[:3] + b"\x01" + raw[4:], ["1 dimensions, expected 2"]),
    ],
)
def test_idx_malformed_files(tmp_path, mutate, words):
    path = tmp_path / "bad-idx"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 4), np.uint8))))
    with pytest.raises(ValueError) as excinfo:
        read_idx(path, ndim=2)
    assert_one_line(excinfo, str(path), *words)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((50, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError) as excinfo:
        read_idx(path)
    assert_one_line(excinfo, str(path), "gzip")


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


# ---------------------------------------------------------------- CIFAR-10


def py2_str(value: bytes) -> bytes:
    """Pickle opcode for a Python 2 str (SHORT_BINSTRING or BINSTRING)."""
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<I", len(value)) + value


def py2_int(value: int) -> bytes:
    """Pickle opcode for a small non-negative int (BININT1 or BININT2)."""
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 + numpy 1 pickled it (protocol 2), written opcode by opcode."""
    ndarray = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n" + py2_int(0) + b"\x85" + py2_str(b"b") + b"\x87R"
        + b"(" + py2_int(1) + py2_int(data.shape[0]) + py2_int(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + py2_str(b"u1") + py2_int(0) + py2_int(1) + b"\x87R"
        + b"(" + py2_int(3) + py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + py2_int(0) + b"tb"
        + b"\x89" + py2_str(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(py2_int(label) for label in labels) + b"e"
    return (
        b"\x80\x02}(" + py2_str(b"batch_label") + py2_str(b"training batch 1 of 5")
        + py2_str(b"data") + ndarray + py2_str(b"labels") + label_list + b"u."
    )  # fmt: skip


def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def write_py3_batch(path: Path, data: np.ndarray, labels: list[int]) -> Path:
    path.write_bytes(pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=4))
    return path


def expected_nchw(data: np.ndarray) -> np.ndarray:
    """CIFAR row layout by its definition: pixel (c, y, x) is column c*1024 + y*32 + x."""
    out = np.empty((data.shape[0], 3, 32, 32), np.uint8)
    for c in range(3):
        for y in range(32):
            start = c * 1024 + y * 32
            out[:, c, y, :] = data[:, start : start + 32]
    return out


@pytest.mark.parametrize("writer", ["python2", "python3"])
def test_cifar_batch_layout_and_labels(tmp_path, writer):
    data, labels = cifar_rows(20, seed=1)
    path = tmp_path / "data_batch_1"
    if writer == "python2":
        path.write_bytes(py2_cifar_batch(data, labels))
    else:
        write_py3_batch(path, data, labels)
    images, out_labels = read_batch(path)
    assert images.dtype == np.uint8 and images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(images, expected_nchw(data))
    assert out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_labels, labels)


def test_cifar_split_concatenates_batches_in_order(tmp_path):
    parts = [cifar_rows(4, seed=i) for i in range(6)]
    for name, (data, labels) in zip(cifar10.SPLIT_FILES["train"] + cifar10.SPLIT_FILES["test"], parts):
        write_py3_batch(tmp_path / name, data, labels)
    images, labels = read_split(tmp_path, "train")
    np.testing.assert_array_equal(images, expected_nchw(np.concatenate([p[0] for p in parts[:5]])))
    np.testing.assert_array_equal(labels, sum((p[1] for p in parts[:5]), []))
    test_images, _ = read_split(tmp_path, "test")
    np.testing.assert_array_equal(test_images, expected_nchw(parts[5][0]))


class ShellPayload:
    """Unpickling this runs `touch <marker>` through os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_cifar_refuses_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    data, labels = cifar_rows(2, seed=0)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"x": ShellPayload(marker)}, protocol=4))
    with pytest.raises(ForbiddenGlobalError) as excinfo:
        read_batch(path)
    assert_one_line(excinfo, f"refusing to load {os.system.__module__}.system from {path}", "not a CIFAR-10 batch")
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live: an unrestricted load runs it
    assert marker.exists()


def test_cifar_refuses_builtins(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(EvalPayload(), protocol=4))
    with pytest.raises(pickle.UnpicklingError) as excinfo:
        read_batch(path)
    assert_one_line(excinfo, "refusing to load builtins.eval", str(path))


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ([1, 2], ["no dict with b'data' and b'labels'"]),
        ({b"data": np.zeros((2, 3072), np.uint8)}, ["no dict"]),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, ["uint8 (2, 3000)", "expected uint8 [N, 3072]"]),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, ["float32"]),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, ["(1,) labels for 2 images"]),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, ["labels outside 0..9"]),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, ["not a list of ints"]),
    ],
)
def test_cifar_wrong_content(tmp_path, batch, words):
    path = tmp_path / "data_batch_3"
    path.write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(ValueError) as excinfo:
        read_batch(path)
    assert_one_line(excinfo, str(path), *words)


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_cifar_truncated_pickle(tmp_path, cut):
    data, labels = cifar_rows(3, seed=2)
    path = tmp_path / "data_batch_2"
    path.write_bytes(py2_cifar_batch(data, labels)[:-cut])
    with pytest.raises(ValueError) as excinfo:
        read_batch(path)
    assert_one_line(excinfo, str(path), "unreadable pickle")


# ---------------------------------------------------------------- image folder


def save_image(path: Path, pixels: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] (or [H, W]) with Pillow, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def solid(height: int, width: int, color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()  # [H, W, 3]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Five images of different sizes and formats, one nested, plus a non-image file."""
    folder = tmp_path / "imgs"
    save_image(folder / "b.png", solid(8, 8, (10, 20, 30)))
    save_image(folder / "a.jpg", solid(12, 20, (200, 100, 50)))
    save_image(folder / "sub" / "c.PNG", solid(30, 10, (0, 255, 0)))
    save_image(folder / "d.bmp", solid(9, 9, (7, 7, 7)))
    save_image(folder / "e.webp", solid(16, 16, (90, 90, 90)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_list_image_files_sorted_recursive(image_folder):
    names = [p.relative_to(image_folder).as_posix() for p in list_image_files(image_folder)]
    assert names == ["a.jpg", "b.png", "d.bmp", "e.webp", "sub/c.PNG"]


def test_read_image_folder_shapes_and_colors(image_folder):
    images = read_image_folder(image_folder, resolution=8)
    assert images.dtype == np.uint8 and images.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(images[1], solid(8, 8, (10, 20, 30)).transpose(2, 0, 1))  # 8x8 PNG: untouched
    np.testing.assert_array_equal(images[4], solid(8, 8, (0, 255, 0)).transpose(2, 0, 1))  # resized constant PNG
    assert np.abs(images[0].astype(int) - np.array([200, 100, 50])[:, None, None]).max() <= 3  # lossy JPEG
    gray = read_image_folder(image_folder, resolution=4, grayscale=True, limit=4)
    assert gray.shape == (4, 1, 4, 4)
    np.testing.assert_array_equal(gray[2], 7)  # gray (7, 7, 7) stays 7 in 'L'


@pytest.mark.parametrize("landscape", [True, False])
def test_resize_center_crop_keeps_the_middle(tmp_path, landscape):
    """Three 40/80/40 stripes along the long side of a 160x32 image; R = 16 keeps the middle one."""
    stripes = np.zeros((32, 160, 3), np.uint8)
    stripes[:, :40] = (255, 0, 0)
    stripes[:, 40:120] = (0, 255, 0)
    stripes[:, 120:] = (0, 0, 255)
    pixels = stripes if landscape else stripes.transpose(1, 0, 2).copy()
    save_image(tmp_path / "f" / "s.png", pixels)
    out = read_image_folder(tmp_path / "f", resolution=16)
    np.testing.assert_array_equal(out[0], solid(16, 16, (0, 255, 0)).transpose(2, 0, 1))


@pytest.mark.parametrize("portrait", [False, True])
@pytest.mark.parametrize(("width", "left"), [(12, 2), (13, 2), (8, 0)])
def test_center_crop_offset_without_resize(tmp_path, width, left, portrait):
    """Short side already R = 8: no resampling, the crop starts at (long - 8) // 2 (odd surplus cut at the end)."""
    columns = np.arange(width, dtype=np.uint8) * 20  # pixel value encodes its position along the long side
    pixels = np.repeat(np.broadcast_to(columns, (8, width))[:, :, None], 3, axis=2)  # [8, width, 3]
    save_image(tmp_path / "f" / "c.png", pixels.transpose(1, 0, 2).copy() if portrait else pixels)
    out = read_image_folder(tmp_path / "f", resolution=8)[0, 0]  # [8, 8]
    expected = np.broadcast_to(columns[left : left + 8], (8, 8))
    np.testing.assert_array_equal(out, expected.T if portrait else expected)


def test_unreadable_images(tmp_path):
    folder = tmp_path / "f"
    save_image(folder / "good.png", solid(4, 4, (1, 2, 3)))
    (folder / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError) as excinfo:
        read_image_folder(folder, resolution=4)
    assert_one_line(excinfo, "cannot read image", str(folder / "garbage.png"))
    (folder / "garbage.png").write_bytes((folder / "good.png").read_bytes()[:-30])
    with pytest.raises(ValueError) as excinfo:
        read_image_folder(folder, resolution=4)
    assert_one_line(excinfo, "cannot read image", str(folder / "garbage.png"))


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError) as excinfo:
        list_image_files(tmp_path / "empty")
    assert_one_line(excinfo, "no .png", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as excinfo:
        list_image_files(tmp_path / "absent")
    assert_one_line(excinfo, "not found", "--data-dir")


# ---------------------------------------------------------------- named data sets


IDX_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def write_mnist_dir(folder: Path, n_train: int = 7, n_test: int = 3, suffix: str = ".gz") -> dict:
    """The four IDX files with random 28x28 images in 1..255 (so a 0 in the output is padding)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        content[split, "images"] = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
        content[split, "labels"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for key, array in content.items():
        write_idx(folder / (IDX_STEMS[key] + suffix), array)
    return content


def test_fashion_mnist_default_dir_scaling_and_padding(tmp_path, monkeypatch):
    content = write_mnist_dir(tmp_path / "fm")
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "fm")
    images = load_images(DataConfig())
    assert images.dtype == np.float32 and images.shape == (7, 1, 32, 32)
    interior = content["train", "images"].astype(np.float64) / 127.5 - 1.0  # [N, 28, 28]
    np.testing.assert_allclose(images[:, 0, 2:30, 2:30], interior, rtol=0, atol=1e-6)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(images[:, 0][:, border] == -1.0)  # padded with the background, pixel 0
    assert np.all(images[:, 0, 2:30, 2:30] > -1.0)  # the fixture has no 0 pixels inside


def test_scaling_endpoints(tmp_path):
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 0, :3] = (0, 51, 255)
    write_idx(tmp_path / IDX_STEMS["train", "images"], pixels)
    row = load_images(DataConfig(name="mnist", data_dir=str(tmp_path)))[0, 0, 2, 2:5]
    np.testing.assert_allclose(row, [-1.0, -0.6, 1.0], rtol=0, atol=1e-7)  # 51 / 127.5 = 0.4


def test_labels_split_and_limit(tmp_path):
    content = write_mnist_dir(tmp_path)
    images, labels = load_labeled(DataConfig(name="mnist", data_dir=str(tmp_path), split="test"))
    assert images.shape == (3, 1, 32, 32) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, content["test", "labels"])
    np.testing.assert_allclose(images[:, 0, 2:30, 2:30], content["test", "images"] / 127.5 - 1, atol=1e-6)
    images, labels = load_labeled(DataConfig(name="mnist", data_dir=str(tmp_path), limit=4))
    np.testing.assert_array_equal(labels, content["train", "labels"][:4])
    np.testing.assert_allclose(images[:, 0, 2:30, 2:30], content["train", "images"][:4] / 127.5 - 1, atol=1e-6)


def test_plain_idx_preferred_over_gz(tmp_path):
    write_mnist_dir(tmp_path, suffix=".gz")
    plain = write_mnist_dir(tmp_path / "plain", n_train=2, suffix="")
    (tmp_path / "plain" / IDX_STEMS["train", "images"]).rename(tmp_path / IDX_STEMS["train", "images"])
    images = load_images(DataConfig(name="mnist", data_dir=str(tmp_path)))
    np.testing.assert_allclose(images[:, 0, 2:30, 2:30], plain["train", "images"] / 127.5 - 1, atol=1e-6)


def test_images_without_labels_file(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / (IDX_STEMS["train", "labels"] + ".gz")).unlink()
    assert load_images(DataConfig(name="mnist", data_dir=str(tmp_path))).shape == (7, 1, 32, 32)
    with pytest.raises(FileNotFoundError) as excinfo:
        load_labeled(DataConfig(name="mnist", data_dir=str(tmp_path)))
    assert_one_line(excinfo, "mnist not found", IDX_STEMS["train", "labels"], "--data-dir")


def test_label_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / (IDX_STEMS["train", "labels"] + ".gz"), np.zeros(6, np.uint8))
    with pytest.raises(ValueError) as excinfo:
        load_labeled(DataConfig(name="mnist", data_dir=str(tmp_path)))
    assert_one_line(excinfo, "6 labels for 7 images")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as excinfo:
        load_images(DataConfig())
    assert_one_line(
        excinfo, "fashion-mnist not found", str(tmp_path / "nowhere" / IDX_STEMS["train", "images"]),
        "apt-get install dataset-fashion-mnist", "--data-dir",
    )  # fmt: skip


@pytest.mark.parametrize("name", ["mnist", "cifar10", "folder"])
def test_no_default_dir(name):
    with pytest.raises(ValueError) as excinfo:
        load_images(DataConfig(name=name))
    assert_one_line(excinfo, f"{name} has no default location", "--data-dir")


def test_cifar10_dataset(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [cifar_rows(3, seed=i) for i in range(6)]
    for name, (data, labels) in zip(cifar10.SPLIT_FILES["train"] + cifar10.SPLIT_FILES["test"], parts):
        (root / name).write_bytes(py2_cifar_batch(data, labels))
    for data_dir in (root, tmp_path):  # the batches' folder or the folder the tarball was extracted in
        images, labels = load_labeled(DataConfig(name="cifar10", data_dir=str(data_dir), split="test"))
        assert images.dtype == np.float32 and images.shape == (3, 3, 32, 32)
        np.testing.assert_allclose(images, expected_nchw(parts[5][0]) / 127.5 - 1, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(labels, parts[5][1])
    images = load_images(DataConfig(name="cifar10", data_dir=str(root), limit=5))
    first_five = np.concatenate([parts[0][0], parts[1][0][:2]])  # [5, 3072]
    np.testing.assert_allclose(images, expected_nchw(first_five) / 127.5 - 1, atol=1e-6)


def test_missing_cifar10(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_images(DataConfig(name="cifar10", data_dir=str(tmp_path)))
    assert_one_line(excinfo, "cifar10 not found", str(tmp_path / "data_batch_1"), "www.cs.toronto.edu/~kriz/cifar.html")


def test_folder_dataset(image_folder):
    images, labels = load_labeled(DataConfig(name="folder", data_dir=str(image_folder), resolution=8, limit=2))
    assert labels is None and images.dtype == np.float32 and images.shape == (2, 3, 8, 8)
    expected = np.broadcast_to((np.array([10, 20, 30]) / 127.5 - 1)[:, None, None], (3, 8, 8))
    np.testing.assert_allclose(images[1], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "imagenet"}, ["unknown dataset 'imagenet'", "fashion-mnist, mnist, cifar10, folder"]),
        ({"split": "val"}, ["unknown split 'val'", "train, test"]),
        ({"resolution": 64}, ["fashion-mnist is read at 32x32", "--resolution 32"]),
        ({"name": "folder", "resolution": 0}, ["resolution must be >= 1"]),
        ({"limit": 0}, ["limit must be >= 1"]),
    ],
)
def test_bad_config(kwargs, words):
    with pytest.raises(ValueError) as excinfo:
        DataConfig(**kwargs)
    assert_one_line(excinfo, *words)


def test_channels_of():
    assert [channels_of(n) for n in ("fashion-mnist", "mnist", "cifar10", "folder")] == [1, 1, 3, 3]
    with pytest.raises(ValueError, match="valid names"):
        channels_of("svhn")


# ---------------------------------------------------------------- batches


def numbered_images(n: int) -> np.ndarray:
    """Image i is constant i in its first column and 1000 + i elsewhere (so a flip is visible)."""
    images = np.full((n, 1, 2, 3), 1000.0, np.float32) + np.arange(n, dtype=np.float32)[:, None, None, None]
    images[:, :, :, 0] -= 1000.0
    return images  # [N, 1, 2, 3]


def ids(batch: np.ndarray) -> np.ndarray:
    """Which image each batch entry is, from its constant part (column 1)."""
    return (batch[:, 0, 0, 1] - 1000.0).astype(np.int64)


@given(n=st.integers(1, 30), b=st.integers(1, 40), seed=st.integers(0, 2**31), steps=st.integers(1, 12))
def test_batch_stream_is_the_concatenated_permutations(n, b, seed, steps):
    sampler = BatchSampler(numbered_images(n), batch_size=b, seed=seed)
    stream = np.concatenate([ids(sampler.batch(s)) for s in range(steps)])  # [steps*B]
    epochs = -(-steps * b // n)
    expected = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(epochs)])
    np.testing.assert_array_equal(stream, expected[: steps * b])


@given(n_over_b=st.integers(1, 6), b=st.integers(1, 8), seed=st.integers(0, 2**31), epoch=st.integers(0, 3))
def test_each_image_once_per_epoch_when_b_divides_n(n_over_b, b, seed, epoch):
    n = n_over_b * b
    sampler = BatchSampler(numbered_images(n), batch_size=b, seed=seed, hflip=True)
    seen = np.concatenate([ids(sampler.batch(s)) for s in range(epoch * n_over_b, (epoch + 1) * n_over_b)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))


@given(seed=st.integers(0, 2**31), step=st.integers(0, 50), hflip=st.booleans())
def test_batch_depends_only_on_seed_and_step(seed, step, hflip):
    images = numbered_images(11)
    fresh = BatchSampler(images, batch_size=4, seed=seed, hflip=hflip).batch(step)
    used = BatchSampler(images.copy(), batch_size=4, seed=seed, hflip=hflip)
    for other in (step + 3, 0, step + 1, 7):
        used.batch(other)
    np.testing.assert_array_equal(used.batch(step), fresh)
    np.testing.assert_array_equal(used.images, images)  # batches are copies


def test_batch_spans_epoch_boundary():
    sampler = BatchSampler(numbered_images(10), batch_size=4, seed=3)
    perm0 = np.random.default_rng([3, 0]).permutation(10)
    perm1 = np.random.default_rng([3, 1]).permutation(10)
    np.testing.assert_array_equal(ids(sampler.batch(2)), [perm0[8], perm0[9], perm1[0], perm1[1]])
    assert not np.array_equal(perm0, perm1)


def test_different_seeds_give_different_orders():
    a = BatchSampler(numbered_images(50), batch_size=50, seed=0).batch(0)
    b = BatchSampler(numbered_images(50), batch_size=50, seed=1).batch(0)
    assert not np.array_equal(a, b)


@given(seed=st.integers(0, 2**31), step=st.integers(0, 100))
def test_hflip_mirrors_the_drawn_images(seed, step):
    images = numbered_images(6)
    batch = BatchSampler(images, batch_size=9, seed=seed, hflip=True).batch(step)
    plain = BatchSampler(images, batch_size=9, seed=seed, hflip=False).batch(step)
    drawn = np.random.default_rng([seed, step, 1]).random(9) < 0.5
    for j in range(9):
        expected = plain[j, :, :, ::-1] if drawn[j] else plain[j]
        np.testing.assert_array_equal(batch[j], expected)
    assert np.all(plain[:, 0, :, 0] < 1000)  # without hflip the marker column stays first


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"images": np.zeros((0, 1, 2, 2), np.float32), "batch_size": 1, "seed": 0}, ["non-empty [N, C, H, W]"]),
        ({"images": np.zeros((3, 2, 2), np.float32), "batch_size": 1, "seed": 0}, ["non-empty [N, C, H, W]"]),
        ({"images": np.zeros((3, 1, 2, 2), np.float32), "batch_size": 0, "seed": 0}, ["batch_size must be >= 1"]),
        ({"images": np.zeros((3, 1, 2, 2), np.float32), "batch_size": 1, "seed": -1}, ["seed must be >= 0"]),
    ],
)
def test_bad_sampler(kwargs, words):
    with pytest.raises(ValueError) as excinfo:
        BatchSampler(**kwargs)
    assert_one_line(excinfo, *words)


def test_negative_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        BatchSampler(np.zeros((3, 1, 2, 2), np.float32), batch_size=1, seed=0).batch(-1)
