"""How a port's array is compared with a golden dataset: the four compare modes.

Dimensions: a (the port's array) and b (the golden one) have the same shape, any; M = b.size.

    exact       a == b elementwise (same dtype kind; -0.0 == 0.0)
    allclose    |a - b| <= atol + rtol |b| elementwise
    nmse        sum (a - b)^2 <= rtol sum b^2 + atol^2 M          (normalised mean squared error <= rtol)
    sign_agree  the fraction of elements with (a >= 0) != (b >= 0) is <= rtol

`mismatch` returns None when a passes, else one line with the worst element (index, got, expected).
"""

from __future__ import annotations

import numpy as np

from .format import Expected


def describe_at(a: np.ndarray, b: np.ndarray, flat: int) -> str:
    """'at [i, j, ...]: got a, expected b' for the flat index `flat`."""
    index = list(np.unravel_index(flat, b.shape)) if b.ndim else []
    return f"at {[int(i) for i in index]}: got {a.flat[flat].item()!r}, expected {b.flat[flat].item()!r}"


def mismatch(actual: np.ndarray, expected: Expected) -> str | None:
    """None if `actual` passes `expected`'s compare mode, else a one-line description of the failure."""
    a, b = np.asarray(actual), expected.array
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != expected {list(b.shape)}"
    if a.size == 0:
        return None
    if expected.compare == "exact":
        if a.dtype.kind != b.dtype.kind:
            return f"dtype {a.dtype} is not of the kind of {b.dtype} (exact compare)"
        bad = np.flatnonzero(a != b)                                              # [bad]
        if bad.size:
            return f"exact: {bad.size} of {b.size} elements differ; first {describe_at(a, b, bad[0])}"
        return None
    a64, b64 = a.astype(np.float64), b.astype(np.float64)                         # [...]
    if expected.compare == "sign_agree":
        bad = np.flatnonzero((a64 >= 0) != (b64 >= 0))                            # [bad]
        if bad.size > expected.rtol * b.size:
            return (f"sign_agree: {bad.size} of {b.size} signs differ (allowed {expected.rtol:g}); "
                    f"first {describe_at(a, b, bad[0])}")
        return None
    err = np.abs(a64 - b64)                                                       # [...]
    err = np.where(np.isnan(err), np.inf, err)                                    # [...] NaN never passes
    if expected.compare == "allclose":
        tolerance = expected.atol + expected.rtol * np.abs(b64)                   # [...]
        bad = np.flatnonzero(~(err <= tolerance))                                 # [bad]
        if bad.size:
            worst = int(np.argmax(err / np.maximum(tolerance, np.finfo(np.float64).tiny)))
            return (f"allclose (rtol {expected.rtol:g}, atol {expected.atol:g}): {bad.size} of {b.size} elements "
                    f"outside; worst {describe_at(a, b, worst)}, |diff| {err.flat[worst]:.3g}")
        return None
    squared = float(np.sum(err**2))
    reference = float(np.sum(b64**2))
    if not squared <= expected.rtol * reference + expected.atol**2 * b.size:
        nmse = squared / reference if reference > 0 else np.inf
        return (f"nmse {nmse:.3g} > rtol {expected.rtol:g} (atol {expected.atol:g}); "
                f"largest error {describe_at(a, b, int(np.argmax(err)))}")
    return None
