"""Image conversion and output: to_uint8 / from_uint8, PNG grids, ADM npz batches, folders for eval.

Dimensions: N images, C channels, H, W spatial.
Inputs are built from known uint8 pixels u as x = u / 127.5 - 1 (float64), so every expected
pixel is u itself and never comes from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from bidm_ref.data.images import (
    from_uint8,
    load_image_folder_uint8,
    load_npz_batch,
    save_grid,
    save_npz_batch,
    to_uint8,
)


def float_images(pixels_nchw: np.ndarray) -> np.ndarray:
    """x = u / 127.5 - 1 in float64, computed here independently of from_uint8."""
    return pixels_nchw.astype(np.float64) / 127.5 - 1.0  # [N, C, H, W]


def random_pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def assert_one_line(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# ---------------------------------------------------------------- conversion


def test_to_uint8_hand_values():
    x = np.array([-1.0, 1.0, 0.0, -0.5, 0.5, 2.0, -3.0, 0.999], np.float32).reshape(1, 1, 1, 8)
    # (x + 1) * 127.5 = 0, 255, 127.5, 63.75, 191.25, 382.5, -255, 254.87...
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 255, 128, 64, 191, 255, 0, 255])


def test_from_uint8_keeps_layout():
    u = random_pixels((2, 4, 3, 1))
    x = from_uint8(u)
    assert x.dtype == np.float32 and x.shape == u.shape
    np.testing.assert_allclose(x, u / 127.5 - 1, rtol=0, atol=1e-7)


def test_uint8_round_trip_every_value():
    u = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = from_uint8(u)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x)[..., 0], u[:, 0])


def test_to_uint8_layout_nchw_to_nhwc():
    u = random_pixels((2, 3, 4, 5), seed=1)
    out = to_uint8(float_images(u))
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3), (1, 0, 3, 1)]:
        assert out[n, h, w, c] == u[n, c, h, w]


@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=4, max_dims=4, max_side=5), elements=st.floats(-1, 1, width=32))
)
def test_to_uint8_is_within_half_a_level(x):
    exact = (x.astype(np.float64) + 1.0) * 127.5  # [N, C, H, W]
    out = to_uint8(x).transpose(0, 3, 1, 2).astype(np.float64)  # [N, C, H, W]
    assert np.all(np.abs(out - exact) <= 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_to_uint8_rejects_non_finite(bad):
    x = np.zeros((2, 1, 3, 3), np.float32)
    x[1, 0, 2, 1] = bad
    with pytest.raises(ValueError) as excinfo:
        to_uint8(x)
    assert_one_line(excinfo, "1 NaN/inf values", "diverged")


@pytest.mark.parametrize("x", [np.zeros((3, 4, 4), np.float32), np.zeros((1, 1, 4, 4), np.uint8)])
def test_to_uint8_rejects_wrong_shape_or_dtype(x):
    with pytest.raises(ValueError, match=r"float \[N, C, H, W\]"):
        to_uint8(x)


# ---------------------------------------------------------------- PNG grid


def grid_blocks(grid: np.ndarray, rows: int, columns: int, height: int, width: int) -> tuple[list, np.ndarray]:
    """Cut a 2-px padded grid by hand: the tiles in row-major order and a mask of the padding."""
    tiles, padding = [], np.ones(grid.shape[:2], bool)
    for r in range(rows):
        for c in range(columns):
            top, left = 2 + r * (height + 2), 2 + c * (width + 2)
            tiles.append(grid[top : top + height, left : left + width])
            padding[top : top + height, left : left + width] = False
    return tiles, padding


@pytest.mark.parametrize(
    ("n", "channels", "nrow", "rows", "columns"),
    [(5, 3, 2, 3, 2), (5, 1, None, 2, 3), (1, 3, None, 1, 1), (4, 1, 8, 1, 4), (9, 3, None, 3, 3)],
)
def test_save_grid_layout(tmp_path, n, channels, nrow, rows, columns):
    height, width = 4, 6
    u = random_pixels((n, channels, height, width), seed=n)
    u[u == 0] = 1  # 0 only in the padding
    path = tmp_path / "grid.png"
    save_grid(float_images(u), path, nrow=nrow)
    with Image.open(path) as image:
        assert image.mode == ("L" if channels == 1 else "RGB")
        assert image.size == (columns * (width + 2) + 2, rows * (height + 2) + 2)
        grid = np.asarray(image).reshape(image.height, image.width, channels)
    tiles, padding = grid_blocks(grid, rows, columns, height, width)
    for k in range(n):
        np.testing.assert_array_equal(tiles[k], u[k].transpose(1, 2, 0))
    for k in range(n, rows * columns):
        assert np.all(tiles[k] == 0)  # unused cells of the last row are background
    assert np.all(grid[padding] == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temp file left


def test_save_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        save_grid(np.zeros((2, 2, 4, 4)), tmp_path / "g.png")
    with pytest.raises(ValueError, match="nrow >= 1"):
        save_grid(np.zeros((2, 3, 4, 4)), tmp_path / "g.png", nrow=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out" / "grid.png"
    save_grid(float_images(np.full((1, 1, 2, 2), 9, np.uint8)), path)
    before = path.read_bytes()
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        save_grid(x, path)
    with pytest.raises(ValueError):
        save_npz_batch(x, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


# ---------------------------------------------------------------- npz batches


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_round_trip_is_adm_layout(tmp_path, channels):
    u = random_pixels((6, channels, 5, 7), seed=channels)
    path = tmp_path / "samples.npz"
    save_npz_batch(float_images(u), path)
    with np.load(path) as npz:  # what ADM's evaluator does (it reads arr_0 only)
        assert npz.files == ["arr_0", "arr_0_sha256"]
        np.testing.assert_array_equal(npz["arr_0"], u.transpose(0, 2, 3, 1))
    out = load_npz_batch(path)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 7, channels)
    np.testing.assert_array_equal(out, u.transpose(0, 2, 3, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


@pytest.mark.parametrize(
    ("name", "write", "words"),
    [
        ("other_key.npz", lambda p: np.savez(p, images=np.zeros((1, 2, 2, 3), np.uint8)), ["no 'arr_0'", "['images']"]),
        ("float.npz", lambda p: np.savez(p, arr_0=np.zeros((1, 2, 2, 3), np.float32)), ["float32", "uint8 [N, H"]),
        ("three_dims.npz", lambda p: np.savez(p, arr_0=np.zeros((2, 2, 3), np.uint8)), ["3 dims", "uint8 [N, H"]),
        ("plain.npy", lambda p: np.save(p, np.zeros((1, 2, 2, 3), np.uint8)), ["not an npz archive"]),
        ("garbage.npz", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), ["not an npz archive"]),
    ],
)
def test_npz_bad_files(tmp_path, name, write, words):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as excinfo:
        load_npz_batch(path)
    assert_one_line(excinfo, str(path), *words)


def test_npz_batch_with_a_changed_pixel_is_refused(tmp_path):
    path = tmp_path / "samples.npz"
    save_npz_batch(float_images(random_pixels((3, 1, 4, 4), seed=5)), path)
    with np.load(path) as npz:
        stored = dict(npz)
    assert stored["arr_0_sha256"].shape == () and stored["arr_0_sha256"].dtype.kind == "U"
    stored["arr_0"][1, 2, 3, 0] ^= 1                                             # rewritten with the old sha256
    np.savez(path, **stored)
    with pytest.raises(ValueError) as excinfo:
        load_npz_batch(path)
    assert_one_line(excinfo, f"{path} is damaged", "'arr_0' does not match the sha256 written with it",
                    "re-create it")


def test_npz_batch_with_a_flipped_byte_is_refused(tmp_path):
    """A byte flipped in place: the zip's CRC-32 or the sha256 refuses it, in one line naming the file."""
    u = random_pixels((2, 3, 8, 8), seed=6)
    path = tmp_path / "samples.npz"
    save_npz_batch(float_images(u), path)
    data = bytearray(path.read_bytes())
    data[data.index(u.transpose(0, 2, 3, 1).tobytes()) + 100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as excinfo:
        load_npz_batch(path)
    assert_one_line(excinfo, str(path))


def test_npz_batch_without_sha256_still_loads(tmp_path):
    """ADM's batches, and ours written before the sha256, have arr_0 only: they load unverified."""
    u = random_pixels((2, 4, 4, 3), seed=7)
    path = tmp_path / "adm.npz"
    np.savez(path, arr_0=u)
    np.testing.assert_array_equal(load_npz_batch(path), u)


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_npz_batch(tmp_path / "absent.npz")


# ---------------------------------------------------------------- folders for evaluation


def test_load_image_folder_uint8(tmp_path):
    u = random_pixels((3, 6, 5, 3), seed=7)  # [N, H, W, C]
    for name, pixels in zip(["b.png", "a.png", "sub/c.png"], u):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / name)
    out = load_image_folder_uint8(tmp_path)
    assert out.dtype == np.uint8 and out.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(out, u[[1, 0, 2]])  # sorted: a, b, sub/c
    gray = load_image_folder_uint8(tmp_path, grayscale=True)
    assert gray.shape == (3, 6, 5, 1)


def test_load_image_folder_uint8_sizes_must_match(tmp_path):
    Image.fromarray(random_pixels((6, 5, 3))).save(tmp_path / "a.png")
    Image.fromarray(random_pixels((6, 6, 3))).save(tmp_path / "b.png")
    with pytest.raises(ValueError) as excinfo:
        load_image_folder_uint8(tmp_path)
    assert_one_line(excinfo, str(tmp_path / "b.png"), "6x6", "5x6", "equally sized")
