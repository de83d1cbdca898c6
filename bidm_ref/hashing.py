"""File content hashes: shipped-weights and golden manifests and reference-statistics cache keys use them."""

from __future__ import annotations

import hashlib
from pathlib import Path


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
