"""Write the golden files and MANIFEST.json, compare a file with our implementation, and `--check` a folder.

No arrays of its own (it moves the cases' arrays between the registry, files and comparisons).

    generate(out)        every case -> out/<group>/<op>__<variant>.h5, then out/../MANIFEST.json
    compare_golden(g, r) the failures of a Result (or a regenerated file) against a golden file, by compare mode
    check(out)           the manifest, file set and sha256 of `out`, then a fresh generation into a temp dir
                         compared value by value (not byte by byte) with every shipped file
`out` is the version folder (golden/v1): its name must be v<format_version>, and MANIFEST.json lists
paths relative to its parent ("v1/nn/conv2d__k1_s1_p0.h5"). Values come from the float64 NumPy path
(the float convs are plain NumPy, nn/im2col.py), so no Numba code makes a golden value. The sha256 in the manifest guard the shipped files (same machine, same bytes: h5py stores no
timestamps); another zlib or HDF5 may write other bytes for the same values, hence `--check` compares values.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..storage.atomic import atomic_write
from ..storage.hashing import file_sha256, manifest_entries
from .catalog import all_cases
from .compare import mismatch
from .format import FIX, FORMAT_VERSION, VERSION_DIR, Expected, Golden, GoldenError, case_path, read_golden, write_golden
from .registry import OPS, Case, Result

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "bidm-golden-manifest"


def run_op(golden: Golden) -> Result:
    """Our implementation (the case's op) on a golden file's params, inputs and hyperparameters."""
    return OPS[golden.op](golden.params, golden.inputs, golden.hyper)


def build_golden(case: Case) -> Golden:
    """Draw a case from its seed and compute it on the float64 NumPy path."""
    draw = case.draw(np.random.default_rng(case.seed))
    result = OPS[case.op](draw.params, draw.inputs, draw.hyper)
    golden = Golden(case.key, case.seed, draw.description, draw.hyper, draw.params, draw.inputs, draw.args(),
                    result.outputs, result.grads, result.cache)
    clash = set(draw.params) & set(draw.inputs)
    if clash:
        raise ValueError(f"golden case {case.key}: the names {sorted(clash)} are both an input and a parameter")
    for group, expected in golden.expected().items():
        for name, e in expected.items():
            if e.array.dtype.kind == "f" and not np.all(np.isfinite(e.array)):
                raise ValueError(f"golden case {case.key}: /{group}/{name} holds NaN or inf")
    return golden


def version_folder(out: str | Path) -> Path:
    """`out` as a Path, refusing a folder not named v<format_version> (the manifest goes next to it)."""
    out = Path(out)
    if out.name != VERSION_DIR:
        raise GoldenError(f"golden folder {out} must be named {VERSION_DIR} (the format version; MANIFEST.json goes "
                          f"next to it), e.g. --out golden/{VERSION_DIR}")
    return out


def manifest_path(out: Path) -> Path:
    return out.parent / MANIFEST


def file_list(out: Path) -> list[str]:
    """The .h5 files under `out`, as manifest paths "v1/<group>/<file>.h5", sorted."""
    return sorted(f"{VERSION_DIR}/{p.relative_to(out).as_posix()}" for p in out.rglob("*.h5"))


def write_manifest(out: Path) -> Path:
    """(Re)write MANIFEST.json next to `out` for every .h5 file under it."""
    files = manifest_entries(out.parent, file_list(out))
    path = manifest_path(out)
    with atomic_write(path, "w") as handle:
        json.dump({"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "files": files}, handle, indent=1)
        handle.write("\n")
    return path


def read_manifest(out: Path) -> dict[str, dict]:
    """{path: {"sha256", "bytes"}} of the manifest next to `out`; one-line errors naming the file and the fix."""
    path = manifest_path(out)
    if not path.is_file():
        raise GoldenError(f"{path} is missing: {FIX}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GoldenError(f"{path} is not valid JSON ({err}): {FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise GoldenError(f"{path} is not a {MANIFEST_FORMAT} file: {FIX}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GoldenError(f"{path} has format_version {manifest.get('format_version')}, this bidm-ref writes "
                          f"{FORMAT_VERSION}: {FIX}")
    return manifest["files"]


def generate(out: str | Path) -> list[Path]:
    """Build every case, then write them into `out` (the v1 folder), remove stale .h5 files and rewrite the
    manifest; returns the files. A case that fails to build leaves `out` untouched."""
    out = version_folder(out)
    goldens = {case_path(out, key): build_golden(case) for key, case in all_cases().items()}
    for stale in set(out.rglob("*.h5")) - set(goldens):
        stale.unlink()
    for path, golden in goldens.items():
        write_golden(path, golden)
    write_manifest(out)
    return sorted(goldens)


def compare_golden(golden: Golden, actual: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """One line per failing dataset of `golden` (and per missing / unexpected one) given actual[group][name]."""
    problems = []
    for group, expected in golden.expected().items():
        got = actual.get(group, {})
        for name in sorted(set(got) - set(expected)):
            problems.append(f"/{group}/{name}: not in the golden file")
        for name, e in expected.items():
            if name not in got:
                problems.append(f"/{group}/{name}: not produced")
                continue
            problem = mismatch(got[name], e)
            if problem:
                problems.append(f"/{group}/{name}: {problem}")
    return problems


def arrays_of(result: Result | Golden) -> dict[str, dict[str, np.ndarray]]:
    """{"outputs": {name: array}, "grads": ..., "cache": ...} of a Result or of a (regenerated) Golden."""
    groups = {"outputs": result.outputs, "grads": result.grads, "cache": result.cache}
    return {group: {name: e.array for name, e in expected.items()} for group, expected in groups.items()}


def compare_regenerated(shipped: Golden, fresh: Golden) -> list[str]:
    """A fresh generation against a shipped file: same metadata, identical inputs/params, values by compare mode."""
    problems = [f"root attribute {key} differs" for key in ("seed", "description", "arg_order", "hyper")
                if getattr(shipped, key) != getattr(fresh, key)]
    for group in ("params", "inputs"):
        mine, theirs = getattr(shipped, group), getattr(fresh, group)
        if set(mine) != set(theirs):
            problems.append(f"/{group} datasets differ: {sorted(set(mine) ^ set(theirs))[:3]}")
        problems += [f"/{group}/{name} differs (inputs and params are drawn from the seed: must be identical)"
                     for name in sorted(set(mine) & set(theirs)) if mismatch(theirs[name], Expected(mine[name], "exact"))]
    for group, expected in shipped.expected().items():
        modes = {name: e.compare for name, e in fresh.expected()[group].items()}
        problems += [f"/{group}/{name}: compare mode {e.compare} became {modes[name]}"
                     for name, e in expected.items() if modes.get(name, e.compare) != e.compare]
    return problems + compare_golden(shipped, arrays_of(fresh))


def check(out: str | Path) -> str:
    """Verify the golden folder `out`; GoldenError (one line) on the first kind of problem found, else a summary."""
    out = version_folder(out)
    listed = read_manifest(out)
    cases = all_cases()
    expected = {f"{VERSION_DIR}/{key}.h5" for key in cases}
    on_disk = set(file_list(out)) if out.is_dir() else set()
    for names, problem in [(expected - on_disk, "is missing"),
                           ((on_disk | set(listed)) - expected, "is not a case of this bidm-ref (stale or unknown)"),
                           (expected - set(listed), f"is not listed in {manifest_path(out)}")]:
        if names:
            raise GoldenError(f"golden file {out.parent / min(names)} {problem}: {FIX}")
    shipped = {key: read_golden(case_path(out, key)) for key in cases}
    for name in sorted(expected):
        if file_sha256(out.parent / name) != listed[name]["sha256"]:
            raise GoldenError(f"{out.parent / name}: sha256 differs from {manifest_path(out)} "
                              f"(damaged or replaced): {FIX}")
    failures = []
    with tempfile.TemporaryDirectory() as temp:
        for key, case in cases.items():
            path = case_path(Path(temp) / VERSION_DIR, key)
            write_golden(path, build_golden(case))
            problems = compare_regenerated(shipped[key], read_golden(path))
            failures += [f"{case_path(out, key)} {problem}" for problem in problems]
    if failures:
        raise GoldenError(f"{len(failures)} golden datasets differ from a fresh generation; first: {failures[0]}: "
                          f"if the change is intended, {FIX}")
    return (f"golden check passed: {len(cases)} files in {out} match {manifest_path(out)} and a fresh generation "
            "(values by each dataset's compare mode)")


def golden_command(out: str | Path, check_only: bool = False) -> str:
    """`cli.py golden`: generate into `out` (or --check it); returns the line to print."""
    if check_only:
        return check(out)
    files = generate(out)
    size = sum(p.stat().st_size for p in files)
    return f"wrote {len(files)} golden files ({size / 2**20:.2f} MB) to {out} and {manifest_path(Path(out))}"
