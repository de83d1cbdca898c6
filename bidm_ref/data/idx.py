"""Reader for IDX files, the container of MNIST and Fashion-MNIST.

Dimensions: N images, H, W spatial (28 x 28 for both data sets).

Layout (all integers big-endian):

    bytes 0..1   0x00 0x00
    byte  2      element type; only 0x08 (unsigned byte) is accepted
    byte  3      number of dimensions D (>= 1)
    4*D bytes    the D sizes as uint32
    prod(sizes)  the elements, C order

An images file is `[N, H, W]` (D = 3), a labels file `[N]` (D = 1). The file may be
gzip-compressed (detected by the gzip magic bytes 1f 8b, not by the file name). The length
must match the header exactly: fewer bytes is a truncated file, more is a corrupt one.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

UBYTE_TYPE_CODE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
REDOWNLOAD_HINT = "re-download the file"


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a uint8 array of the header's shape.

    `ndim`, if given, is the required number of dimensions (3 for images, 1 for labels).
    Every malformed file raises a one-line ValueError that names the file.
    """
    path = Path(path)
    raw = decompress_if_gzip(path, path.read_bytes())
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header; {REDOWNLOAD_HINT}")
    zero0, zero1, type_code, dims = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{path}: not an IDX file (magic {raw[:4].hex()} does not start with 0000); {REDOWNLOAD_HINT}")
    if type_code != UBYTE_TYPE_CODE:
        raise ValueError(
            f"{path}: IDX element type 0x{type_code:02x} is not 0x08 (uint8); only uint8 IDX files are supported"
        )
    if dims == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions; {REDOWNLOAD_HINT}")
    if ndim is not None and dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}; check that this is the right file")
    header_len = 4 + 4 * dims
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header_len} bytes); {REDOWNLOAD_HINT}")
    shape = struct.unpack(f">{dims}I", raw[4:header_len])
    data_len = len(raw) - header_len
    expected_len = int(np.prod(shape, dtype=np.int64))
    if data_len < expected_len:
        raise ValueError(
            f"{path}: truncated IDX file: shape {shape} needs {expected_len} data bytes, found {data_len}; "
            f"{REDOWNLOAD_HINT}"
        )
    if data_len > expected_len:
        raise ValueError(
            f"{path}: corrupt IDX file: {data_len - expected_len} bytes after the {expected_len} data bytes "
            f"of shape {shape}; {REDOWNLOAD_HINT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape).copy()  # [*shape]


def decompress_if_gzip(path: Path, raw: bytes) -> bytes:
    """Return `raw` gunzipped if it starts with the gzip magic, else unchanged; `path` names errors."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({err}); {REDOWNLOAD_HINT}") from None
