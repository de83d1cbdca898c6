"""Kernels compiled twice from one source: on every Numba thread, and on the calling thread for small inputs.

A parallel region wakes Numba's sleeping OpenMP workers, which costs ~10-50 us here (docs/ENGINE.md, "Small
kernels run on one thread"): more than the whole work of a group norm, a SiLU or a binary layer on an 8x8 map at
batch 1. So a kernel whose outer loop runs over independent tasks is written once, as `make(loop)` returning the
Python function whose outer loop is `loop(n)`, and compiled twice: with numba.prange (parallel=True) and with
range (parallel=False). Both compilations run the same tasks with the same per-task order of operations, so
they write the same bytes (each kernel's tests compare them); `ThreadedKernel.for_work` picks one by the work
of a call against the threshold its module measured.

Numba's on-disk cache keeps the two compilations apart by the closure's `loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
from llvmlite.binding import get_host_cpu_features
from numba.core import config


@dataclass(frozen=True)
class ThreadedKernel:
    """The parallel and the serial compilation of one kernel, and the work from which the parallel one runs."""

    parallel: Callable
    serial: Callable
    min_parallel_work: int  # in the unit of the caller's `work` (elements, popcount words, ...)

    def for_work(self, work: int) -> Callable:
        """The parallel compilation for `work` >= min_parallel_work, else the serial one."""
        return self.parallel if work >= self.min_parallel_work else self.serial

    @property
    def compilations(self) -> tuple[Callable, Callable]:
        """(parallel, serial), for tests that check both."""
        return self.parallel, self.serial


def threaded_kernel(make: Callable[[Callable], Callable], min_parallel_work: int, **njit_options) -> ThreadedKernel:
    """Compile `make(numba.prange)` with parallel=True and `make(range)` without, both cached, with njit_options
    (error_model, fastmath, ...) on both."""
    return ThreadedKernel(numba.njit(cache=True, parallel=True, **njit_options)(make(numba.prange)),
                          numba.njit(cache=True, parallel=False, **njit_options)(make(range)), min_parallel_work)


def compiles_for(feature: str) -> bool:
    """Whether Numba's LLVM targets a CPU feature (LLVM's name: "avx512f", "avx512vpopcntdq", ...): NUMBA_CPU_FEATURES
    when set, else this CPU's. The direct convs pick their register tiles by it."""
    features = config.CPU_FEATURES or get_host_cpu_features().flatten()
    return f"+{feature}" in features.split(",")
