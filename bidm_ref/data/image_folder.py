"""Reader for a folder of images (the user's own data set).

Dimensions: N images, C channels (3 for RGB, 1 for grayscale 'L'), H, W spatial,
R the square output resolution.

Files: every .png/.jpg/.jpeg/.bmp/.webp (suffix case-insensitive) below the folder,
recursively, ordered by their path relative to the folder (as a '/'-separated string), so
the order is the same on every machine. Images are decoded by Pillow and converted to 'RGB'
(or 'L'); Pillow's conversion drops an alpha channel without compositing. 8-bit images are
expected.

Square crop: resize with bicubic filtering so the short side is R (the long side becomes
round(long * R / short)), then cut the central R x R window; when the surplus is odd the
extra pixel is cut from the right / bottom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SUFFIX_LIST = "/".join(IMAGE_SUFFIXES)


def list_image_files(folder: str | Path) -> list[Path]:
    """All image files below `folder`, sorted by relative path; raises if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found; pass --data-dir DIR holding {SUFFIX_LIST} files")
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise FileNotFoundError(f"no {SUFFIX_LIST} files below {folder}; put images there or pass another --data-dir")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode `path` fully and convert it to `mode` ('RGB' or 'L'); one-line ValueError if unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path} ({err}); remove or replace the file") from None


def image_to_hwc(img: Image.Image) -> np.ndarray:
    """Pixels of an 'RGB' or 'L' image as uint8 [H, W, C]."""
    pixels = np.asarray(img, dtype=np.uint8)  # [H, W] or [H, W, 3]
    return pixels.reshape(img.height, img.width, -1)  # [H, W, C]


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Bicubic resize so the short side is `resolution`, then the central resolution x resolution crop."""
    width, height = img.size
    short = min(width, height)
    size = (round(width * resolution / short), round(height * resolution / short))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    left = (size[0] - resolution) // 2
    top = (size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def read_image_folder(
    folder: str | Path, resolution: int, grayscale: bool = False, limit: int | None = None
) -> np.ndarray:
    """The first `limit` (default all) images of `folder`, square-cropped: uint8 [N, C, R, R]."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    mode = "L" if grayscale else "RGB"
    files = list_image_files(folder)[:limit]
    crops = [image_to_hwc(resize_center_crop(open_image(f, mode), resolution)) for f in files]  # N x [R, R, C]
    return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))  # [N, C, R, R]
