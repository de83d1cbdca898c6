"""The shipped golden files (golden/v1) against our implementation, the packed kernels, and `cli.py golden`.

Dimensions: as each case's (see golden/README.md). The files were made by the float64 NumPy path; here the same
ops run as the package runs them and must pass every dataset's compare mode; the packed Numba kernels and their NumPy twins must reproduce
the stored words and int32 accumulators EXACTLY. A failure prints the worst element of each failing dataset.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import cli
from bidm_ref.golden.catalog import all_cases
from bidm_ref.golden.compare import mismatch
from bidm_ref.golden.format import FIX, Expected, case_path, read_golden
from bidm_ref.golden.generate import arrays_of, compare_golden, file_list, read_manifest, run_op
from bidm_ref.golden.registry import KERNELS

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden" / "v1"
CASES = all_cases()
KERNEL_RUNS = [(key, name) for key, case in CASES.items() for name in KERNELS.get(case.op, {})]


@pytest.mark.parametrize("key", CASES)
def test_implementation_matches_golden_file(key: str) -> None:
    golden = read_golden(case_path(GOLDEN, key))
    assert golden.case == key and golden.seed == CASES[key].seed
    problems = compare_golden(golden, arrays_of(run_op(golden)))
    assert not problems, f"{case_path(GOLDEN, key)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("key, kernel", KERNEL_RUNS)
def test_packed_kernels_reproduce_golden_words_and_accumulators_exactly(key: str, kernel: str) -> None:
    golden = read_golden(case_path(GOLDEN, key))
    actual = KERNELS[CASES[key].op][kernel](golden)
    for path, array in actual.items():
        group, name = path.split("/")
        expected = golden.expected()[group][name]
        assert expected.compare == "exact", f"{path} of {key} is not an exact dataset"
        problem = mismatch(array, expected)
        assert problem is None, f"{kernel} on {key} {path}: {problem}"


def test_every_kernel_family_has_golden_files() -> None:
    kernels = {name for key, name in KERNEL_RUNS}
    assert {"numba_pack_activations", "numba_conv_acc", "numba_linear_acc", "numba_layer_acc",
            "numpy_twin_conv_acc", "numpy_twin_linear_acc", "numpy_twin_pack_activations"} <= kernels
    layer_cases = [key for key, name in KERNEL_RUNS if name == "numba_layer_acc"]
    assert any("acc" in read_golden(case_path(GOLDEN, key)).cache for key in layer_cases)


def test_shipped_files_are_the_registry_and_the_manifest() -> None:
    listed = read_manifest(GOLDEN)
    expected = sorted(f"v1/{key}.h5" for key in CASES)
    assert file_list(GOLDEN) == expected == sorted(listed)
    total = sum((GOLDEN.parent / name).stat().st_size for name in expected)
    assert total < 5 * 2**20, f"golden/ holds {total / 2**20:.1f} MB of files: keep the cases small"


def test_format_spec_lists_every_case() -> None:
    spec = (ROOT / "golden" / "README.md").read_text()
    assert [key for key in CASES if f"`{key}`" not in spec] == []


def test_mismatch_names_the_worst_element() -> None:
    expected = Expected(np.array([[1.0, 2.0], [3.0, 4.0]]), "allclose", 1e-9, 0.0)
    assert mismatch(np.array([[1.0, 2.0], [3.0, 4.0]]), expected) is None
    problem = mismatch(np.array([[1.0, 2.5], [3.0, 4.0 + 1e-6]]), expected)
    assert "2 of 4" in problem and "at [0, 1]: got 2.5" in problem
    assert "signs differ" in mismatch(np.array([1.0, -1.0]), Expected(np.array([1.0, 1.0]), "sign_agree"))
    assert "nmse" in mismatch(np.array([1.0, 2.0]), Expected(np.array([1.0, 2.1]), "nmse", 1e-6))
    assert "differ" in mismatch(np.array([3, 4], dtype=np.int32), Expected(np.array([3, 5], dtype=np.int32), "exact"))


def test_a_changed_output_fails_its_case(tmp_path: Path) -> None:
    golden = read_golden(case_path(GOLDEN, "nn/conv2d__k3_s2_p1"))
    actual = arrays_of(run_op(golden))
    actual["grads"]["weight"] = actual["grads"]["weight"] * (1 + 1e-6)
    (problem,) = compare_golden(golden, actual)
    assert problem.startswith("/grads/weight: allclose") and "worst at" in problem


def test_standalone_script_reads_the_files_without_bidm_ref() -> None:
    blocked = ("import runpy, sys; sys.modules['bidm_ref'] = None; sys.argv = ['check_standalone.py']; "
               f"runpy.run_path({str(ROOT / 'golden' / 'check_standalone.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "conv2d__k3_s2_p1" in done.stdout and "approx_sign__sign0" in done.stdout


def test_cli_golden_check_passes_on_the_shipped_files(capsys) -> None:
    assert cli.main(["golden", "--check", "--out", str(GOLDEN)]) == 0
    assert "golden check passed: " in capsys.readouterr().out


def test_cli_golden_writes_every_case_and_the_manifest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "v1"
    assert cli.main(["golden", "--out", str(out)]) == 0
    assert f"wrote {len(CASES)} golden files" in capsys.readouterr().out
    assert sorted(read_manifest(out)) == file_list(out) == sorted(read_manifest(GOLDEN))
    assert cli.main(["golden", "--out", str(tmp_path / "golden")]) == 2
    assert "must be named v1" in capsys.readouterr().err


@pytest.fixture()
def golden_copy(tmp_path: Path) -> Path:
    """A copy of golden/ (v1 and MANIFEST.json) to damage."""
    shutil.copytree(GOLDEN, tmp_path / "v1")
    shutil.copy(GOLDEN.parent / "MANIFEST.json", tmp_path / "MANIFEST.json")
    return tmp_path / "v1"


def one_line_error(capsys, out: Path) -> str:
    assert cli.main(["golden", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and FIX in err
    return err


def test_check_names_a_missing_file(golden_copy: Path, capsys) -> None:
    victim = case_path(golden_copy, "nn/linear__i20_o12")
    victim.unlink()
    err = one_line_error(capsys, golden_copy)
    assert str(victim) in err and "missing" in err


def test_check_names_a_corrupt_file(golden_copy: Path, capsys) -> None:
    victim = case_path(golden_copy, "binary/approx_sign__sign0")
    victim.write_bytes(victim.read_bytes()[:200])
    err = one_line_error(capsys, golden_copy)
    assert str(victim) in err and "not a readable HDF5 file" in err


def test_check_refuses_an_unknown_format_version(golden_copy: Path, capsys) -> None:
    victim = case_path(golden_copy, "popcount/linear_acc__i100_o6")
    with h5py.File(victim, "r+") as h5:
        h5.attrs["format_version"] = 2
    err = one_line_error(capsys, golden_copy)
    assert str(victim) in err and "format_version 2" in err


def test_check_refuses_a_file_changed_behind_the_manifest(golden_copy: Path, capsys) -> None:
    victim = case_path(golden_copy, "nn/silu__wide_range")
    with h5py.File(victim, "r+") as h5:
        h5["outputs/y"][0, 0, 0, 0] += 1.0
    err = one_line_error(capsys, golden_copy)
    assert str(victim) in err and "sha256" in err


def test_check_refuses_a_broken_manifest(golden_copy: Path, capsys) -> None:
    (golden_copy.parent / "MANIFEST.json").write_text("{not json")
    assert "MANIFEST.json is not valid JSON" in one_line_error(capsys, golden_copy)


def test_every_case_module_contributes_cases_that_are_checked_above() -> None:
    # cases_nn, cases_binary, cases_packed, cases_model, cases_bidm (through harness) are exercised by
    # test_implementation_matches_golden_file; this pins that none of them silently registers nothing
    from bidm_ref.golden.catalog import CASE_MODULES

    cases = all_cases()
    for module in CASE_MODULES:
        keys = [key for key, case in cases.items()
                if getattr(case.draw, "func", case.draw).__module__ == module.__name__]  # functools.partial or a function
        assert len(keys) >= 3, f"{module.__name__} registers {len(keys)} golden cases"


@pytest.mark.parametrize("key", [k for k in CASES if CASES[k].op == "autoencoder_step"])
def test_autoencoder_golden_files_are_consistent_with_their_formulas(key: str) -> None:
    """The stored loss parts follow from the stored x0, x_rec, mean and logvar by golden/README.md's formulas
    (independently of bidm_ref's objective), on the MICRO_AE shapes of cases_autoencoder."""
    from bidm_ref.golden.cases_autoencoder import MICRO_AE

    golden = read_golden(case_path(GOLDEN, key))
    x0, out = golden.inputs["x0"], {name: e.array for name, e in golden.outputs.items()}
    N = len(x0)
    assert out["mean"].shape == out["logvar"].shape == (N, *MICRO_AE.latent_shape)
    assert out["x_rec"].shape == x0.shape == (N, MICRO_AE.in_channels, MICRO_AE.resolution, MICRO_AE.resolution)
    diff = out["x_rec"] - x0
    rec = (np.abs(diff) if golden.hyper["reconstruction"] == "l1" else diff**2).sum() / N
    kl = 0.5 * (out["mean"] ** 2 + np.exp(out["logvar"]) - 1 - out["logvar"]).sum() / N
    assert out["rec"] == pytest.approx(rec, rel=1e-9) and out["kl"] == pytest.approx(kl, rel=1e-9)
    assert out["loss"] == pytest.approx(rec + golden.hyper["kl_weight"] * kl, rel=1e-9)
