"""Checkpoints: parameters, EMA shadows, Adam state, config and RNG state in one HDF5 file.

Dimensions: P, the shape of one parameter (any); every dataset keeps its array's shape and
dtype (float32 stays float32, uint64 packed words stay uint64).

Layout (format "bidm-ckpt", format_version 1):

    /params/<dotted name>     the parameters, e.g. /params/down.0.block.0.conv1.weight
    /ema/<dotted name>        EMA shadows (optional; same names, shapes, dtypes as /params)
    /optim/m/<dotted name>    Adam first moments  (optional, with /optim/v and attr optim_t;
    /optim/v/<dotted name>    Adam second moments  same names, shapes, dtypes as /params)
    /<group>/<name>           extra groups the caller passes (e.g. packed weights), flat
    root attrs: format="bidm-ckpt", format_version=1, config (JSON string), step (int),
                rng_state (JSON string, "null" if none), optim_t (int, with /optim),
                arrays_sha256 (hex string: hashing.arrays_sha256 of every dataset of the file, named by
                its path without the leading '/', e.g. "params/conv_in.weight", "optim/m/conv_in.weight"),
                plus extra attrs the caller passes (str, int, float, bool or arrays)

Dotted names are dataset names as they are ('.' means nothing to HDF5; '/' is refused).
Datasets and attrs are written in the caller's insertion order and read back in that order;
`config` and `rng_state` are JSON with sorted keys, so the same content gives the same bytes.
Files are written through `atomic_h5` (temp file in the same folder, then renamed), so a crash
never leaves a half checkpoint.

arrays_sha256 came after format_version 1 and is additive, so the version stays 1: the reader checks
it when present, and files written before it (the shipped weights/ among them, which MANIFEST.json
pins by file bytes instead) still load, they are simply not verifiable. It covers the arrays only, not
the attrs (config, step): damage there is caught only when it breaks the JSON or a later check.

The reader refuses, with one line naming the file: a missing file (FileNotFoundError); a file
that is not HDF5, is truncated or has damaged HDF5 metadata (any error h5py raises while opening or
reading it), whose format is not "bidm-ckpt", whose format_version is not supported, that lacks a
required part, whose arrays do not hash to its arrays_sha256 (checked first: damage, not a diverged
run, explains a NaN there), whose /ema or /optim do not match /params, or that holds NaN/Inf in a
float array (CheckpointError, a ValueError). The writer refuses the same inconsistencies and NaN/Inf
before creating any file, and also names containing '/' and extra attrs or groups that reuse a
reserved name. `check_config` refuses a config that differs from the expected one and names the
first differing key path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .atomic import atomic_h5
from .hashing import arrays_mismatch, arrays_sha256

FORMAT = "bidm-ckpt"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
DIGEST_ATTR = "arrays_sha256"
RESERVED_ATTRS = ("format", "format_version", "config", "step", "rng_state", "optim_t", DIGEST_ATTR)
RESERVED_GROUPS = ("params", "ema", "optim")
CONFIG_FIX = "pass the matching --preset or another checkpoint"
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises on damaged files

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class AdamState:
    """What a checkpoint stores of an Adam: step count t and the moments m, v by dotted name."""

    t: int
    m: dict[str, np.ndarray]
    v: dict[str, np.ndarray]


def check_same_arrays(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    what: str,
    against: str = "the parameters",
) -> None:
    """Raise ValueError (one line) unless `other` has exactly the names, shapes and dtypes of `reference`.

    Shared by Adam, EMA and the checkpoint reader; `what` names `other` and `against` names
    `reference` in the message.
    """
    missing = [name for name in reference if name not in other]
    extra = [name for name in other if name not in reference]
    if missing or extra:
        raise ValueError(f"{what} do not match {against}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, ref in reference.items():
        arr = other[name]
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise ValueError(
                f"{what}: {name} is {arr.dtype}{list(arr.shape)} but {against} have {ref.dtype}{list(ref.shape)}"
            )


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Checkpoint:
    """The content of one checkpoint file (see the module docstring for the layout)."""

    params: Arrays
    config: dict[str, Any]
    step: int = 0
    ema: Arrays | None = None
    optim: AdamState | None = None
    rng_state: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Arrays] = field(default_factory=dict)

    def weights(self, use_ema: bool = True) -> tuple[str, Arrays]:
        """("ema", the EMA shadows) when asked for and present, else ("params", the raw parameters)."""
        if use_ema and self.ema is not None:
            return "ema", self.ema
        return "params", self.params

    def named_groups(self) -> Iterator[tuple[str, Arrays]]:
        """Yield (HDF5 group path, arrays) for every group present, in file order."""
        yield "params", self.params
        if self.ema is not None:
            yield "ema", self.ema
        if self.optim is not None:
            yield "optim/m", self.optim.m
            yield "optim/v", self.optim.v
        yield from self.groups.items()

    def dataset_arrays(self) -> Arrays:
        """Every array by its dataset path without the leading '/' ("params/<name>", "optim/m/<name>" ...)."""
        return {f"{group_path}/{name}": array
                for group_path, arrays in self.named_groups() for name, array in arrays.items()}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    params: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    step: int = 0,
    ema: Mapping[str, np.ndarray] | None = None,
    optim: AdamState | None = None,
    rng_state: Any = None,
    extra_attrs: Mapping[str, Any] | None = None,
    extra_groups: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> None:
    """Write a checkpoint atomically (the old file at `path`, if any, stays intact until the rename).

    config: JSON-able dict, normally {name: dataclasses.asdict(cfg)} of all configs;
    rng_state: JSON-able, e.g. `rng.bit_generator.state`; optim: `Adam.state_dict()`;
    ema: `EMA.state_dict()`; extra_attrs / extra_groups: more root attrs / flat groups of arrays.
    """
    ckpt = Checkpoint(
        params=dict(params),
        config=dict(config),
        step=int(step),
        ema=None if ema is None else dict(ema),
        optim=optim,
        rng_state=rng_state,
        attrs=dict(extra_attrs or {}),
        groups={name: dict(arrays) for name, arrays in (extra_groups or {}).items()},
    )
    where = str(path)
    check_writable(ckpt, where)
    check_consistent(ckpt, where)
    config_json = json.dumps(ckpt.config, sort_keys=True, allow_nan=False)
    rng_state_json = json.dumps(ckpt.rng_state, sort_keys=True)
    with atomic_h5(path) as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["config"] = config_json
        h5.attrs["step"] = ckpt.step
        h5.attrs["rng_state"] = rng_state_json
        if ckpt.optim is not None:
            h5.attrs["optim_t"] = int(ckpt.optim.t)
        h5.attrs[DIGEST_ATTR] = arrays_sha256(ckpt.dataset_arrays())
        for key, value in ckpt.attrs.items():
            h5.attrs[key] = value
        for group_path, arrays in ckpt.named_groups():
            group = h5.create_group(group_path, track_order=True)
            for name, array in arrays.items():
                group.create_dataset(name, data=array)


def load_checkpoint(path: str | os.PathLike, expected_config: Mapping[str, Any] | None = None) -> Checkpoint:
    """Read and check a checkpoint; with `expected_config`, also `check_config` against it."""
    where = str(path)
    ckpt = read_h5(path, read_checkpoint)
    check_consistent(ckpt, where)
    if expected_config is not None:
        check_config(ckpt.config, expected_config, what=where)
    return ckpt


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The run config of a checkpoint alone: its format is checked, its arrays are neither read nor verified."""
    return read_h5(path, read_config)


