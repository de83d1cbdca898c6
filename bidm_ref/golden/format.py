"""Golden reference files: the HDF5 layout, its writer and its reader (format "bidm-golden", format_version 1).

Dimensions: none fixed; every dataset keeps its array's shape and dtype (float64 for real values,
int64 timesteps, int32 accumulators, uint64 packed words). golden/README.md is the full spec.

One case per file, `<root>/v1/<group>/<op>__<variant>.h5`:

    root attrs  format="bidm-golden", format_version=1, case="<group>/<op>__<variant>", group, op,
                seed (of np.random.default_rng that drew the case), conventions (JSON), description
    /params     the op's parameters by dotted name; attrs: the op's hyperparameters
    /inputs     the forward arguments, attr arg_order (their order); `dout` is the upstream gradient
    /cache      intermediate values (optional)               every /cache, /outputs and /grads dataset has
    /outputs    forward results                                attrs compare (exact | allclose | nmse |
    /grads      gradients of inputs (by input name) and        sign_agree), rtol, atol (compare.py)
                params (by dotted name)

Datasets are contiguous and uncompressed (no HDF5 filter needed to read them). Groups keep insertion
order (track_order) and h5py stores no timestamps, so the same content gives the same bytes with the
same h5py/HDF5. Files are written through `atomic_h5`. The reader refuses, with one line naming the
file and the fix, a missing or unreadable file, another format, an unknown format_version and a file
lacking a required part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..storage.atomic import atomic_h5
from ..storage.checkpoint import read_hdf5_file

FORMAT = "bidm-golden"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
VERSION_DIR = f"v{FORMAT_VERSION}"
FIX = f"regenerate with python cli.py golden --out golden/{VERSION_DIR}"
MODES = ("exact", "allclose", "nmse", "sign_agree")
EXPECTED_GROUPS = ("cache", "outputs", "grads")

CONVENTIONS = {
    "dtype": "float64 for real values (params and inputs hold float32-representable numbers), int64 timesteps, "
             "int32 accumulators, uint64 packed words",
    "layouts": "activations NCHW, conv weights OIHW, linear weights (out, in) - PyTorch's",
    "names": "parameters by ermongroup/ddim state_dict keys; binary layers add tau, k_weight, k_bias, "
             "shortcut_scale, shortcut.* under the same prefix",
    "conv": "cross-correlation, zero padding (top, bottom, left, right)",
    "sign0": "sign(0) = +1, also for -0.0",
    "bit_packing": "along channels, uint64 words, LSB-first: channel c -> word c // 64, bit c % 64; "
                   "bit 1 means -1 (not (u >= 0)); pad bits 0",
    "packed_layout": "activations [N, H, W, Wd], conv weights [O, kh, kw, Wd], linear [N or O, Wd]; Wd = ceil(C / 64)",
    "binary_accumulator": "int32 sum over valid taps of C - 2 popcount(x xor w) = the float64 +-1 conv with zero padding",
    "groupnorm": "biased variance, eps 1e-6",
    "timestep_embedding": "[sin, cos], freq_i = exp(-log(10000) i / (half - 1)), float64; odd dim: one zero column",
    "beta_schedule": "linear beta_start .. beta_end over T steps, float64",
    "ddim": "timesteps range(0, T, T // S) walked in reverse, t_next = -1 after 0 with alpha_bar(-1) = 1",
    "gradients": "upstream gradient /inputs/dout; loss cases have none (their /grads are of the loss)",
}

Arrays = dict[str, np.ndarray]


class GoldenError(ValueError):
    """A golden file or manifest that cannot be used; one line naming the file and the fix."""


@dataclass(frozen=True)
class Expected:
    """A reference array and how a port's array is compared with it (compare.py)."""

    array: np.ndarray
    compare: str
    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self) -> None:
        if self.compare not in MODES:
            raise ValueError(f"compare mode {self.compare!r} is not one of {', '.join(MODES)}")


@dataclass(frozen=True)
class Golden:
    """The content of one golden file (module docstring)."""

    case: str
    seed: int
    description: str
    hyper: dict[str, Any]
    params: Arrays
    inputs: Arrays
    arg_order: tuple[str, ...]
    outputs: dict[str, Expected]
    grads: dict[str, Expected]
    cache: dict[str, Expected] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return self.case.split("/")[0]

    @property
    def op(self) -> str:
        return op_of(self.case)

    def expected(self) -> dict[str, dict[str, Expected]]:
        """{"cache": ..., "outputs": ..., "grads": ...}: every compared dataset by group."""
        return {"cache": self.cache, "outputs": self.outputs, "grads": self.grads}


