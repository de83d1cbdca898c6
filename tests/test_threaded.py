"""nn/threaded.py: one kernel source compiled on every thread and on the calling thread, picked by the work."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.nn.activation import silu_backward_kernel, silu_backward_ref
from bidm_ref.nn.threaded import threaded_kernel


def _cumulative_rows(rows):
    def kernel(x, out):  # pragma: no cover - compiled
        for r in rows(x.shape[0]):
            total = 0.0
            for j in range(x.shape[1]):
                total += x[r, j]
                out[r, j] = total

    return kernel


CUMULATIVE = threaded_kernel(_cumulative_rows, 100)


def test_for_work_picks_the_parallel_compilation_from_the_threshold():
    assert CUMULATIVE.for_work(99) is CUMULATIVE.serial
    assert CUMULATIVE.for_work(100) is CUMULATIVE.parallel is CUMULATIVE.compilations[0]
    assert CUMULATIVE.parallel is not CUMULATIVE.serial


def test_both_compilations_run_the_same_tasks():
    x = np.random.default_rng(0).standard_normal((37, 11))
    outs = [np.full_like(x, np.nan) for _ in CUMULATIVE.compilations]
    for kernel, out in zip(CUMULATIVE.compilations, outs):
        kernel(x, out)
    assert outs[0].tobytes() == outs[1].tobytes()
    np.testing.assert_array_equal(outs[0], np.cumsum(x, axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_backward_compilations_write_the_same_bytes(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(10_007) * 6).astype(dtype)
    s = (1 / (1 + np.exp(-x))).astype(dtype)
    dy = rng.standard_normal(x.size).astype(dtype)
    outs = [np.empty_like(x) for _ in silu_backward_kernel.compilations]
    for kernel, out in zip(silu_backward_kernel.compilations, outs):
        kernel(x, s, dy, out)
    assert outs[0].tobytes() == outs[1].tobytes()
    scale = np.abs(dy) * (s + np.abs(x) * s * (1 - s))                             # magnitude, cancellation aside
    assert np.all(np.abs(outs[0] - silu_backward_ref(x, s, dy)) <= 8 * np.finfo(dtype).eps * scale)
