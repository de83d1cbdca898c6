"""The thread policy (bidm_ref/runtime.py): what configure applies, what it refuses, the environment default."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numba
import pytest
from threadpoolctl import threadpool_info

from bidm_ref import runtime
from bidm_ref.runtime import (ThreadPolicy, busy_cores, configure, cpu_ticks, current_policy, default_policy, free_cores,
                              prepare_environment)


ROOT = Path(__file__).resolve().parents[1]


def blas_thread_counts() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_configure_sets_blas_and_numba_threads_and_the_default_uses_every_free_core():
    try:
        assert configure(ThreadPolicy(blas_threads=1, numba_threads=1)) == current_policy()
        assert blas_thread_counts() == {1} and numba.get_num_threads() == 1
        cores = os.cpu_count() or 1
        with mock.patch("bidm_ref.runtime.busy_cores", return_value=0.2):             # an idle machine
            policy = configure()
        assert policy == ThreadPolicy(cores, min(cores, numba.config.NUMBA_NUM_THREADS))
        assert blas_thread_counts() == {cores} and numba.get_num_threads() == policy.numba_threads
        with mock.patch("bidm_ref.runtime.busy_cores", return_value=cores + 0.7):     # every core held elsewhere
            assert default_policy() == ThreadPolicy(1, 1)
    finally:
        configure()


def test_busy_cores_reads_the_share_of_busy_ticks_over_the_interval(tmp_path):
    """Two /proc/stat snapshots 50 busy and 50 idle ticks apart: half the cores busy; lines of other CPUs ignored."""
    snapshots = iter(["cpu  100 5 20 1000 10 1 2 77 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n",
                      "cpu  130 5 40 1040 20 1 2 99 0 0\ncpu0 9 9 9 9 9 9 9 9 0 0\n"])

    def ticks():
        stat = tmp_path / "stat"
        stat.write_text(next(snapshots))
        return cpu_ticks(stat)

    with mock.patch("bidm_ref.runtime.cpu_ticks", ticks):
        assert busy_cores(8, interval=0.0) == 4.0                                 # 50 of 100 ticks, steal left out


def test_busy_cores_sees_a_process_that_holds_a_core():
    """A spinning child holds one core: busy_cores counts it at once (the 1-minute load average would lag)."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(os.cpu_count() or 1, interval=0.2) >= 0.6
    finally:
        child.kill()
        child.wait()


def test_free_cores_subtracts_the_rounded_load_and_keeps_one():
    assert [free_cores(2, load) for load in (0.0, 0.49, 0.5, 1.2, 1.6, 7.0)] == [2, 2, 1, 1, 1, 1]
    assert [free_cores(8, load) for load in (0.3, 2.6, 8.0)] == [8, 5, 1]


def test_bad_thread_counts_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="--threads 1 or more"):
        ThreadPolicy(blas_threads=0, numba_threads=1)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        configure(ThreadPolicy(1, numba.config.NUMBA_NUM_THREADS + 1))


def test_cli_threads_flag_reaches_the_policy_and_a_bad_value_is_one_line(capsys):
    import cli

    try:
        assert cli.main(["--threads", "1", "info", "--preset", "tiny"]) == 0
        assert current_policy() == ThreadPolicy(1, 1)
        assert cli.main(["--threads", "0", "info"]) == 2
        assert "thread counts must be >= 1" in capsys.readouterr().err
    finally:
        configure()


def test_prepare_environment_sets_the_wait_policies_only_when_unset():
    with mock.patch.dict(os.environ, {"NUMBA_CACHE_DIR": "kept"}, clear=True):
        prepare_environment()
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["NUMBA_CACHE_DIR"] == "kept"
        assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "19" and os.environ["GOMP_SPINCOUNT"] == "10000"
    user = {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "28", "NUMBA_CACHE_DIR": "kept"}
    with mock.patch.dict(os.environ, user, clear=True):
        runtime.prepare_environment()
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OPENBLAS_THREAD_TIMEOUT"] == "28"
        assert "GOMP_SPINCOUNT" not in os.environ                                 # ACTIVE's endless spin is kept
    with mock.patch.dict(os.environ, {"GOMP_SPINCOUNT": "0", "NUMBA_CACHE_DIR": "kept"}, clear=True):
        runtime.prepare_environment()
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "0"