def load_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was saved at, alone (format checked, arrays not read)."""
    return read_h5(path, read_step)


def read_h5(path: str | os.PathLike, reader: Callable[[h5py.File, str], Any]) -> Any:
    """reader(open file, path) of an existing checkpoint; any h5py error becomes a one-line CheckpointError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: check the path or train one first")
    return read_hdf5_file(path, reader, CheckpointError, "restore it, re-create it or use another checkpoint")


def read_hdf5_file(path: str | os.PathLike, reader: Callable[[h5py.File, str], Any], error: type[Exception],
                   fix: str) -> Any:
    """reader(open file, path) of an HDF5 file: `error` raised by the reader passes, any h5py error becomes one
    line `error("PATH is not a readable HDF5 file (...): fix")`."""
    where = str(path)
    try:
        with h5py.File(path, "r") as h5:
            return reader(h5, where)
    except error:
        raise
    except H5_ERRORS as err:
        raise error(f"{where} is not a readable HDF5 file (corrupt or truncated: {error_reason(err)}): {fix}") from err


def error_reason(err: Exception) -> str:
    """The first line of an h5py error, with its type ("KeyError: Unable to open object (...)")."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_checkpoint(h5: h5py.File, where: str) -> Checkpoint:
    """Parse an open HDF5 file into a Checkpoint, refusing other formats and versions and damaged arrays."""
    check_format(h5, where)
    optim = None
    if "optim" in h5:
        optim = AdamState(
            t=int(read_attr(h5, "optim_t", where)),
            m=read_arrays(h5, "optim/m", where),
            v=read_arrays(h5, "optim/v", where),
        )
    ckpt = Checkpoint(
        params=read_arrays(h5, "params", where),
        config=read_json_attr(h5, "config", where),
        step=int(read_attr(h5, "step", where)),
        ema=read_arrays(h5, "ema", where) if "ema" in h5 else None,
        optim=optim,
        rng_state=read_json_attr(h5, "rng_state", where),
        attrs={key: python_value(value) for key, value in h5.attrs.items() if key not in RESERVED_ATTRS},
        groups={name: read_arrays(h5, name, where) for name in h5 if name not in RESERVED_GROUPS},
    )
    if DIGEST_ATTR in h5.attrs:
        mismatch = arrays_mismatch(ckpt.dataset_arrays(), python_value(h5.attrs[DIGEST_ATTR]))
        if mismatch is not None:
            raise CheckpointError(
                f"{where} is damaged: its arrays do not match the sha256 written with them ({mismatch}): "
                "restore it or re-create it"
            )
    return ckpt


def read_config(h5: h5py.File, where: str) -> dict[str, Any]:
    """The config attr of an open checkpoint file, after its format check."""
    check_format(h5, where)
    return read_json_attr(h5, "config", where)


def read_step(h5: h5py.File, where: str) -> int:
    """The step attr of an open checkpoint file, after its format check."""
    check_format(h5, where)
    return int(read_attr(h5, "step", where))


def check_format(h5: h5py.File, where: str) -> None:
    """Refuse a file whose format is not bidm-ckpt or whose format_version this reader does not support."""
    fmt = read_attr(h5, "format", where)
    if fmt != FORMAT:
        raise CheckpointError(f"{where} is not a bidm checkpoint: its format is {fmt!r}, expected {FORMAT!r}")
    version = read_attr(h5, "format_version", where)
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{where} has format_version {version}, but this bidm-ref reads format_version "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} only: use the bidm-ref version that wrote it"
        )


def read_attr(h5: h5py.File, key: str, where: str) -> Any:
    """A root attribute as a Python value; a missing one is an incomplete file."""
    if key not in h5.attrs:
        raise CheckpointError(f"{where} lacks the root attribute {key!r}: it is not a complete bidm checkpoint")
    return python_value(h5.attrs[key])


def read_json_attr(h5: h5py.File, key: str, where: str) -> Any:
    """A root attribute holding a JSON string, decoded."""
    text = read_attr(h5, key, where)
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: root attribute {key!r} is not valid JSON ({err})") from err


def read_child(parent: h5py.Group, name: str, where: str, kind: type) -> Any:
    """The item `name` under `parent`, which must exist and be of `kind` (h5py.Group or h5py.Dataset)."""
    item = parent.get(name)
    if not isinstance(item, kind):
        found = "nothing" if item is None else type(item).__name__
        raise CheckpointError(
            f"{where}: expected an HDF5 {kind.__name__} at {parent.name.rstrip('/')}/{name}, found {found}"
        )
    return item


def read_arrays(h5: h5py.File, group_path: str, where: str) -> Arrays:
    """All datasets of the flat group `group_path` as arrays, in file order (0-d datasets stay 0-d arrays)."""
    group = read_child(h5, group_path, where, h5py.Group)
    return {name: read_child(group, name, where, h5py.Dataset)[...] for name in group}


def python_value(value: Any) -> Any:
    """An HDF5 attribute as plain Python: numpy scalars -> int/float/bool, bytes -> str; arrays stay."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_writable(ckpt: Checkpoint, where: str) -> None:
    """Refuse names HDF5 would misread and extra attrs/groups that shadow the reserved ones."""
    clash_attrs = [key for key in ckpt.attrs if key in RESERVED_ATTRS]
    clash_groups = [name for name in ckpt.groups if name in RESERVED_GROUPS]
    if clash_attrs or clash_groups:
        raise CheckpointError(f"{where}: extra attrs {clash_attrs} / groups {clash_groups} use reserved names")
    names = [*ckpt.groups, *(name for _, arrays in ckpt.named_groups() for name in arrays)]
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            raise CheckpointError(f"{where}: name {name!r} cannot be an HDF5 name (no '/', not empty, '.' or '..')")
    if ckpt.step < 0:
        raise CheckpointError(f"{where}: step must be >= 0, got {ckpt.step}")


