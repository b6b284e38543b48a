r"""Diagnostics of low-rank states and solutions.

* :func:`orthonormality_defect` -- ``||X^H X - I||_F`` of a factor.
* :func:`normal_component` -- ``||(I - P(Y)) F(t, Y)||_F``, the modelling error ``eps`` of
  the robust error bounds, for small problems (it forms ``F(t, Y)`` densely).
* :func:`tangent_projection` -- ``P(Y) Z = U U^H Z + Z V V^H - U U^H Z V V^H`` (Koch-Lubich 2007).
* :func:`error_along` -- ``||Y(t_k) - A(t_k)||_F`` along a solution against a reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend as bk
from .factors import LowRankMatrix

__all__ = ["error_along", "normal_component", "orthonormality_defect", "tangent_projection"]


def orthonormality_defect(X: Any) -> float:
    """``||X^H X - I||_F`` for a matrix ``X`` with (supposedly) orthonormal columns."""
    xp = bk.namespace(X)
    k = int(X.shape[1])
    return float(xp.linalg.matrix_norm(bk.adjoint(X) @ X - bk.eye_like(X, k)))


def tangent_projection(Y: LowRankMatrix, Z: Any) -> Any:
    """``P(Y) Z`` for a dense ``Z`` (Koch-Lubich 2007): the orthogonal projection onto the
    tangent space of the rank-r manifold at ``Y`` (``U``, ``V`` must be orthonormal)."""
    U, _, V = Y
    UhZ = bk.adjoint(U) @ Z
    ZV = Z @ V
    return U @ UhZ + ZV @ bk.adjoint(V) - U @ (UhZ @ V) @ bk.adjoint(V)


def normal_component(problem: Any, t: float, Y: LowRankMatrix) -> float:
    """``||(I - P(Y)) F(t, Y)||_F``: zero for tangent fields such as ``A Y + Y B``.

    Forms ``F(t, Y)`` densely through ``problem.evaluate_dense``: small problems only.
    """
    F = problem.evaluate_dense(t, Y)
    xp = bk.namespace(F)
    return float(xp.linalg.matrix_norm(F - tangent_projection(Y, F)))


def error_along(states: list[Any], times: Any, reference: Callable[[float], Any]) -> np.ndarray:
    """Frobenius errors ``||Y_k - reference(t_k)||`` along a solution.

    Parameters
    ----------
    states : list of LowRankMatrix (or anything with ``to_dense()``)
        E.g. ``sol.states`` of a run with ``save_states=True``.
    times : array
        The times of the states (``sol.t``).
    reference : callable
        ``reference(t)`` -> dense array of the same shape.
    """
    if len(states) != len(times):
        raise ValueError(f"got {len(states)} states but {len(times)} times")
    errs = []
    for Y, t in zip(states, times, strict=True):
        D = Y.to_dense() - reference(float(t))
        xp = bk.namespace(D)
        errs.append(float(xp.sqrt(xp.sum(xp.abs(D) ** 2))))
    return np.asarray(errs)
