"""Content hashes: of a file's bytes (shipped-weights and golden manifests, reference-statistics cache keys)
and of a set of named arrays (the sha256 every checkpoint and npz file of the project carries with its arrays).

Dimensions: none fixed; an array has any shape (0-d and empty included) and any fixed-size dtype.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_entries(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """{name: {"sha256", "bytes"}} for the files `names` (paths relative to `folder`), sorted by name."""
    folder = Path(folder)
    return {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in sorted(names)}


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 of named arrays, independent of how a file lays them out (order, chunks, compression, offsets).

    Byte recipe (another port reproduces it byte for byte): for each name in sorted order (by Unicode code
    point, i.e. by UTF-8 bytes), four fields, each written as its length in bytes (8-byte little-endian
    unsigned) followed by its bytes:

        name    the name, UTF-8 (e.g. "params/conv_in.weight")
        dtype   numpy's dtype.str of the little-endian dtype, ASCII: "<f4", "<u8", "|u1", "|b1", "<U64" ...
        shape   the sizes in decimal joined by ",", ASCII: "64,16"; "" for a 0-d array
        data    the elements in C order, each little-endian (bool: one byte 0 or 1)

    and the digest is the sha256 of the concatenation of all fields. An empty mapping hashes the empty input.
    Object arrays are refused (their bytes are pointers, not content).
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        if array.dtype.hasobject:
            raise ValueError(f"arrays_sha256: {name} is an object array ({array.dtype}); only fixed-size dtypes hash")
        canonical = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        shape = ",".join(str(size) for size in canonical.shape)
        fields = [name.encode("utf-8"), canonical.dtype.str.encode("ascii"), shape.encode("ascii"),
                  canonical.reshape(-1).view(np.uint8)]
        for field in map(memoryview, fields):
            digest.update(field.nbytes.to_bytes(8, "little"))
            digest.update(field)
    return digest.hexdigest()


def arrays_mismatch(arrays: Mapping[str, np.ndarray], written: object) -> str | None:
    """None when `arrays` hash to the digest `written` with them, else "sha256 <12 hex>, written <12 hex>"."""
    actual = arrays_sha256(arrays)
    if actual == written:
        return None
    return f"sha256 {actual[:12]}, written {str(written)[:12]}"
