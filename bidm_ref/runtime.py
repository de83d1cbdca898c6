"""The compute policy of a bidm-ref process: which BLAS kernels run, and how many threads BLAS and Numba get.

Every command sets it itself (docs/ENGINE.md, "Threads and BLAS kernels", has the measurements):

1. Before NumPy is loaded (`bidm_ref/__init__.py` calls `prepare_environment`), two environment defaults,
   each only when the variable is unset:
   - OPENBLAS_CORETYPE=SkylakeX on a CPU with AVX-512 (F, BW, DQ, VL): OpenBLAS 0.3 runs AMD Zen 4/5 on its
     AVX2 ("Haswell") kernels; its AVX-512 kernels made the float32 matmuls of the cifar10 preset ~1.7x faster.
   - OMP_WAIT_POLICY=PASSIVE: Numba's OpenMP workers sleep at once when a parallel region ends instead of
     spinning, so they do not take the cores from the BLAS threads that run next (with both pools at two
     threads and spinning workers, the tiny training step took 2.2x as long as on one thread).
2. `configure(policy)` (cli.py and the benchmarks call it) sets the thread counts: BLAS through threadpoolctl,
   Numba through numba.set_num_threads. The default gives both pools every core.

Determinism: the same seed gives the same bytes for the same policy on the same machine; another thread
count or BLAS kernel may change float32 results in the last bits (the matmuls' blocking changes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AVX512 = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def prepare_environment() -> None:
    """Set the environment defaults of step 1 of the module docstring (a no-op for variables already set)."""
    if all(flag in cpu_flags() for flag in AVX512):
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads of the BLAS library (every matmul) and of Numba's parallel kernels."""

    blas_threads: int
    numba_threads: int

    def __post_init__(self) -> None:
        if self.blas_threads < 1 or self.numba_threads < 1:
            raise ValueError(f"thread counts must be >= 1, got {self}: pass --threads 1 or more")


def default_policy() -> ThreadPolicy:
    """Every core for both pools (bounded by NUMBA_NUM_THREADS, which Numba cannot exceed)."""
    import numba

    cores = os.cpu_count() or 1
    return ThreadPolicy(blas_threads=cores, numba_threads=min(cores, numba.config.NUMBA_NUM_THREADS))


_policy: ThreadPolicy | None = None


def configure(policy: ThreadPolicy | None = None) -> ThreadPolicy:
    """Apply `policy` (default: `default_policy()`) to BLAS and Numba for the rest of the process."""
    global _policy
    import numba
    from threadpoolctl import threadpool_limits

    policy = policy or default_policy()
    if policy.numba_threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"{policy.numba_threads} Numba threads asked, but NUMBA_NUM_THREADS="
                         f"{numba.config.NUMBA_NUM_THREADS} caps them: unset NUMBA_NUM_THREADS or ask for fewer")
    threadpool_limits(limits=policy.blas_threads, user_api="blas")
    numba.set_num_threads(policy.numba_threads)
    _policy = policy
    return policy


def current_policy() -> ThreadPolicy:
    """The policy `configure` applied last (applies the default first if none was)."""
    return _policy if _policy is not None else configure()
