"""Helpers shared by the reference problems (not part of any single problem's setup)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from lowrank_integrators.verify.methods import MethodSpec, substep_for

__all__ = ["Memo", "builder", "fixed_rank_builder", "orthonormal"]


class Memo:
    """Memoise a reference ``t -> array`` (studies ask for the same final time many times)."""

    def __init__(self, func: Callable[[float], Any]) -> None:
        self._cached = lru_cache(maxsize=16)(func)

    def __call__(self, t: float) -> Any:
        return self._cached(round(float(t), 12))


def orthonormal(g: np.random.Generator, m: int, k: int, complex_: bool = False) -> np.ndarray:
    """Q factor of a Gaussian ``m x k`` matrix drawn from ``g``."""
    X = g.standard_normal((m, k))
    if complex_:
        X = X + 1j * g.standard_normal((m, k))
    return np.linalg.qr(X)[0]


def builder(spec: MethodSpec, truncation: Any = None, max_internal_step: float = 0.01):
    """Factory ``h -> integrator`` with RK4 substeps refined with ``h``."""

    def make(h: float) -> Any:
        return spec.make(substep_for(h, max_internal_step), truncation)

    make.__name__ = spec.name
    return make


def fixed_rank_builder(spec: MethodSpec, rank: int, max_internal_step: float = 0.01):
    """Like :func:`builder`, truncating rank-adaptive methods back to ``rank``."""
    from lowrank_integrators import FixedRank

    return builder(spec, FixedRank(rank) if spec.rank_adaptive else None, max_internal_step)
