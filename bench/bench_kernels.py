"""Binary popcount conv vs the float32 conv on the conv shapes of ddim's CIFAR-10 UNet.

Dimensions: N batch, C channels (in = out), H = W = size input, Ho, Wo output spatial, Wd packed words.
Run: `python -m bench.bench_kernels [repeats] [--json PATH]` (`cli.py bench` calls bench_kernels). Threads:
Numba takes NUMBA_NUM_THREADS (default all cores), OpenBLAS OPENBLAS_NUM_THREADS; set both to 1 for a
one-core comparison, which is also the stable one when other processes load the machine. With 2 threads on
a loaded machine, OpenMP workers spin-waiting between the BLAS and the Numba calls inflate the medians
(OMP_WAIT_POLICY=passive or NUMBA_THREADING_LAYER=workqueue avoids that).
Shapes: 3x3 convs, batch N in {1, 8}: ResBlock convs (stride 1, pad 1) with C = 128 at 32x32, C = 256 at
16x16 and 8x8, and the Downsample convs (pad (0, 1, 0, 1), stride 2) on the same inputs; C in = C out.
Implementations per shape (one row each; medians and minima over `repeats` after one warm-up call; the
implementations of a shape are timed interleaved, one call each per round, so a change in the machine's
load during the run hits all of them alike):
    float32 conv2d           bidm_ref.nn.conv.conv2d (the engine's conv, no bias: im2col + BLAS, or the register tiles of
                             nn/conv_direct.py on the 128-channel stride-1 shapes)
    pack activations         pack sign(x + tau) into [N, H, W, Wd] words (Numba)
    popcount conv prepacked  conv_scaled on packed activations: kernel + fused alpha * K epilogue, float32 out
    popcount conv +packing   packed_conv_layer without its shortcut term: what a packed binary layer runs in
                             one call (packing, K map, kernel, epilogue) beside the float conv's work
Ratios (same run): popcount_vs_float_conv = geometric mean over the shapes of float median / (+packing)
median; `_excl_packing` uses the prepacked kernel; `_min` uses minima (less sensitive to other processes
taking the CPU, which inflate medians of the longer float runs most).
Popcount throughput: each popcount row has `binary_macs_per_s` (macs / median; a word of 64 sign pairs is 64 binary
MACs). The bound is measured, not looked up: `popcount_peak` runs the kernel's register tile (PIXELS pixels x
TILE_WORDS outputs, sums in registers: per word one xor, popcount and add per vector of 8 outputs; vpopcntq on
zmm where the CPU has AVX512_VPOPCNTDQ) on L1-resident words, one thread per core: what the CPU's vector
popcount sustains in the kernel's own instruction mix; `popcount_peak_macs_per_s` is its rate and
`kernel_share_of_popcount_peak` the best prepacked kernel's share of it (geometric mean over the shapes:
`_geomean`). `kernel_emits_vpopcntq` says whether LLVM put vpopcntq into the compiled kernel (its assembly,
compiled afresh without the cache).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from numba import njit, prange

from bidm_ref.binary.bitpack import pack_activations, pack_conv_weight
from bidm_ref.binary.kernels import PIXELS, _accumulate_row, conv_scaled, output_shape, tile_pixels
from bidm_ref.binary.layer_kernels import packed_conv_layer
from bidm_ref.binary.popcount import TILE_WORDS
from bidm_ref.nn.conv import Padding, as_padding, conv2d

from .timing import bench_main


@dataclass(frozen=True)
class ConvShape:
    """One benchmarked conv: batch, channels (in = out), square input size, stride, padding, a layer name."""

    name: str
    batch: int
    channels: int
    size: int
    stride: int
    padding: Padding

    def label(self) -> str:
        return f"N{self.batch} C{self.channels} {self.size}x{self.size} k3 s{self.stride}"


CIFAR10_KERNEL_SHAPES = [
    ConvShape(name, batch, channels, size, stride, padding)
    for batch in (1, 8)
    for name, stride, padding in (("resblock_conv3x3", 1, 1), ("downsample_conv3x3", 2, (0, 1, 0, 1)))
    for channels, size in ((128, 32), (256, 16), (256, 8))
]


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int, settle_s: float = 0.0) -> dict[str, dict]:
    """Per run: {"median_s", "min_s", "repeats"} over `repeats` rounds, each round calling every run once; `settle_s`
    seconds of sleep before each timed call (so the threads of the call before, in this process or another, have
    stopped spinning)."""
    for run in runs.values():
        run()                                                                     # warm-up: compile / load caches
    times: dict[str, list[float]] = {impl: [] for impl in runs}
    for _ in range(repeats):
        for impl, run in runs.items():
            time.sleep(settle_s)
            start = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - start)
    return {impl: {"median_s": statistics.median(t), "min_s": min(t), "repeats": repeats} for impl, t in times.items()}


POPCOUNT_IMPLS = ("popcount conv prepacked", "popcount conv +packing")  # the rows that run the conv's MACs


def bench_shape(shape: ConvShape, repeats: int, rng: np.random.Generator) -> list[dict]:
    """The four rows of one shape; extra keys: macs (multiply-accumulates of the conv), load_1min, and
    binary_macs_per_s on the popcount rows."""
    N, C, S = shape.batch, shape.channels, shape.size
    x = rng.standard_normal((N, C, S, S)).astype(np.float32)                     # [N, C, H, W]
    tau = (0.1 * rng.standard_normal(C)).astype(np.float32)                       # [C]
    weight = rng.standard_normal((C, C, 3, 3)).astype(np.float32)                 # [O, C, kh, kw]
    packed_weight = pack_conv_weight(weight, np.abs(weight).mean(axis=(1, 2, 3)))
    out_shape = output_shape(x.shape, packed_weight, shape.stride, shape.padding)  # [N, O, Ho, Wo]
    k_rows = rng.uniform(0.5, 1.5, (N, *out_shape[2:])).astype(np.float32)         # [N, Ho, Wo]
    k_weight = np.full((3, 3), 1 / 9, dtype=np.float32)                           # XNOR's K filter
    packed = pack_activations(x, tau)                                             # [N, H, W, Wd]
    pad = as_padding(shape.padding)
    runs = {
        "float32 conv2d": lambda: conv2d(x, weight, None, shape.stride, shape.padding),
        "pack activations": lambda: pack_activations(x, tau),
        "popcount conv prepacked": lambda: conv_scaled(
            packed, packed_weight.words_t, C, shape.stride, pad, packed_weight.alpha, k_rows
        ),
        "popcount conv +packing": lambda: packed_conv_layer(
            x, tau, packed_weight, shape.stride, shape.padding, k_weight, 0.0, 0.0, None
        ),
    }
    macs = int(np.prod(out_shape)) * C * 9
    extra = {"macs": macs, "load_1min": os.getloadavg()[0]}
    timings = time_interleaved(runs, repeats)
    rate = {impl: {"binary_macs_per_s": macs / timings[impl]["median_s"]} for impl in POPCOUNT_IMPLS}
    return [{"name": shape.name, "shape": shape.label(), "impl": impl, **timings[impl], **extra, **rate.get(impl, {})}
            for impl in runs]


@njit(parallel=True, cache=True)
def _popcount_peak_loop(words, x_words, rounds):
    """The kernel's register tile (kernels.tile_pixels) on L1-resident words: per thread `rounds` tiles of PIXELS
    pixels x TILE_WORDS outputs over Q words, acc[o, p] = 64*Q - 2 * sum_q popcount(x[t, p, q] ^ w[q, o]); returns
    the sum of every acc per thread (so no round is optimised away)."""
    threads, _, Q = x_words.shape
    total = np.zeros(threads, dtype=np.int64)
    w = words.reshape(-1)                                                         # [Q*TILE_WORDS]
    for t in prange(threads):
        acc = np.empty(TILE_WORDS * PIXELS, dtype=np.int32)                       # [TILE_WORDS*PIXELS]
        x = x_words[t].reshape(-1)                                                # [PIXELS*Q]
        for _ in range(rounds):
            tile_pixels(acc, 0, PIXELS, TILE_WORDS, 64 * Q, x, 0, 0, Q, 1, Q, w, 0, 0, TILE_WORDS)
            for i in range(acc.size):
                total[t] += acc[i]
    return total


def popcount_peak(repeats: int = 5) -> float:
    """Binary MACs per second of _popcount_peak_loop with one task per Numba thread, from the fastest of `repeats`
    calls: a bound, which a descheduled thread only lowers (a median once took half the rate: one thread stalled)."""
    import numba

    threads, Q, rounds = numba.get_num_threads(), 96, 20000                      # words [Q, OT]: 24 KiB, in L1
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, (Q, TILE_WORDS), dtype=np.uint64)              # [Q, TILE_WORDS]
    x_words = rng.integers(0, 2**63, (threads, PIXELS, Q), dtype=np.uint64)       # [threads, PIXELS, Q]
    timing = time_interleaved({"peak": lambda: _popcount_peak_loop(words, x_words, rounds)}, repeats)["peak"]
    return threads * rounds * Q * TILE_WORDS * PIXELS * 64 / timing["min_s"]


def kernel_emits_vpopcntq() -> bool:
    """Whether LLVM compiles the accumulator loop with vpopcntq on this CPU (a fresh compile: cached code has no asm)."""
    fresh = njit(_accumulate_row.py_func)
    fresh(np.zeros((1, 3, 3, 1), np.uint64), np.zeros((3, 3, TILE_WORDS), np.uint64), 64, 1, (1, 1, 1, 1), 0, 0,
          np.zeros((8, 3), np.int32))
    return "vpopcntq" in fresh.inspect_asm(fresh.signatures[0])


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def speedups(results: list[dict], impl: str, statistic: str) -> list[float]:
    """float32 time / `impl` time per shape, for `statistic` in {median_s, min_s}."""
    by_key = {(row["name"], row["shape"], row["impl"]): row[statistic] for row in results}
    return [
        by_key[(name, label, "float32 conv2d")] / by_key[(name, label, impl)]
        for name, label, row_impl in by_key
        if row_impl == impl
    ]


def bench_kernels(repeats: int = 10, shapes: list[ConvShape] = CIFAR10_KERNEL_SHAPES) -> tuple[list[dict], dict]:
    """(result rows in the bench/timing.py format, ratios) for `shapes`; see the module docstring."""
    rng = np.random.default_rng(0)
    results = [row for shape in shapes for row in bench_shape(shape, repeats, rng)]
    peak = popcount_peak()
    kernel_rates = [row["binary_macs_per_s"] for row in results if row["impl"] == "popcount conv prepacked"]
    ratios = {
        "popcount_vs_float_conv": geometric_mean(speedups(results, "popcount conv +packing", "median_s")),
        "popcount_vs_float_conv_excl_packing": geometric_mean(speedups(results, "popcount conv prepacked", "median_s")),
        "popcount_vs_float_conv_min": geometric_mean(speedups(results, "popcount conv +packing", "min_s")),
        "popcount_peak_macs_per_s": peak,
        "kernel_share_of_popcount_peak": max(kernel_rates) / peak,
        "kernel_share_of_popcount_peak_geomean": geometric_mean(kernel_rates) / peak,
        "kernel_emits_vpopcntq": float(kernel_emits_vpopcntq()),
    }
    return results, ratios


if __name__ == "__main__":
    bench_main("popcount conv vs float32 conv on ddim's CIFAR-10 conv shapes", bench_kernels, 10)
