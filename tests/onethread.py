"""A call on one Numba thread, for tests that compare its bytes with those of the default thread count."""

from __future__ import annotations

from collections.abc import Callable

import numba


def on_one_thread(fn: Callable, *args):
    """fn(*args) with numba.set_num_threads(1), the thread count restored afterwards."""
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        return fn(*args)
    finally:
        numba.set_num_threads(threads)
