"""bench/bench_kernels.py on one small shape: the rows it times, the peak loop's count, the emitted-code check."""

from __future__ import annotations

import numba
import numpy as np

from bench.bench_kernels import ConvShape, _popcount_peak_loop, bench_kernels, kernel_emits_vpopcntq
from bench.timing import format_ratio
from bidm_ref.binary.kernels import PIXELS
from bidm_ref.binary.popcount import TILE_WORDS, popcount64_swar


def test_bench_kernels_times_every_implementation_and_reports_the_throughput_entries():
    shape = ConvShape("resblock_conv3x3", 1, 70, 6, 1, 1)                        # 70 channels: two words
    rows, ratios = bench_kernels(repeats=1, shapes=[shape])
    impls = ["float32 conv2d", "pack activations", "popcount conv prepacked", "popcount conv +packing"]
    assert [row["impl"] for row in rows] == impls
    assert all(row["macs"] == 6 * 6 * 70 * 70 * 9 for row in rows)
    assert [row["binary_macs_per_s"] > 0 for row in rows if "binary_macs_per_s" in row] == [True, True]
    assert all("binary_macs_per_s" in row for row in rows if row["impl"].startswith("popcount"))
    assert set(ratios) >= {"popcount_vs_float_conv", "popcount_peak_macs_per_s", "kernel_share_of_popcount_peak",
                           "kernel_emits_vpopcntq"}
    assert ratios["kernel_emits_vpopcntq"] in (0.0, 1.0)
    assert format_ratio("kernel_emits_vpopcntq", 1.0) == "yes" and format_ratio("a_share", 0.25) == "25.0%"


def test_popcount_peak_loop_sums_the_accumulators_of_every_round():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, (3, TILE_WORDS), dtype=np.uint64)              # [Q, TILE_WORDS]
    x_words = rng.integers(0, 2**63, (numba.get_num_threads(), PIXELS, 3), dtype=np.uint64)  # [threads, PIXELS, Q]
    expected = [sum(64 * 3 - 2 * sum(int(popcount64_swar(x ^ w)) for x, w in zip(pixel, words[:, o]))
                    for pixel in task for o in range(TILE_WORDS)) for task in x_words]
    assert _popcount_peak_loop(words, x_words, 4).tolist() == [4 * e for e in expected]


def test_vpopcntq_is_reported_when_the_cpu_has_it():
    """The flag follows the CPU: LLVM emits vpopcntq exactly when the host has AVX512_VPOPCNTDQ (Linux flags)."""
    with open("/proc/cpuinfo") as f:
        has = "avx512_vpopcntdq" in f.read().split()
    assert kernel_emits_vpopcntq() == has
