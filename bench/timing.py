"""Timing helpers shared by the benchmarks: warm-up, repeats, median, machine description, JSON report.

A result row is {"name", "shape", "impl", "median_s", "min_s", "repeats", ...extra}; a report is
{"machine": {...}, "results": [...], "ratios": {...}} (what `cli.py bench --json` writes; results/bench.json is one).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from bidm_ref.storage.atomic import atomic_write


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run fn `warmup` times untimed (compiles, caches), then `repeats` times; median and min seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def cpuinfo(field: str) -> str:
    """The value of the first `field` line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> dict:
    """What the numbers were measured on: CPU and its vector flags, library versions, the thread policy and BLAS."""
    import numba
    from llvmlite.binding import get_host_cpu_name
    from threadpoolctl import threadpool_info

    from bidm_ref.runtime import current_policy

    policy = current_policy()
    return {
        "platform": platform.platform(),
        "cpu_model": cpuinfo("model name") or platform.processor() or platform.machine(),
        "llvm_cpu": get_host_cpu_name(),
        "cpu_vector_flags": sorted(f for f in cpuinfo("flags").split() if f.startswith(("avx", "fma", "popcnt"))),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME", "host"),
        "numba_threads": policy.numba_threads,
        "numba_threading_layer": os.environ.get("NUMBA_THREADING_LAYER", "default"),
        "blas_threads": policy.blas_threads,
        "blas": [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                 for lib in threadpool_info() if lib.get("user_api") == "blas"],
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "auto"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_1min_at_start": os.getloadavg()[0],
    }


def format_table(results: list[dict]) -> str:
    """Fixed-width table of result rows: name, shape, impl, median and min in milliseconds."""
    lines = [f"{'name':<28} {'shape':<28} {'impl':<24} {'median ms':>10} {'min ms':>10}"]
    for row in results:
        lines.append(
            f"{row['name']:<28} {row['shape']:<28} {row['impl']:<24} "
            f"{row['median_s'] * 1e3:>10.3f} {row['min_s'] * 1e3:>10.3f}"
        )
    return "\n".join(lines)


def format_ratio(key: str, value: float) -> str:
    """A ratio as `2.31x`; the non-ratio entries by their key: `*_per_s` a rate, `*share*` a percentage,
    `*_max_*` a plain number, `*_emits_*` a yes/no flag (stored as 1.0 / 0.0)."""
    if key.endswith("_per_s"):
        return f"{value:.3g}/s"
    if "share" in key:
        return f"{value:.1%}"
    if "_max_" in key:
        return f"{value:.3g}"
    if "_emits_" in key:
        return "yes" if value else "no"
    return f"{value:.2f}x"


def print_results(results: list[dict], ratios: dict) -> None:
    """Print the table of result rows (if any), then each ratio as `key: value` (format_ratio)."""
    if results:
        print(format_table(results))
    for key, value in ratios.items():
        print(f"{key}: {format_ratio(key, value)}")


def bench_main(description: str, suite: Callable[[int], tuple[list[dict], dict]], default_repeats: int = 5) -> None:
    """The command line of a benchmark module: `[repeats] [--json PATH]`; applies the thread policy, prints the
    machine, the table and the ratios, and writes the JSON report."""
    import argparse

    from bidm_ref.runtime import configure

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("repeats", type=int, nargs="?", default=default_repeats)
    parser.add_argument("--json", help="also write the report (machine, results, ratios) to this path")
    args = parser.parse_args()
    configure()
    print(f"machine: {machine_info()}")
    results, ratios = suite(args.repeats)
    print_results(results, ratios)
    print(f"load after: {os.getloadavg()}")
    if args.json:
        write_report(args.json, results, ratios)


def write_report(path: str, results: list[dict], ratios: dict) -> None:
    """Write the JSON report atomically (temp file + rename); `command` is the command line that made it."""
    command = " ".join(["python", *sys.argv])
    report = {"machine": machine_info(), "command": command, "results": results, "ratios": ratios}
    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2)
