"""The checkpoints shipped in `weights/` and the sha256 manifest that guards them.

No arrays here. `weights/MANIFEST.json` maps each shipped file name to its sha256 and size:

    {"format": "bidm-weights-manifest", "files": {"bidm_tiny_packed.h5": {"sha256": "...", "bytes": 123}, ...}}

`verify_listed(path)` is called by every checkpoint load (loading/load.py `load_model`): a file that a
MANIFEST.json in its own folder lists must have the listed hash, so a truncated download, a Git LFS
pointer or a locally retrained file under a shipped name is refused with one line instead of
sampling garbage. Files in folders without a manifest (your own runs) are not checked.
`shipped_weights(method)` is what `cli.py sample` loads when no --weights is given: the latent flagship (since
2026-12-07; its autoencoder `ae_f4.h5` sits beside it); the pixel-space models of the pixel table stay shipped
for `--weights`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..storage.atomic import atomic_write
from ..storage.hashing import file_sha256, manifest_entries

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "bidm-weights-manifest"
SHIPPED = {"bidm": "bidm_latent_packed.h5", "xnor": "xnor_latent_packed.h5", "fp": "teacher_latent.h5"}  # --method
AUTOENCODER = "ae_f4.h5"  # the latent models' autoencoder (slim export), named by them relative to weights/
PIXEL = ("teacher_tiny.h5", "bidm_tiny_packed.h5", "xnor_tiny_packed.h5")  # the pixel-space table's models
SHIPPED_FILES = (*SHIPPED.values(), AUTOENCODER, *PIXEL)  # every file MANIFEST.json lists


def read_manifest(folder: str | Path) -> dict[str, dict]:
    """{file name: {"sha256", "bytes"}} of folder/MANIFEST.json ({} when the folder has none)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): restore it with `git checkout -- {path}`") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} file: restore it with `git checkout -- {path}`")
    return manifest["files"]


def verify_listed(path: str | Path) -> None:
    """Raise a one-line ValueError if the manifest next to `path` lists it with another sha256."""
    path = Path(path)
    entry = read_manifest(path.parent).get(path.name)
    if entry is None:
        return
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest[:16]}... does not match {path.parent / MANIFEST} ({entry['sha256'][:16]}...); "
            f"the file is damaged or was replaced: restore it with `git checkout -- {path}`"
        )


def write_manifest(folder: str | Path, names: list[str]) -> Path:
    """(Re)write folder/MANIFEST.json for the files `names` in it; returns its path."""
    files = manifest_entries(folder, names)
    path = Path(folder) / MANIFEST
    with atomic_write(path, "w") as handle:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, handle, indent=2)
        handle.write("\n")
    return path


def shipped_weights(method: str) -> Path:
    """The shipped checkpoint of `method` (bidm, xnor or fp), verified against weights/MANIFEST.json."""
    if method not in SHIPPED:
        raise ValueError(f"no shipped weights for method {method!r}: choose one of {', '.join(SHIPPED)} or pass --weights")
    path = WEIGHTS_DIR / SHIPPED[method]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: restore the shipped weights with `git checkout -- weights/`")
    verify_listed(path)
    return path
