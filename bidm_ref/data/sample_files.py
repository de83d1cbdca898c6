"""What `cli.py sample` writes besides the grid: one PNG per image; and the output checks made before the compute.

Dimensions: N images, C channels (1 grayscale or 3 RGB), H, W spatial.

`save_png_files` writes image k of [N, C, H, W] to `<folder>/<k:06d>.png` (000000.png, 000001.png,
...; the order of the batch), each through storage.atomic.atomic_write, pixels as images.to_uint8.
The folder must be new or empty (`check_new_folder`), so a folder never mixes two runs' images.

The checks (`cli.py sample` for --out, --npz, --out-dir; `cli.py eval` for --json) refuse, with a
one-line OSError naming the flag and the fix, an output that would only fail after the compute: a
path that is a folder, a parent that is a file, a folder that is not writable (os.access:
permissions and read-only file systems). Missing folders are fine: the atomic writers create them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..storage.atomic import atomic_write
from .images import GRID_CHANNELS, to_uint8

PNG_NAME = "{:06d}.png"


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (the folder a writer would create in)."""
    return next(p for p in (path, *path.parents) if p.exists())


def check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    """Refuse when `folder` (or, if missing, the ancestor it would be created in) cannot hold new files."""
    existing = nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {target}: {existing} is a file, not a folder: pass a path in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {target}: folder {existing} is not writable: pass a path in a writable folder")


def check_writable_file(path: str | Path, flag: str) -> None:
    """Refuse an output file path that cannot be written (atomically, so its folder must be writable)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder: pass a file name")
    check_writable_folder(path.parent, flag, path)


def check_new_folder(folder: str | Path, flag: str) -> None:
    """Refuse an output folder that is a file, holds files already, or cannot be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} {folder} is a file: pass a new or empty folder")
    held = sorted(folder.iterdir()) if folder.is_dir() else []
    if held:
        raise FileExistsError(f"{flag} {folder} already holds {len(held)} entries (e.g. {held[0].name}): pass a new "
                              "or empty folder, or empty this one")
    check_writable_folder(folder, flag, folder)


def save_png_files(x: np.ndarray, folder: str | Path) -> list[Path]:
    """Write float images [N, C, H, W] in [-1, 1] as `folder/000000.png`, ... ('L' for C = 1, 'RGB' for C = 3)."""
    pixels = to_uint8(x)  # [N, H, W, C]
    if pixels.shape[3] not in GRID_CHANNELS:
        raise ValueError(f"a PNG needs 1 or 3 channels, got {pixels.shape[3]}")
    paths = []
    for k, image in enumerate(pixels):  # image [H, W, C]
        path = Path(folder) / PNG_NAME.format(k)
        with atomic_write(path) as fh:
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(fh, format="PNG")
        paths.append(path)
    return paths
