"""The Dask client of `cli.py sample|eval --workers K | --scheduler ADDRESS`, and DaskMap: shards run on its workers.

No arrays here (no dimension legend needed).

- `dask_client(workers, scheduler)`: a LocalCluster of K worker processes with one thread each
  (threads_per_worker=1), or a connection to an existing scheduler (`dask scheduler` + `dask worker ADDRESS
  --nworkers 1 --nthreads 1` on each machine; README "Sampling and evaluation on a Dask cluster"). A
  scheduler that cannot be reached within CONNECT_TIMEOUT is a one-line OSError naming the address and the fix.
- Threads: every task runs `runtime.configure(WORKER_POLICY)` (BLAS 1, Numba 1) in the thread it runs in
  before its work (`with_worker_policy`). This is done per task, not once in a worker plugin, because Numba's
  thread count is per thread (numba.set_num_threads) and a plugin's setup runs in another thread than the
  tasks; BLAS's count is per process. One thread per worker process is the fastest layout under contention
  (docs/ENGINE.md, "Threads") and gives every worker the float bits of `cli.py --threads 1` in one process.
- Memory: distributed's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
  dynamic mmap threshold, so every large NumPy temporary is a fresh mmap and its zeroed pages: a shard of the
  tiny packed student took 3.9 s in a worker (1.9 s of it in the kernel) against 1.9 s in one process
  (2026-12-01, 64 images x 10 steps). The `configure` of every task sets glibc's thresholds itself
  (runtime.keep_freed_memory), which overrides that variable, so workers need no Dask configuration
  (measured then: 640 images x 20 DDIM steps of the shipped student, `--workers 2` 19.7 s against 31.6 s in
  one process with `--threads 1`, the same bytes).
- Lost data: the scheduler's active memory manager drops the broadcast copies of the scattered weights down
  to one within seconds (measured: 2 workers hold them at once, 1 six seconds later), so a worker that dies
  can take the last copy with it; the tasks that need it are then forgotten, and their futures cancelled.
  DaskMap then scatters the shared data again and resubmits the shards not yet finished (SCATTER_ATTEMPTS
  times at most); a finished shard is never recomputed for this.
- `DaskMap(client)` has the signature of metrics.evaluate.serial_map (a ShardMap): fn(item, *shared) for each
  item, results in item order whatever the order tasks finish in. The `shared` objects (model weights,
  Inception weights) are scattered once with broadcast=True, so they reach every worker once and not with
  every task; items travel inside their task, so a worker that dies loses nothing the scheduler cannot run
  again: its unfinished tasks are retried elsewhere (distributed's `allowed-failures`, default 3, bounds
  the retries of one task). `on_done(k, result)` sees each result as it arrives (sample_shards.py writes it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager

from tqdm import tqdm

from ..runtime import ThreadPolicy, configure

CONNECT_TIMEOUT = "10s"
SCATTER_ATTEMPTS = 3  # scatters of the shared data per map before a cluster that keeps losing it is given up
WORKER_POLICY = ThreadPolicy(blas_threads=1, numba_threads=1)
INSTALL_HINT = "pip install -e '.[dist]' (or pip install 'dask[distributed]')"


def check_cluster_flags(workers: int | None, scheduler: str | None) -> bool:
    """True when the flags ask for Dask (--workers K > 1 or --scheduler); a one-line ValueError for bad ones."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}: pass --workers 1 (this process) or more")
    if workers is not None and scheduler is not None:
        raise ValueError("pass either --workers K (a cluster on this machine) or --scheduler ADDRESS (an existing "
                         "one), not both")
    return scheduler is not None or (workers or 1) > 1


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator:
    """A distributed.Client of a new LocalCluster (K processes x 1 thread) or of the scheduler at `scheduler`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(f"--workers / --scheduler need Dask's distributed scheduler, which is not installed: "
                         f"{INSTALL_HINT}") from None
    if scheduler is None:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError) as err:  # OSError includes TimeoutError; ValueError: a malformed address
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"cannot reach the Dask scheduler at {scheduler} ({reason}): start one with `dask scheduler` "
                      f"and `dask worker {scheduler} --nworkers 1 --nthreads 1` on each machine, or pass "
                      "--workers K for a cluster on this machine") from None
    with client:
        yield client


def with_worker_policy(fn: Callable, *args):
    """fn(*args) after applying WORKER_POLICY in this thread (module docstring, "Threads")."""
    configure(WORKER_POLICY)
    return fn(*args)


class DaskMap:
    """A ShardMap (metrics.evaluate.serial_map's signature) whose calls run on the client's workers."""

    def __init__(self, client) -> None:
        self.client = client

    def __call__(self, fn: Callable, items: Sequence, shared: tuple = (), desc: str = "",
                 on_done: Callable[[int, object], None] | None = None) -> list:
        results: list = [None] * len(items)
        todo = list(range(len(items)))
        with tqdm(total=len(items), desc=desc or None, unit="shard") as bar:
            for _ in range(SCATTER_ATTEMPTS):
                todo = self.run_until_data_lost(fn, items, shared, todo, results, on_done, bar)
                if not todo:
                    return results
        raise OSError(f"the cluster lost the shared data {SCATTER_ATTEMPTS} times ({len(todo)} shards left): its "
                      "workers keep dying; check their logs (memory?) and run again, which skips finished shards")

    def run_until_data_lost(self, fn: Callable, items: Sequence, shared: tuple, todo: list[int], results: list,
                            on_done: Callable[[int, object], None] | None, bar: tqdm) -> list[int]:
        """Scatter `shared`, run the items `todo` and fill `results`; returns the items left when a worker died
        with the last copy of the shared data (module docstring, "Lost data"), else []."""
        from distributed import as_completed

        shared_futures = [self.client.scatter(obj, broadcast=True, hash=False) for obj in shared]
        index = {self.client.submit(with_worker_policy, fn, items[k], *shared_futures, pure=False): k for k in todo}
        for future in as_completed(list(index)):                                 # index: the unfinished items
            try:
                result = future.result()
            except CancelledError:
                return sorted(index.values())
            k = index.pop(future)
            results[k] = result
            if on_done is not None:
                on_done(k, result)
            bar.update(1)
        return []
