"""Conv2d forward + backward time (float32 im2col + BLAS) on the shapes of ddim's CIFAR-10 UNet.

Run: `python -m bench.bench_conv` or `python cli.py bench --what conv`.
Shapes: N = 8, 3x3 stride 1 pad 1, C = 128 at 32x32, C = 256 at 16x16 and 8x8.
"""

from __future__ import annotations

import sys

import numpy as np

from bidm_ref.nn.conv import Conv2d
from bidm_ref.runtime import configure

from .timing import format_table, time_call

CIFAR10_CONV_SHAPES = [(8, 128, 32), (8, 256, 16), (8, 256, 8)]


def bench_conv(repeats: int = 5, shapes: list[tuple[int, int, int]] = CIFAR10_CONV_SHAPES) -> list[dict]:
    """One forward row and one backward row per (N, C, HW) shape."""
    rng = np.random.default_rng(0)
    results = []
    for N, C, HW in shapes:
        layer = Conv2d(C, C, 3, 1, 1, rng=rng)
        x = rng.standard_normal((N, C, HW, HW)).astype(np.float32)
        y, cache = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        shape = f"N{N} C{C} {HW}x{HW} k3"
        row = time_call(lambda: layer.forward(x), repeats)
        results.append({"name": "conv2d_forward", "shape": shape, "impl": "float32 conv2d", **row})
        row = time_call(lambda: layer.backward(dy, cache), repeats)
        results.append({"name": "conv2d_backward", "shape": shape, "impl": "float32 conv2d", **row})
    return results


if __name__ == "__main__":
    configure()
    print(format_table(bench_conv(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
