"""Pixel conventions and image output: float in [-1, 1] inside, uint8 outside.

Dimensions: N images, C channels (1 grayscale or 3 RGB), H, W spatial.

    to float:  x = u / 127.5 - 1                      (u uint8 -> x float32 in [-1, 1])
    to uint8:  u = clip(rint((x + 1) * 127.5), 0, 255)

`rint` rounds half to even and the product is formed in float64, so to_uint8(from_uint8(u)) == u
for every u. (ADM's sampler truncates instead, up to one level darker; torchvision's save_image,
used by ddim, rounds half up, which differs from rint only on exact halves.)
Non-finite input (NaN, +-inf) is an error, not a clipped pixel: it means a diverged model.

Files are written through storage.atomic.atomic_write (temp file in the destination folder,
fsync, os.replace), so a crash never leaves a half-written PNG or npz.

An npz sample batch holds 'arr_0' uint8 [N, H, W, C] (ADM's layout; its evaluator reads arr_0 only)
and 'arr_0_sha256', a 0-d unicode array: hashing.arrays_sha256({"arr_0": pixels}). The reader checks
it when present and refuses a mismatch; batches without it (ADM's own, or written before it) load
unverified. (A flipped byte is usually caught by the zip's CRC-32 already; the sha256 also catches
an archive rewritten with other pixels.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..storage.atomic import atomic_write
from ..storage.hashing import arrays_mismatch, arrays_sha256
from .image_folder import image_to_hwc, list_image_files, open_image

GRID_PADDING = 2
NPZ_KEY = "arr_0"
NPZ_DIGEST_KEY = "arr_0_sha256"
GRID_CHANNELS = (1, 3)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (any layout) -> float32 in [-1, 1], same shape: u / 127.5 - 1."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float images [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]; rounding and clipping as in the module docstring."""
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be float [N, C, H, W] in [-1, 1], got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"images contain {np.count_nonzero(~np.isfinite(x))} NaN/inf values; the model has diverged")
    scaled = np.rint((x.astype(np.float64) + 1.0) * 127.5)  # [N, C, H, W]
    return np.clip(scaled, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()  # [N, H, W, C]


def grid_layout(n: int, nrow: int | None) -> tuple[int, int]:
    """(rows, columns) of a grid of n tiles with `nrow` tiles per row (default ceil(sqrt(n)))."""
    columns = min(n, nrow if nrow is not None else math.ceil(math.sqrt(n)))
    if columns < 1:
        raise ValueError(f"a grid needs at least one image and nrow >= 1, got {n} images and nrow={nrow}")
    return math.ceil(n / columns), columns


def make_grid(pixels: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """Tile uint8 [N, H, W, C] into one uint8 image [rows*(H+2)+2, columns*(W+2)+2, C].

    As torchvision's make_grid: `nrow` images per row, row-major; image k has its top-left pixel
    at (2 + (k // nrow) * (H + 2), 2 + (k % nrow) * (W + 2)); the 2-pixel gaps and border are 0.
    """
    n, height, width, channels = pixels.shape
    rows, columns = grid_layout(n, nrow)
    step_y, step_x = height + GRID_PADDING, width + GRID_PADDING
    grid = np.zeros((rows * step_y + GRID_PADDING, columns * step_x + GRID_PADDING, channels), np.uint8)  # [Hg, Wg, C]
    for k in range(n):
        top = GRID_PADDING + (k // columns) * step_y
        left = GRID_PADDING + (k % columns) * step_x
        grid[top : top + height, left : left + width] = pixels[k]  # [H, W, C]
    return grid


def save_grid(x: np.ndarray, path: str | Path, nrow: int | None = None) -> None:
    """Write float images [N, C, H, W] in [-1, 1] as one PNG grid ('L' for C = 1, 'RGB' for C = 3)."""
    pixels = to_uint8(x)  # [N, H, W, C]
    channels = pixels.shape[3]
    if channels not in GRID_CHANNELS:
        raise ValueError(f"a PNG grid needs 1 or 3 channels, got {channels}")
    grid = make_grid(pixels, nrow)  # [Hg, Wg, C]
    image = Image.fromarray(grid[:, :, 0] if channels == 1 else grid)  # 2-D uint8 -> 'L', [.., 3] uint8 -> 'RGB'
    with atomic_write(path) as fh:
        image.save(fh, format="PNG")


def save_npz_batch(x: np.ndarray, path: str | Path) -> None:
    """Write float images [N, C, H, W] in [-1, 1] as an ADM-style sample batch: npz with 'arr_0' uint8 [N, H, W, C]
    and its sha256 'arr_0_sha256' (module docstring)."""
    pixels = to_uint8(x)  # [N, H, W, C]
    with atomic_write(path) as fh:
        np.savez(fh, **{NPZ_KEY: pixels, NPZ_DIGEST_KEY: np.array(arrays_sha256({NPZ_KEY: pixels}))})


def load_npz_batch(path: str | Path) -> np.ndarray:
    """Read an ADM-style sample batch -> uint8 [N, H, W, C]; one-line ValueError when it is not one or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample batch {path} not found; write one with `cli.py sample` or save_npz_batch")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = npz.files
            pixels = npz[NPZ_KEY] if NPZ_KEY in keys else None  # [N, H, W, C]
            written = str(npz[NPZ_DIGEST_KEY]) if NPZ_DIGEST_KEY in keys else None
    except Exception as err:  # any failure to parse the file means it is not an npz archive
        raise ValueError(
            f"{path}: not an npz archive ({type(err).__name__}: {err}); expected an ADM-style sample batch"
        ) from None
    if pixels is None:
        raise ValueError(f"{path}: no '{NPZ_KEY}' array (has {keys}); expected an ADM-style sample batch")
    mismatch = None if written is None else arrays_mismatch({NPZ_KEY: pixels}, written)
    if mismatch is not None:
        raise ValueError(
            f"{path} is damaged: its '{NPZ_KEY}' does not match the sha256 written with it ({mismatch}): "
            "restore it or re-create it with `cli.py sample --npz`"
        )
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"{path}: '{NPZ_KEY}' is {pixels.dtype} with {pixels.ndim} dims, expected uint8 [N, H, W, C]")
    return pixels


def load_image_folder_uint8(folder: str | Path, grayscale: bool = False) -> np.ndarray:
    """All images below `folder` (order of list_image_files), unresized: uint8 [N, H, W, C].

    Every image must have the size of the first; otherwise a one-line ValueError names the file.
    """
    files = list_image_files(folder)
    mode = "L" if grayscale else "RGB"
    first = image_to_hwc(open_image(files[0], mode))  # [H, W, C]
    pixels = np.empty((len(files), *first.shape), np.uint8)  # [N, H, W, C]
    pixels[0] = first
    for k, file in enumerate(files[1:], start=1):
        image = image_to_hwc(open_image(file, mode))  # [h, w, C]
        if image.shape != first.shape:
            raise ValueError(
                f"{file} is {image.shape[1]}x{image.shape[0]}, {files[0]} is {first.shape[1]}x{first.shape[0]}; "
                "evaluation needs equally sized images (resize them first)"
            )
        pixels[k] = image
    return pixels