def op_of(case: str) -> str:
    """The op of a case id "<group>/<op>__<variant>"."""
    return case.split("/")[1].split("__")[0]


def case_path(root: str | os.PathLike, case: str) -> Path:
    """<root>/<group>/<op>__<variant>.h5 of a case id "<group>/<op>__<variant>"."""
    return Path(root) / f"{case}.h5"


def attr_value(value: Any) -> Any:
    """A hyperparameter as an HDF5 attribute: tuples and lists become int64 / float64 arrays."""
    if isinstance(value, (tuple, list)):
        return np.asarray(value)
    return value


def python_value(value: Any) -> Any:
    """An HDF5 attribute back as a Python value: arrays become tuples, NumPy scalars Python scalars."""
    if isinstance(value, np.ndarray):
        return tuple(v.item() if isinstance(v, np.generic) else v for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_arrays(group: h5py.Group, arrays: Arrays) -> None:
    for name, array in arrays.items():
        group.create_dataset(name, data=array)


def write_expected(group: h5py.Group, expected: dict[str, Expected]) -> None:
    for name, e in expected.items():
        dataset = group.create_dataset(name, data=e.array)
        dataset.attrs["compare"] = e.compare
        dataset.attrs["rtol"] = float(e.rtol)
        dataset.attrs["atol"] = float(e.atol)


def write_golden(path: str | os.PathLike, golden: Golden) -> None:
    """Write one golden file atomically (the layout of the module docstring)."""
    with atomic_h5(path) as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["case"] = golden.case
        h5.attrs["group"] = golden.group
        h5.attrs["op"] = golden.op
        h5.attrs["seed"] = golden.seed
        h5.attrs["conventions"] = json.dumps(CONVENTIONS, sort_keys=True)
        h5.attrs["description"] = golden.description
        params = h5.create_group("params", track_order=True)
        for key, value in golden.hyper.items():
            params.attrs[key] = attr_value(value)
        write_arrays(params, golden.params)
        inputs = h5.create_group("inputs", track_order=True)
        inputs.attrs["arg_order"] = list(golden.arg_order)
        write_arrays(inputs, golden.inputs)
        for name, expected in golden.expected().items():
            if expected or name != "cache":
                write_expected(h5.create_group(name, track_order=True), expected)


def read_golden(path: str | os.PathLike) -> Golden:
    """Read and check one golden file; GoldenError (one line, naming the file and the fix) if unusable."""
    if not Path(path).is_file():
        raise GoldenError(f"golden file {path} is missing: {FIX}")
    return read_hdf5_file(path, parse_golden, GoldenError, FIX)


def parse_golden(h5: h5py.File, where: str) -> Golden:
    """Golden of an open file, refusing other formats, unknown versions and missing parts."""
    fmt = h5.attrs.get("format")
    if fmt != FORMAT:
        raise GoldenError(f"{where} is not a golden file: its format is {fmt!r}, expected {FORMAT!r}: {FIX}")
    version = python_value(h5.attrs.get("format_version"))
    if version not in SUPPORTED_VERSIONS:
        raise GoldenError(f"{where} has format_version {version}, this bidm-ref reads "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}: {FIX}")
    for key in ("case", "seed", "description"):
        if key not in h5.attrs:
            raise GoldenError(f"{where} lacks the root attribute {key!r}: {FIX}")
    for name in ("params", "inputs", "outputs", "grads"):
        if not isinstance(h5.get(name), h5py.Group):
            raise GoldenError(f"{where} lacks the group /{name}: {FIX}")
    expected = {name: read_expected(h5[name], where) if name in h5 else {} for name in EXPECTED_GROUPS}
    return Golden(
        case=str(h5.attrs["case"]),
        seed=int(h5.attrs["seed"]),
        description=str(h5.attrs["description"]),
        hyper={key: python_value(value) for key, value in h5["params"].attrs.items()},
        params={name: ds[()] for name, ds in h5["params"].items()},
        inputs={name: ds[()] for name, ds in h5["inputs"].items()},
        arg_order=tuple(str(a) for a in h5["inputs"].attrs.get("arg_order", ())),
        **expected,
    )


def read_expected(group: h5py.Group, where: str) -> dict[str, Expected]:
    """The datasets of /cache, /outputs or /grads with their compare attributes."""
    out = {}
    for name, ds in group.items():
        mode = ds.attrs.get("compare")
        if mode not in MODES:
            raise GoldenError(f"{where}: {ds.name} has compare mode {mode!r}, not one of {', '.join(MODES)}: {FIX}")
        out[name] = Expected(ds[()], str(mode), float(ds.attrs.get("rtol", 0.0)), float(ds.attrs.get("atol", 0.0)))
    return out
