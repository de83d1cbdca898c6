"""Who may write a run folder: one live writer (a lock file), new runs never over old ones, stale temp files.

No arrays here (no dimension legend needed). `train`, `train-ae` and the ablation rows claim their
run folder before any work starts (`claim_run_folder`, a context manager):

    folder holds a run (ckpt.h5, loss.tsv or snapshots/)   new run: refused, unless force (then those are
                                                           removed first); resume: continues it
    folder holds no checkpoint                             resume: refused
    OUT/.lock names a live process on this host             refused (a second writer would interleave files)
    OUT/.lock names a dead process on this host             taken over
    OUT/.lock names another host                            refused (its liveness is unknown: the message
                                                           says to delete the lock if that run is dead)
    OUT not creatable or not writable                       refused before any compute

The lock file holds JSON {"pid", "host"}; it is created with O_EXCL, so two starters cannot both
win, and removed when the claim ends (normal end, error, or interruption). A kill -9 leaves it
behind; the next start finds its pid dead and takes it over. Taking over a dead writer's folder
also deletes the temp files it left (`atomic.remove_stale_temps`). Caveat: a pid reused by an
unrelated process after a crash looks alive; the message names the lock file to delete then.

A resumed run takes every setting from its checkpoint (`saved_run_config`); flags given
explicitly must agree with it (`refuse_changed_settings`), except those that may change.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..bidm.config import current_run_config
from ..data.datasets import DataConfig
from ..storage.atomic import pid_alive, remove_stale_temps
from ..storage.checkpoint import first_difference, load_config
from .adam import AdamConfig
from .trainer import TrainConfig

LOCK_NAME = ".lock"
RUN_FILES = ("ckpt.h5", "loss.tsv", "curve.tsv")  # what a run leaves in its folder, besides snapshots/
SNAPSHOTS = "snapshots"


class RunFolderError(ValueError):
    """A run folder that this run may not write; the message is one line naming the folder and the fix."""


def holds_run(folder: Path) -> list[str]:
    """The run files present in `folder` (empty: no run there)."""
    return [name for name in (*RUN_FILES, SNAPSHOTS) if (folder / name).exists()]


def read_lock(lock: Path) -> dict:
    """The lock's {"pid", "host"}; an empty or unreadable lock (its writer died while writing it) gives {}."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def create_lock(lock: Path, owner: dict) -> bool:
    """Create `lock` holding `owner`; False when it exists already."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(owner, handle)
    return True


def acquire_lock(folder: Path) -> Path:
    """Take folder/.lock for this process (see the module docstring); returns its path."""
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        if create_lock(lock, me):
            return lock
        owner = read_lock(lock)
        if owner.get("host", me["host"]) != me["host"]:
            raise RunFolderError(f"{folder} is locked by process {owner.get('pid')} on host {owner['host']} "
                                 f"({lock}): wait for that run, or delete the lock file if it is dead")
        pid = owner.get("pid")
        if isinstance(pid, int) and pid != me["pid"] and pid_alive(pid):
            raise RunFolderError(f"{folder} is being written by process {pid} on this host ({lock}): wait for it "
                                 "or stop it, or write this run to another --out")
        lock.unlink(missing_ok=True)                                          # a dead writer's lock: take it over
        if not create_lock(lock, me):
            raise RunFolderError(f"{folder}: another process took {lock} at the same moment: retry")
    except OSError as err:
        raise RunFolderError(f"cannot write to {folder} ({err.strerror}): choose another --out") from None
    return lock


def release_lock(lock: Path) -> None:
    """Remove the lock if it is still this process's."""
    if read_lock(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def clear_run(folder: Path) -> None:
    """Remove what a run left in `folder` (RUN_FILES and snapshots/); other files stay."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / SNAPSHOTS, ignore_errors=True)


@contextmanager
def claim_run_folder(out_dir: str | os.PathLike, *, resume: bool, force: bool = False) -> Iterator[Path]:
    """Own `out_dir` for one run (module docstring): yields the folder; the lock goes when the block ends."""
    folder = Path(out_dir)
    if resume and force:
        raise RunFolderError("--resume continues a run and --force starts one over: pass one of them")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"the run folder {folder} is a file: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {folder} ({err.strerror}): choose another --out") from None
    lock = acquire_lock(folder)
    try:
        remove_stale_temps(folder)
        remove_stale_temps(folder / SNAPSHOTS)
        if resume:
            resume_checkpoint(folder)
        elif present := holds_run(folder):
            if not force:
                raise RunFolderError(f"{folder} already holds a run ({', '.join(present)}): pass --resume to "
                                     "continue it, or --force to delete it and start over")
            clear_run(folder)
        yield folder
    finally:
        release_lock(lock)


def resume_checkpoint(out_dir: str | os.PathLike) -> Path:
    """out_dir/ckpt.h5, the checkpoint a resumed run continues; refused when there is none."""
    path = Path(out_dir) / "ckpt.h5"
    if not path.exists():
        raise RunFolderError(f"nothing to resume in {out_dir}: it has no ckpt.h5; drop --resume to start a new run")
    return path


def saved_run_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The run config of out_dir/ckpt.h5, the settings a resumed run continues with (its arrays are read once,
    later, by Trainer.resume)."""
    return current_run_config(load_config(resume_checkpoint(out_dir)))


def resumed_common(out_dir: str, data_dir: str | None, changes: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(the run config of out_dir/ckpt.h5, the keyword arguments every trainer takes from it on resume: data_cfg,
    read from `data_dir` when given (the dataset may move, the data may not); adam_cfg; train_cfg with `changes`,
    the fields Trainer.resumable_config lets change; resume=True)."""
    saved = saved_run_config(out_dir)
    data = DataConfig(**saved["data"])
    return saved, dict(data_cfg=data if data_dir is None else replace(data, data_dir=data_dir),
                       adam_cfg=AdamConfig(**saved["adam"]),
                       train_cfg=TrainConfig(**{**saved["train"], **changes, "out_dir": out_dir}), resume=True)


def saved_setting(run_config: dict[str, Any], path: str) -> Any:
    """The value at a dotted key path of a run config ("adam.lr"); None where it is absent."""
    value: Any = run_config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def refuse_changed_settings(out_dir: str | os.PathLike, given: dict[str, tuple[str, Any]]) -> None:
    """Refuse a resume whose explicitly given flags differ from the run's settings, naming the first such flag.

    given: {flag: (run-config key path, the value the flag sets there)}, e.g. {"--lr": ("adam.lr", 2e-4)}; a dict
    value is compared on its own keys only (checkpoint.first_difference).
    """
    saved = saved_run_config(out_dir)
    for flag, (path, value) in given.items():
        old = saved_setting(saved, path)
        if first_difference(old, json.loads(json.dumps(value))) is not None:  # tuples as lists, as saved
            shown = "absent" if old is None else json.dumps(old)
            raise RunFolderError(f"{flag} {json.dumps(value)} differs from the run's {path} = {shown} in "
                                 f"{out_dir}/ckpt.h5: a resumed run keeps its checkpoint's settings; drop {flag}, "
                                 "or start over with --force")
