"""The golden case registry: cases (what to draw), ops (how to compute) and kernels (what else must agree).

Dimensions: none (registries of functions; arrays pass through unchanged).

    @case("nn", "conv2d__k3_s2_p1")          rng -> Draw: params, inputs, hyperparameters, description
    @op("conv2d")                            (params, inputs, hyper) -> Result: outputs, grads, cache
                                             (the float64 NumPy path; used to generate AND to test)
    @kernel("conv_acc")                      Golden -> {"outputs/acc": array}: another implementation
                                             (a Numba kernel, a NumPy twin) checked against the same file
A case id is "<group>/<op>__<variant>"; its op is the name before "__". Adding a case is one function;
the generator, `--check` and tests/test_golden.py all iterate CASES. The seed of a case is the CRC-32 of
its id unless given, so it does not move when other cases are added.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .format import Arrays, Expected, Golden, op_of

EXACT = "exact"
FLOAT_RTOL = 1e-9          # allclose for layer-sized float64 results (summation order only)
FLOAT_ATOL = 1e-12         # times max(max |b|, 1): elements that cancel to ~0 (values are O(1) by construction)
NMSE_RTOL = 1e-16          # nmse for end-to-end results (relative RMS error 1e-8)
NMSE_ATOL = 1e-12          # RMS floor: gradients that are 0 in exact arithmetic hold rounding noise


@dataclass(frozen=True)
class Draw:
    """What a case function returns: drawn params and inputs, the op's hyperparameters, a description.

    arg_order: the forward arguments in call order (default: every input but `dout`)."""

    params: Arrays
    inputs: Arrays
    hyper: dict[str, Any]
    description: str
    arg_order: tuple[str, ...] = ()

    def args(self) -> tuple[str, ...]:
        return self.arg_order or tuple(name for name in self.inputs if name != "dout")


@dataclass(frozen=True)
class Result:
    """What an op returns: the compared datasets of /outputs, /grads and /cache."""

    outputs: dict[str, Expected]
    grads: dict[str, Expected] = field(default_factory=dict)
    cache: dict[str, Expected] = field(default_factory=dict)


Op = Callable[[Arrays, Arrays, dict[str, Any]], Result]
Kernel = Callable[[Golden], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    key: str                                  # "<group>/<op>__<variant>"
    seed: int
    draw: Callable[[np.random.Generator], Draw]

    @property
    def op(self) -> str:
        return op_of(self.key)


CASES: dict[str, Case] = {}
OPS: dict[str, Op] = {}
KERNELS: dict[str, dict[str, Kernel]] = {}


def case(group: str, name: str, seed: int | None = None) -> Callable:
    """Register a case function rng -> Draw under "<group>/<name>" (name = "<op>__<variant>")."""
    key = f"{group}/{name}"

    def register(draw: Callable[[np.random.Generator], Draw]) -> Callable[[np.random.Generator], Draw]:
        if key in CASES or "__" not in name:
            raise ValueError(f"golden case {key!r} is registered twice or its name is not <op>__<variant>")
        CASES[key] = Case(key, zlib.crc32(key.encode()) if seed is None else seed, draw)
        return draw

    return register


def op(name: str) -> Callable[[Op], Op]:
    """Register the float64 reference computation of an op."""
    def register(run: Op) -> Op:
        OPS[name] = run
        return run

    return register


def kernel(op_name: str) -> Callable[[Kernel], Kernel]:
    """Register another implementation (by its function name) checked against every file of `op_name`."""
    def register(run: Kernel) -> Kernel:
        KERNELS.setdefault(op_name, {})[run.__name__] = run
        return run

    return register


def exact(array: np.ndarray) -> Expected:
    return Expected(np.asarray(array), EXACT)


def close(array: np.ndarray, rtol: float = FLOAT_RTOL, atol: float = FLOAT_ATOL) -> Expected:
    """allclose with atol scaled by max(largest |element|, 1): elements that cancel to ~0, and datasets that
    are 0 in exact arithmetic (the attention k bias's gradient: softmax ignores it), hold rounding noise."""
    array = np.asarray(array, dtype=np.float64)
    scale = float(np.max(np.abs(array))) if array.size else 0.0
    return Expected(array, "allclose", rtol, atol * max(scale, 1.0))


def nmse(array: np.ndarray, rtol: float = NMSE_RTOL, atol: float = NMSE_ATOL) -> Expected:
    return Expected(np.asarray(array, dtype=np.float64), "nmse", rtol, atol)


def signs(array: np.ndarray) -> Expected:
    """sign_agree with no disagreement allowed: for +-1 values whose magnitude is not the point."""
    return Expected(np.asarray(array, dtype=np.float64), "sign_agree", 0.0, 0.0)