def test_user_environment_is_the_environment_before_the_defaults():
    """What a child process gets to run as if bidm_ref had not been imported (the bench's PyTorch twin)."""
    found = {"NUMBA_CACHE_DIR": "kept", "OPENBLAS_THREAD_TIMEOUT": "4", "OTHER": "x"}
    with mock.patch.dict(os.environ, found, clear=True), mock.patch.dict(runtime.USER_ENVIRONMENT, {}, clear=True):
        prepare_environment()
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "10000"
        assert runtime.user_environment() == found


def test_a_fresh_cli_process_sets_the_openblas_timeout_before_numpy_loads():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: cli.py must import bidm_ref first."""
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    probe = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
sys.meta_path.insert(0, Spy())
import cli
cli.main(["info", "--preset", "tiny"])
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "['19']"


def test_numba_cache_folder_follows_every_source_file(tmp_path):
    """Numba tracks only a function's own file; the cache folder is named by all of the package's sources."""
    import numba

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "notes.txt").write_text("not a source")
    before = runtime.source_digest(package)
    (package / "notes.txt").write_text("changed")
    assert runtime.source_digest(package) == before
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert runtime.source_digest(package) != before
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(tmp_path / "cache")}):
        folder = runtime.numba_cache_dir(package)
        assert folder == tmp_path / "cache" / "bidm-ref" / f"numba-{runtime.source_digest(package)[:16]}"
        os.environ.pop("NUMBA_CACHE_DIR", None)
        with mock.patch.object(numba.config, "CACHE_DIR", "before"):
            prepare_environment()
            expected = str(runtime.numba_cache_dir())                             # the package's own sources
            assert os.environ["NUMBA_CACHE_DIR"] == numba.config.CACHE_DIR == expected
            assert os.path.isdir(expected)


def test_numba_kernels_give_the_same_bytes_on_one_thread_and_on_every_core():
    """GroupNorm's and SiLU's kernels sum each group in a fixed order, whatever the thread count."""
    import numpy as np

    from bidm_ref.nn.activation import SiLU
    from bidm_ref.nn.groupnorm import GroupNorm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 9, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    try:
        for threads in (1, default_policy().numba_threads):
            configure(ThreadPolicy(1, threads))
            norm, act = GroupNorm(4, 16), SiLU()
            y, c_norm = norm.forward(x)
            z, c_act = act.forward(y)
            dx = norm.backward(act.backward(dy, c_act), c_norm)
            fused, c_fused = norm.forward(x, silu=True)
            results.append((z, dx, norm.grads["weight"].copy(), fused, norm.backward(dy, c_fused)))
    finally:
        configure()
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


FAULTS_OF_A_REUSED_ARRAY = """
import resource, sys
import numpy as np
from bidm_ref import runtime
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
elif sys.argv[1] == "configure":                      # what every command does
    runtime.configure(runtime.ThreadPolicy(1, 1))
np.ones(1 << 19, dtype=np.float32)                    # 2 MiB allocated, touched, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(1 << 19, dtype=np.float32)                    # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_keep_freed_memory_lets_a_freed_array_be_reused_without_page_faults():
    # MALLOC_TRIM_THRESHOLD_ as Dask's nannies set it: glibc's mmap threshold then stays at 128 KiB instead of
    # following what the imports happened to free, so the baseline is the same in every process
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_ARRAY, mode], capture_output=True, text=True,
                             check=True, env=env)
        return int(out.stdout)

    # 2 MiB: below the 4 MiB from which NumPy asks for transparent huge pages (a huge page is one fault, so the
    # count would depend on whether the kernel has one free), above glibc's 128 KiB mmap threshold
    pages = (2 << 20) // resource.getpagesize()
    assert faults("default") > pages // 4       # glibc unmaps the freed block: the second array faults again
    assert faults("keep") < pages // 16         # kept on the heap: its pages are already mapped
    assert faults("configure") < pages // 16    # runtime.configure applies it
