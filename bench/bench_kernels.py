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
    float32 im2col+BLAS      bidm_ref.nn.conv.conv2d (the engine's conv, no bias)
    pack activations         pack sign(x + tau) into [N, H, W, Wd] words (Numba)
    popcount conv prepacked  conv_scaled on packed activations: kernel + fused alpha * K epilogue, float32 out
    popcount conv +packing   binary_conv2d: packing + kernel + epilogue, what a binary layer runs
Ratios (same run): popcount_vs_float_conv = geometric mean over the shapes of float median / (+packing)
median; `_excl_packing` uses the prepacked kernel; `_min` uses minima (less sensitive to other processes
taking the CPU, which inflate medians of the longer float runs most).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bidm_ref.binary.bitpack import pack_conv_weight
from bidm_ref.binary.kernels import binary_conv2d, conv_scaled, output_shape, pack_input
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


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Per run: {"median_s", "min_s", "repeats"} over `repeats` rounds, each round calling every run once."""
    for run in runs.values():
        run()                                                                     # warm-up: compile / load caches
    times: dict[str, list[float]] = {impl: [] for impl in runs}
    for _ in range(repeats):
        for impl, run in runs.items():
            start = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - start)
    return {impl: {"median_s": statistics.median(t), "min_s": min(t), "repeats": repeats} for impl, t in times.items()}


def bench_shape(shape: ConvShape, repeats: int, rng: np.random.Generator) -> list[dict]:
    """The four rows of one shape; extra keys: macs (multiply-accumulates of the conv), load_1min."""
    N, C, S = shape.batch, shape.channels, shape.size
    x = rng.standard_normal((N, C, S, S)).astype(np.float32)                     # [N, C, H, W]
    tau = (0.1 * rng.standard_normal(C)).astype(np.float32)                       # [C]
    weight = rng.standard_normal((C, C, 3, 3)).astype(np.float32)                 # [O, C, kh, kw]
    packed_weight = pack_conv_weight(weight, np.abs(weight).mean(axis=(1, 2, 3)))
    out_shape = output_shape(x.shape, packed_weight, shape.stride, shape.padding)  # [N, O, Ho, Wo]
    k_map = rng.uniform(0.5, 1.5, (N, 1, *out_shape[2:])).astype(np.float32)      # [N, 1, Ho, Wo]
    k_rows = np.ascontiguousarray(k_map[:, 0])                                    # [N, Ho, Wo]
    packed = pack_input(x, tau, C)                                                # [N, H, W, Wd]
    pad = as_padding(shape.padding)
    runs = {
        "float32 im2col+BLAS": lambda: conv2d(x, weight, None, shape.stride, shape.padding),
        "pack activations": lambda: pack_input(x, tau, C),
        "popcount conv prepacked": lambda: conv_scaled(
            packed, packed_weight.words_t, C, shape.stride, pad, packed_weight.alpha, k_rows
        ),
        "popcount conv +packing": lambda: binary_conv2d(x, tau, packed_weight, shape.stride, shape.padding, k_map),
    }
    extra = {"macs": int(np.prod(out_shape)) * C * 9, "load_1min": os.getloadavg()[0]}
    timings = time_interleaved(runs, repeats)
    return [{"name": shape.name, "shape": shape.label(), "impl": impl, **timings[impl], **extra} for impl in runs]


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def speedups(results: list[dict], impl: str, statistic: str) -> list[float]:
    """float32 time / `impl` time per shape, for `statistic` in {median_s, min_s}."""
    by_key = {(row["name"], row["shape"], row["impl"]): row[statistic] for row in results}
    return [
        by_key[(name, label, "float32 im2col+BLAS")] / by_key[(name, label, impl)]
        for name, label, row_impl in by_key
        if row_impl == impl
    ]


def bench_kernels(repeats: int = 10, shapes: list[ConvShape] = CIFAR10_KERNEL_SHAPES) -> tuple[list[dict], dict]:
    """(result rows in the bench/timing.py format, ratios) for `shapes`; see the module docstring."""
    rng = np.random.default_rng(0)
    results = [row for shape in shapes for row in bench_shape(shape, repeats, rng)]
    ratios = {
        "popcount_vs_float_conv": geometric_mean(speedups(results, "popcount conv +packing", "median_s")),
        "popcount_vs_float_conv_excl_packing": geometric_mean(speedups(results, "popcount conv prepacked", "median_s")),
        "popcount_vs_float_conv_min": geometric_mean(speedups(results, "popcount conv +packing", "min_s")),
    }
    return results, ratios


if __name__ == "__main__":
    bench_main("popcount conv vs float32 conv on ddim's CIFAR-10 conv shapes", bench_kernels, 10)
