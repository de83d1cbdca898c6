"""The compute policy of a bidm-ref process: how many threads BLAS and Numba get, and how idle ones wait.

Every command sets it itself (docs/ENGINE.md, "Threads", has the measurements):

1. Before NumPy is loaded (`bidm_ref/__init__.py` calls `prepare_environment`): OMP_WAIT_POLICY=PASSIVE
   with GOMP_SPINCOUNT=10000 unless OMP_WAIT_POLICY is set. Numba's OpenMP workers (GNU libgomp) then spin for
   10,000 rounds (~0.1-0.2 ms here) when a parallel region ends and sleep after that, instead of spinning for good:
   with both pools at two threads and endlessly spinning workers, the tiny training step took 4.8x as long as with
   sleeping ones, because they took the cores from the BLAS threads that run next. The short spin keeps the
   back-to-back regions of the packed layers from paying a wake-up each (~60 µs on these VMs): packed sampling
   steps 5-18% faster than with no spin, FP steps and training unchanged or 1-3% faster (docs/ENGINE.md, "Threads").
   And OPENBLAS_THREAD_TIMEOUT=19 unless it is set: OpenBLAS's idle workers spin (yielding) for 2^timeout
   cycles after a matmul before they sleep, 2^28 (~0.1 s) by default, so a Numba parallel region right after a
   matmul shared its second core with a spinning BLAS worker and ran no faster than on one thread (a cifar10
   popcount layer, N8 C256 16x16: 2.2 ms with one thread or two; 1.3 ms with two once the workers sleep after
   2^19 cycles, ~0.2 ms). 19 was the best of 8, 12, 16, 19, 22 and the default on whole steps (docs/ENGINE.md,
   "OpenBLAS's spinning workers").
2. `configure(policy)` (cli.py and the benchmarks call it) sets the thread counts: BLAS through threadpoolctl,
   Numba through numba.set_num_threads. The default gives both pools every core that other processes leave
   free at start-up (cores minus the cores busy over BUSY_SAMPLE_S, read from /proc/stat): on an idle machine
   every core (measured fastest), on a machine whose cores other jobs hold one thread, because a BLAS call split
   over two threads waits for the descheduled one (measured 8x slower sampling steps than one thread;
   docs/ENGINE.md, "Threads"). Not the 1-minute load average: it lags, so a command started within a minute of
   another one (a benchmark after a test run) took one thread on an idle machine.
   And NUMBA_CACHE_DIR, unless it is set, to a folder of the user's cache named by a digest of the package's
   sources (`numba_cache_dir`). Numba invalidates a cached function when its own file changes, not when a
   function it calls from another file does: after an edit of binary/kernels.py alone, layer_kernels.py's cached
   layer went on running the old, inlined accumulator loop (seen 2026-12-07, a benchmark that measured no change).
   With a folder per source digest, any edit of the package compiles afresh.
3. `configure` also keeps freed memory in the process (`keep_freed_memory`): glibc's malloc otherwise gives
   every array above its mmap threshold back to the kernel when it is freed, so the next array of that size
   takes a page fault per 4 KiB page on first touch. The engine allocates and frees its activations, columns
   and gradients at every layer, so these faults cost as much as the matmuls on small convs (a tiny-preset
   3x3 conv at batch 64: 9.5 ms with them, 5.6 ms without; docs/ENGINE.md, "Memory").
The BLAS kernels are OpenBLAS's own choice (or OPENBLAS_CORETYPE's, when the environment sets it).

Determinism: the same seed gives the same bytes for the same policy on the same machine; another thread
count or BLAS kernel may change float32 results in the last bits (the matmuls' blocking changes). The default
follows the load, so a run that must be byte-reproducible passes `--threads N`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
OPENBLAS_THREAD_TIMEOUT = "19"  # log2 of the cycles an idle OpenBLAS worker spins before sleeping (docstring, 1)
GOMP_SPINCOUNT = "10000"  # rounds an idle Numba (libgomp) worker spins before sleeping (docstring, 1)


DEFAULTED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "NUMBA_CACHE_DIR")  # prepare_environment's
USER_ENVIRONMENT: dict[str, str | None] = {}  # those variables as the process found them (None: unset)


def prepare_environment() -> None:
    """Set the environment defaults of step 1 of the module docstring (each a no-op when it is already set; they act
    only when set before NumPy loads OpenBLAS and before Numba starts its workers). What the process found is kept
    in USER_ENVIRONMENT (the first call's view)."""
    for key in DEFAULTED:
        USER_ENVIRONMENT.setdefault(key, os.environ.get(key))
    if "OMP_WAIT_POLICY" not in os.environ:                                    # a policy set by the user is kept whole
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    if "NUMBA_CACHE_DIR" not in os.environ:
        folder = numba_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return                                                                # Numba's default (__pycache__) then
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
        if "numba" in sys.modules:                                                # imported first: its config is read
            sys.modules["numba"].config.CACHE_DIR = str(folder)


def user_environment() -> dict[str, str]:
    """This process's environment without the defaults prepare_environment added: for a child process that must run
    as if bidm_ref had not been imported (the bench's PyTorch twin, whose OpenMP runtime reads the wait policy)."""
    env = dict(os.environ)
    for key, value in USER_ENVIRONMENT.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def source_digest(package: Path = PACKAGE) -> str:
    """sha256 (hex) over the relative paths and bytes of every .py file below `package`, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def numba_cache_dir(package: Path = PACKAGE) -> Path:
    """<XDG_CACHE_HOME or ~/.cache>/bidm-ref/numba-<first 16 hex of source_digest>."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bidm-ref" / f"numba-{source_digest(package)[:16]}"


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads of the BLAS library (every matmul) and of Numba's parallel kernels."""

    blas_threads: int
    numba_threads: int

    def __post_init__(self) -> None:
        if self.blas_threads < 1 or self.numba_threads < 1:
            raise ValueError(f"thread counts must be >= 1, got {self}: pass --threads 1 or more")


def free_cores(cores: int, load: float) -> int:
    """The cores other processes leave free: `cores` minus `load` (cores busy), rounded; at least 1."""
    return max(1, min(cores, cores - int(load + 0.5)))


BUSY_SAMPLE_S = 0.05  # seconds over which busy_cores reads the CPU counters (5 ticks of 10 ms per core)


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat: busy = user + nice +
    system + irq + softirq, total = busy + idle + iowait (steal and guest time left out)."""
    with open(stat) as f:
        user, nice, system, idle, iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def busy_cores(cores: int, interval: float = BUSY_SAMPLE_S) -> float:
    """How many of `cores` other processes keep busy now: their share of the CPU ticks over `interval` (this process
    sleeps meanwhile), times `cores`. Without /proc/stat (macOS) the 1-minute load average."""
    try:
        busy0, total0 = cpu_ticks()
        time.sleep(interval)
        busy1, total1 = cpu_ticks()
    except (OSError, ValueError):
        return os.getloadavg()[0]
    return cores * (busy1 - busy0) / max(1, total1 - total0)


def default_policy() -> ThreadPolicy:
    """Every free core for both pools at start-up (free_cores of busy_cores; bounded by NUMBA_NUM_THREADS, which
    Numba cannot exceed): all cores on an idle machine, one thread when other jobs hold the cores (module
    docstring, 2)."""
    import numba

    cores = os.cpu_count() or 1
    threads = free_cores(cores, busy_cores(cores))
    return ThreadPolicy(blas_threads=threads, numba_threads=min(threads, numba.config.NUMBA_NUM_THREADS))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest mmap threshold on 64-bit: smaller blocks come from the heap
TRIM_THRESHOLD = 1 << 30  # the heap's free top is given back only above 1 GiB


def keep_freed_memory() -> bool:
    """Serve blocks below MMAP_THRESHOLD from malloc's heap and keep its freed memory (module docstring, 3).

    Returns whether the C library took both settings (glibc does; macOS's and musl's malloc have no such
    parameters, and the process keeps their behaviour). Values and bytes of every result are unchanged.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


_policy: ThreadPolicy | None = None


def configure(policy: ThreadPolicy | None = None) -> ThreadPolicy:
    """Apply `policy` (default: `default_policy()`) to BLAS and Numba, and keep_freed_memory, for the rest of the
    process."""
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
    keep_freed_memory()
    return policy


def current_policy() -> ThreadPolicy:
    """The policy `configure` applied last (applies the default first if none was)."""
    return _policy if _policy is not None else configure()
