"""Data sets by name: where they live, how they are read, and their float form.

Dimensions: N images, C channels, H, W spatial, R the output resolution (32 except "folder").

    name            files                                            C   native   default dir
    fashion-mnist   {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]  1   28x28    /usr/share/datasets/fashion-mnist
    mnist           same four IDX names                              1   28x28    none: --data-dir
    cifar10         data_batch_1..5 / test_batch (python version)    3   32x32    none: --data-dir
    folder          *.png/.jpg/.jpeg/.bmp/.webp below the folder     3   any      none: --data-dir

Split "train" reads train-* / data_batch_1..5, split "test" reads t10k-* / test_batch; a
folder has no splits and is read whole. An IDX file is taken plain if present, else .gz.
A cifar10 --data-dir may be the folder holding the batches or its parent holding
cifar-10-batches-py/ (the tarball as extracted).

Float form: x = u / 127.5 - 1 (images.from_uint8), float32 [N, C, R, R] in [-1, 1].
28 x 28 images are padded to 32 x 32 with 2 pixels of value 0 on each side *before* scaling,
so the border is the background value -1 (both MNIST sets are light strokes on a 0 background).
`limit` keeps the first N images in file order. `hflip` is not applied here: it configures
the random flips of batches.BatchSampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cifar10
from .idx import read_idx
from .image_folder import SUFFIX_LIST, read_image_folder
from .images import from_uint8

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "folder")
SPLITS = ("train", "test")
CHANNELS = {"fashion-mnist": 1, "mnist": 1, "cifar10": 3, "folder": 3}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FIXED_RESOLUTION = 32  # of every named set except "folder"
BACKGROUND = 0  # uint8 padding value of the 28 x 28 sets (-1 after scaling)
IDX_PREFIX = {"train": "train", "test": "t10k"}
IDX_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or .gz"
)
CIFAR10_SUBDIR = "cifar-10-batches-py"
HOW_TO_GET = {
    "fashion-mnist": (
        f"install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding the four IDX files "
        f"({IDX_FILES})"
    ),
    "mnist": f"pass --data-dir DIR holding the four MNIST IDX files ({IDX_FILES})",
    "cifar10": (
        "download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and extract data_batch_1..5 and test_batch into --data-dir DIR"
    ),
    "folder": f"pass --data-dir DIR, a folder of {SUFFIX_LIST} images",
}


def check_name(name: str) -> None:
    """Raise a one-line ValueError unless `name` is a known data set."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset '{name}'; valid names: {', '.join(DATASET_NAMES)}")


def channels_of(name: str) -> int:
    """Image channels C of data set `name` (1 for the MNIST sets, 3 otherwise)."""
    check_name(name)
    return CHANNELS[name]


@dataclass(frozen=True)
class DataConfig:
    """Which images to read; validated on construction (see the module docstring)."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    split: str = "train"
    resolution: int = 32
    hflip: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.split not in SPLITS:
            raise ValueError(f"unknown split '{self.split}'; valid splits: {', '.join(SPLITS)}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.name != "folder" and self.resolution != FIXED_RESOLUTION:
            raise ValueError(
                f"{self.name} is read at {FIXED_RESOLUTION}x{FIXED_RESOLUTION}, got resolution {self.resolution}; "
                f"use --resolution {FIXED_RESOLUTION} or the 'folder' dataset"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


def load_images(cfg: DataConfig) -> np.ndarray:
    """Images of `cfg` as float32 [N, C, R, R] in [-1, 1] (labels are not read)."""
    return from_uint8(read_uint8(cfg, with_labels=False)[0])  # [N, C, R, R]


def load_labeled(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(images float32 [N, C, R, R] in [-1, 1], labels int64 [N]); labels are None for "folder"."""
    pixels, labels = read_uint8(cfg, with_labels=True)  # [N, C, R, R], [N] | None
    return from_uint8(pixels), labels


def read_uint8(cfg: DataConfig, with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 [N, C, R, R], int64 labels [N] or None), the first `cfg.limit` of them, padded to R."""
    directory = dataset_dir(cfg)
    if cfg.name == "folder":
        images, labels = read_image_folder(directory, cfg.resolution, limit=cfg.limit), None  # [N, 3, R, R]
    elif cfg.name == "cifar10":
        images, labels = cifar10.read_split(cifar10_dir(directory, cfg.split), cfg.split)  # [N, 3, 32, 32], [N]
    else:
        images, labels = read_idx_split(cfg.name, directory, cfg.split, with_labels)  # [N, H, W], [N] | None
        images = pad_centered(images, FIXED_RESOLUTION)[:, None]  # [N, 1, 32, 32]
    if images.shape[0] == 0:
        raise ValueError(f"{cfg.name} in {directory} holds no {cfg.split} images; {HOW_TO_GET[cfg.name]}")
    return images[: cfg.limit], None if labels is None else labels[: cfg.limit]


def dataset_dir(cfg: DataConfig) -> Path:
    """--data-dir if given, else the data set's default location (only fashion-mnist has one)."""
    if cfg.data_dir is not None:
        return Path(cfg.data_dir)
    if cfg.name == "fashion-mnist":
        return FASHION_MNIST_DIR
    raise ValueError(f"{cfg.name} has no default location: {HOW_TO_GET[cfg.name]}")


def read_idx_split(
    name: str, directory: Path, split: str, with_labels: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 [N, H, W], labels int64 [N] or None) of an MNIST-format split."""
    prefix = IDX_PREFIX[split]
    images = read_idx(find_idx(name, directory, f"{prefix}-images-idx3-ubyte"), ndim=3)  # [N, H, W]
    if not with_labels:
        return images, None
    labels_path = find_idx(name, directory, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path, ndim=1).astype(np.int64)  # [N]
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images; {HOW_TO_GET[name]}")
    return images, labels


def find_idx(name: str, directory: Path, stem: str) -> Path:
    """directory/stem if it exists, else directory/stem.gz; FileNotFoundError saying how to get it."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} not found: no {directory / stem}[.gz]; {HOW_TO_GET[name]}")


def cifar10_dir(directory: Path, split: str) -> Path:
    """The folder holding the batches of `split`: `directory` itself or its cifar-10-batches-py/."""
    needed = cifar10.SPLIT_FILES[split]
    for candidate in (directory, directory / CIFAR10_SUBDIR):
        if all((candidate / file).is_file() for file in needed):
            return candidate
    missing = next(file for file in needed if not (directory / file).is_file())
    raise FileNotFoundError(f"cifar10 not found: no {directory / missing}; {HOW_TO_GET['cifar10']}")


def pad_centered(images: np.ndarray, size: int) -> np.ndarray:
    """Pad uint8 [N, H, W] with BACKGROUND to [N, size, size], centred (odd surplus: extra row/column at the end)."""
    n, height, width = images.shape
    if height > size or width > size:
        raise ValueError(f"images are {height}x{width}, larger than {size}x{size}; the MNIST-format sets are 28x28")
    top, left = (size - height) // 2, (size - width) // 2
    pad = ((0, 0), (top, size - height - top), (left, size - width - left))
    return np.pad(images, pad, constant_values=BACKGROUND)  # [N, size, size]
