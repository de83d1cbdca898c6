"""Run a package Module on a golden case's params and inputs: load float64 params, forward, backward.

Dimensions: as the module's (x [N, C, H, W] for most); dout has the forward output's shape.

    load_params(module, params)      cast the module to float64, copy the case's params in by dotted name
    upstream(rng, module, *args)     a random dout of the module's output shape (one forward to learn it)
    forward_backward(...)            y, cache = forward(*args); d = backward(dout, cache) -> Result with
                                     outputs {"y"}, grads {input name: d input, param name: d param}
Modules are built with INIT_SEED; their init values are overwritten by the case's params.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..nn.module import Module
from .format import Arrays, Expected, GoldenError
from .registry import Result, close

INIT_SEED = 0


def init_rng() -> np.random.Generator:
    """The Generator modules are constructed with (their init is overwritten by the case's params)."""
    return np.random.default_rng(INIT_SEED)


def load_params(module: Module, params: Arrays, optional: Iterable[str] = (), prefix: str = "") -> Module:
    """Cast `module` to float64 and copy in params[prefix + name] for each of its parameters; zero its grads.

    `optional` names may be absent from the case (a binary layer's FP-mode `bias`); any other
    missing or unknown name is a case that does not fit the module.
    """
    module.astype(np.float64)
    own = module.state_dict()
    given = {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}
    missing = sorted(set(own) - set(given) - set(optional))
    unknown = sorted(set(given) - set(own))
    if missing or unknown:
        raise GoldenError(f"golden params do not fit {type(module).__name__}: missing {missing[:3]}, "
                          f"unknown {unknown[:3]}")
    for name, value in given.items():
        own[name][...] = value
    module.zero_grad()
    return module


def upstream(rng: np.random.Generator, module: Module, *args: np.ndarray) -> np.ndarray:
    """A N(0, 1) float32-representable dout of the shape of module.forward(*args)'s output."""
    y, _ = module.forward(*args)
    return np.asarray(rng.standard_normal(y.shape), dtype=np.float32).astype(np.float64)


def forward_backward(
    module: Module,
    params: Arrays,
    inputs: Arrays,
    args: tuple[str, ...],
    wrt: tuple[str, ...],
    expect: Callable[[np.ndarray], Expected] = close,
    optional: Iterable[str] = (),
) -> Result:
    """Load params, run forward on inputs[args] and backward on inputs["dout"]; gradients of `wrt` and params."""
    load_params(module, params, optional)
    y, cache = module.forward(*(inputs[name] for name in args))
    d = module.backward(inputs["dout"], cache)
    d = d if isinstance(d, tuple) else (d,)
    grads = {name: expect(g) for name, g in zip(wrt, d, strict=True)}
    grads.update({name: expect(g) for name, g in module.named_grads() if name in params})
    return Result(outputs={"y": expect(y)}, grads=grads)
