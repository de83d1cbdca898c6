"""Reader for CIFAR-10 "python version" batches, with an unpickler that cannot run code.

Dimensions: N images (10000 per official batch), C = 3 channels (R, G, B), H = W = 32.

A batch file (data_batch_1 .. data_batch_5, test_batch from cifar-10-python.tar.gz at
https://www.cs.toronto.edu/~kriz/cifar.html) is a pickled dict written by Python 2:

    b'data'    uint8 ndarray [N, 3072]; row = 1024 R values, then 1024 G, then 1024 B,
               each plane row-major, so pixel (c, y, x) sits at column c*1024 + y*32 + x
               and `reshape(N, 3, 32, 32)` is the NCHW image
    b'labels'  list of N ints in 0..9

Python 2 `str` values are read with encoding='bytes' (hence the bytes keys).

Safety: pickle can call any importable function. `BatchUnpickler.find_class` admits only the
three globals a numpy array needs (`_reconstruct` under its numpy 1 and numpy 2 module
names, `numpy.ndarray`, `numpy.dtype`); everything else, builtins included, raises
`ForbiddenGlobalError` before it is resolved. No builtin global is needed: dicts, lists,
ints and strings are pickle opcodes, and admitting builtins would admit `eval`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32
NUM_CLASSES = 10
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
NOT_A_BATCH_HINT = (
    "expected a CIFAR-10 python batch (cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)"
)

_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]  # numpy's array rebuild function, any numpy version
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside `ALLOWED_GLOBALS`."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS`; `source` names the file in errors."""

    def __init__(self, file: BinaryIO, source: Path):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise ForbiddenGlobalError(
                f"refusing to load {module}.{name} from {self.source}: not a CIFAR-10 batch; {NOT_A_BATCH_HINT}"
            )
        return allowed


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file -> (images uint8 [N, 3, 32, 32], labels int64 [N]).

    A forbidden global raises `ForbiddenGlobalError` (a pickle.UnpicklingError) before anything
    runs; any other malformed file raises a one-line ValueError naming the file.
    """
    path = Path(path)
    with path.open("rb") as fh:
        try:
            batch = BatchUnpickler(fh, path).load()
        except ForbiddenGlobalError:
            raise
        except Exception as err:  # any parse failure of an untrusted file means a corrupt file
            raise ValueError(f"{path}: unreadable pickle ({type(err).__name__}: {err}); {NOT_A_BATCH_HINT}") from None
    return validate_batch(batch, path)


def validate_batch(batch: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check the unpickled dict and return (images uint8 [N, 3, 32, 32], labels int64 [N])."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: no dict with b'data' and b'labels'; {NOT_A_BATCH_HINT}")
    data = batch[b"data"]  # [N, 3072]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' is {described}, expected uint8 [N, {ROW_LENGTH}]; {NOT_A_BATCH_HINT}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)  # [N]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{path}: b'labels' is not a list of ints; {NOT_A_BATCH_HINT}") from None
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape} labels for {data.shape[0]} images; {NOT_A_BATCH_HINT}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{path}: labels outside 0..{NUM_CLASSES - 1}; {NOT_A_BATCH_HINT}")
    return data.reshape(-1, *IMAGE_SHAPE), labels  # [N, 3, 32, 32], [N]


def read_split(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read all batches of `split` ("train": data_batch_1..5, "test": test_batch), concatenated in file order.

    Returns (images uint8 [N, 3, 32, 32], labels int64 [N]). The caller checks that the files exist.
    """
    parts = [read_batch(Path(directory) / name) for name in SPLIT_FILES[split]]
    images = np.concatenate([p[0] for p in parts])  # [N, 3, 32, 32]
    labels = np.concatenate([p[1] for p in parts])  # [N]
    return images, labels
