"""Write files whole or not at all: a temp file in the same folder, flushed, fsynced, then renamed.

No arrays here (no dimension legend needed). Every writer in the project (checkpoints,
golden files, packed exports, PNGs, bench JSON) goes through these helpers:

    with atomic_h5("run/ckpt.h5") as f:       # f: h5py.File open for writing on the temp path
        f.create_dataset(...)
    with atomic_write("bench.json", "w") as fh:  # fh: ordinary file object on the temp path
        fh.write(...)

Convention: the temp file is `<folder>/.<name>.tmp-<pid>` (same folder, so `os.replace` is an
atomic rename on POSIX and Windows). On success the temp file is flushed, fsynced, closed and
renamed over `path`; on any exception (including one raised by the caller's block) the temp file
is removed and `path` keeps its previous content. Missing parent folders are created.
The folder itself is not fsynced: after a power cut the rename may be lost, never half-done.
A writer killed with SIGKILL cannot remove its temp file; `remove_stale_temps` deletes those of
dead processes (the run folder's owner calls it when it starts: runfolder.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import h5py


TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")  # `.<name>.tmp-<pid>`, group 1 the writer's pid


def temp_path_for(path: Path) -> Path:
    """The temp file used while writing `path`: `.<name>.tmp-<pid>` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists on this host (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files in `folder` whose writer pid is no live process on this host; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.glob(".*.tmp-*")):
        match = TEMP_NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def fsync_file(path: Path) -> None:
    """Force the bytes of a closed file to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temp path to write; on success fsync it and rename it onto `path`, else delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(target)
    try:
        yield temp
        fsync_file(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open the temp file with `open(temp, mode)` ("wb" or "w"); it replaces `path` on success."""
    with atomic_path(path) as temp, open(temp, mode) as handle:
        yield handle


@contextmanager
def atomic_h5(path: str | os.PathLike, track_order: bool = True) -> Iterator[h5py.File]:
    """Open an HDF5 file for writing on the temp path; it replaces `path` on success.

    track_order=True makes the root group and its attributes iterate in insertion order
    (h5py applies it per object: pass `track_order=True` to `create_group` for subgroups).
    The same content written twice gives the same bytes (h5py stores no timestamps).
    """
    with atomic_path(path) as temp, h5py.File(temp, "w", track_order=track_order) as h5:
        yield h5
        h5.flush()
