"""The engine contract: a Module holds params, grads and named children.

Every layer follows one contract (README, "Engine contract"):

    y, cache = layer.forward(x, ...)    # cache holds what backward needs
    dx = layer.backward(dy, cache)      # *adds* into layer.grads, returns dx

Backward accumulates, so a layer used twice (fan-out) sums its gradients; call
`zero_grad()` between optimizer steps. Dotted parameter names are built from the
child names, so a UNet's names equal ermongroup/ddim's PyTorch state_dict keys.

Forward passes inside `with inference():` (sampling; like torch.inference_mode) may leave
out what only the backward reads: a layer then returns a cache its backward refuses, with
the same output bytes (GroupNorm writes neither its normalized input nor its sigmoid:
docs/ENGINE.md, "GroupNorm, SiLU, attention").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_KEEP_CACHES: ContextVar[bool] = ContextVar("keep_caches", default=True)


@contextmanager
def inference() -> Iterator[None]:
    """Forward passes in this block need no backward (module docstring)."""
    token = _KEEP_CACHES.set(False)
    try:
        yield
    finally:
        _KEEP_CACHES.reset(token)


def keeps_caches() -> bool:
    """False inside `inference()`: a layer may leave out what only its backward reads."""
    return _KEEP_CACHES.get()


class Module:
    """Base class: `params`/`grads` dicts of arrays plus ordered named children."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.children: dict[str, Module] = {}

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register a parameter and its zeroed gradient buffer; returns the array."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def add_child(self, name: str, module: Module) -> Module:
        """Register a child module under `name` (becomes part of dotted names)."""
        self.children[name] = module
        return module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield (dotted name, module) for this module and all descendants, depth first."""
        yield prefix.rstrip("."), self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """Yield (dotted name, array) for every parameter, children in insertion order."""
        for name, module in self.named_modules(prefix):
            for pname, value in module.params.items():
                yield (f"{name}.{pname}" if name else pname), value

    def named_grads(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """Yield (dotted name, gradient array), in the order of named_parameters."""
        for name, module in self.named_modules(prefix):
            for pname, value in module.grads.items():
                yield (f"{name}.{pname}" if name else pname), value

    def zero_grad(self) -> None:
        """Set every gradient buffer to zero, in place."""
        for _, grad in self.named_grads():
            grad.fill(0)

    def astype(self, dtype: np.dtype) -> Module:
        """Cast all parameters and gradients to `dtype` in place (float64 for gradient checks)."""
        for _, module in self.named_modules():
            for pname in module.params:
                module.params[pname] = module.params[pname].astype(dtype)
                module.grads[pname] = module.grads[pname].astype(dtype)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """A dict dotted name -> parameter array (the arrays themselves, not copies)."""
        return dict(self.named_parameters())

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters by dotted name, checking names and shapes.

        strict=True refuses missing or unexpected keys; a shape mismatch always raises.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(
                f"state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, value in state.items():
            if name not in own:
                continue
            if own[name].shape != np.shape(value):
                raise ValueError(
                    f"parameter {name}: model has shape {own[name].shape}, state has {np.shape(value)}"
                )
            own[name][...] = value

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(int(p.size) for _, p in self.named_parameters())


class ModuleList(Module):
    """Children named "0", "1", ... as torch.nn.ModuleList (gives ddim's `down.0.block.1...` names)."""

    def __init__(self, modules: list[Module] | tuple[Module, ...] = ()) -> None:
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> Module:
        return self.add_child(str(len(self.children)), module)

    def __getitem__(self, index: int) -> Module:
        return self.children[str(index)]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.children.values())
