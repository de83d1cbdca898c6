"""Every golden case: importing the case modules registers their cases, ops and kernels (registry.py).

No arrays here. Import a new case module here (CASE_MODULES) and its cases appear in the generator,
`cli.py golden --check` and tests/test_golden.py.
"""

from __future__ import annotations

from . import cases_autoencoder, cases_bidm, cases_binary, cases_model, cases_nn, cases_packed
from .registry import CASES, OPS, Case

CASE_MODULES = (cases_nn, cases_binary, cases_packed, cases_model, cases_bidm, cases_autoencoder)


def all_cases() -> dict[str, Case]:
    """Every registered case by id "<group>/<op>__<variant>", sorted."""
    missing = sorted({case.op for case in CASES.values()} - set(OPS))
    if missing:
        raise ValueError(f"golden cases without an op: {missing}")
    return dict(sorted(CASES.items()))