def check_consistent(ckpt: Checkpoint, where: str) -> None:
    """Float arrays must be finite; /ema and /optim must have the names, shapes, dtypes of /params."""
    for group_path, arrays in ckpt.named_groups():
        for name, array in arrays.items():
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise CheckpointError(
                    f"{where}: /{group_path}/{name} contains NaN or Inf: the run diverged; "
                    "resume from an earlier checkpoint with a lower learning rate"
                )
    try:
        if ckpt.ema is not None:
            check_same_arrays(ckpt.params, ckpt.ema, "/ema", against="/params")
        if ckpt.optim is not None:
            check_same_arrays(ckpt.params, ckpt.optim.m, "/optim/m", against="/params")
            check_same_arrays(ckpt.params, ckpt.optim.v, "/optim/v", against="/params")
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None


_ABSENT = object()


def first_difference(saved: Any, expected: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first key path (in `expected`'s order) where `saved` differs, with both values (_ABSENT: key missing).

    Only key paths present in `expected` are compared; keys found only in `saved` are ignored.
    Lists of equal length are compared element by element (path `a.b[2]`).
    """
    if isinstance(saved, dict) and isinstance(expected, dict):
        for key, value in expected.items():
            sub = f"{path}.{key}" if path else str(key)
            diff = first_difference(saved.get(key, _ABSENT), value, sub)
            if diff is not None:
                return diff
        return None
    if isinstance(saved, list) and isinstance(expected, list) and len(saved) == len(expected):
        for index, (a, b) in enumerate(zip(saved, expected)):
            diff = first_difference(a, b, f"{path}[{index}]")
            if diff is not None:
                return diff
        return None
    return None if saved == expected else (path, saved, expected)


def check_config(
    saved: Mapping[str, Any], expected: Mapping[str, Any], what: str = "checkpoint", fix: str = CONFIG_FIX
) -> None:
    """Raise ValueError (one line) naming the first key path of `expected` whose value `saved` does not share.

    `expected` goes through a JSON round trip first (tuples -> lists), as the saved config did.
    Example message: "run/ckpt.h5 was written for model.ch=64 but this model has model.ch=32:
    pass the matching --preset or another checkpoint".
    """
    diff = first_difference(dict(saved), json.loads(json.dumps(dict(expected))))
    if diff is None:
        return
    path, old, new = diff
    written = f"has no {path}" if old is _ABSENT else f"was written for {path}={json.dumps(old)}"
    raise ValueError(f"{what} {written} but this model has {path}={json.dumps(new)}: {fix}")
