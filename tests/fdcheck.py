"""Central finite-difference checks of hand-written backwards, in float64.

Directional derivative test: for a random direction v and a fixed random upstream
gradient dy, the scalar L(x) = <dy, f(x)> must satisfy
    (L(x + h v) - L(x - h v)) / (2 h)  ==  <dL/dx, v>
for every input and every parameter of the layer, separately.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def directional_fd(loss: Callable[[], float], array: np.ndarray, direction: np.ndarray, h: float) -> float:
    """Central difference of loss() along `direction`, perturbing `array` in place and restoring it."""
    array += h * direction
    plus = loss()
    array -= 2 * h * direction
    minus = loss()
    array += h * direction
    return (plus - minus) / (2 * h)


def assert_close(numeric: float, analytic: float, what: str, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    assert abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)), (
        f"{what}: finite difference {numeric!r} != backward {analytic!r}"
    )


def check_module(
    module,
    inputs: list[np.ndarray],
    run: Callable[..., tuple],
    rng: np.random.Generator,
    h: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> None:
    """FD-check `module.backward` for every input and parameter.

    `run(*inputs)` returns (y, cache) from module.forward (so callers can bind extra arguments);
    backward's return (an array or a tuple of arrays) lines up with `inputs`. Everything is float64.
    """
    module.astype(np.float64)
    inputs = [np.asarray(x, dtype=np.float64).copy() for x in inputs]
    y, cache = run(*inputs)
    dy = rng.standard_normal(y.shape)
    module.zero_grad()
    dxs = module.backward(dy, cache)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    assert len(dxs) == len(inputs), "backward must return one gradient per input"

    def loss() -> float:
        return float((run(*inputs)[0] * dy).sum())

    targets = [(f"input {i}", x, dx) for i, (x, dx) in enumerate(zip(inputs, dxs))]
    targets += [(f"param {name}", p, g.copy()) for (name, p), (_, g) in zip(module.named_parameters(), module.named_grads())]
    for what, array, grad in targets:
        assert grad.shape == array.shape, f"{what}: gradient shape {grad.shape} != {array.shape}"
        direction = rng.standard_normal(array.shape)
        numeric = directional_fd(loss, array, direction, h)
        assert_close(numeric, float((grad * direction).sum()), what, rtol, atol)
