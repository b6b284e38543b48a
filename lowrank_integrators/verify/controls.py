r"""Negative controls: methods that are *supposed* to fail some checks.

A study has teeth only if a method that lacks the property under test fails it. The classical
way of integrating dynamical low-rank approximation -- the Koch-Lubich factor ODEs solved by
an explicit Runge-Kutta method -- is not robust to small singular values: the ODEs contain
``S^{-1}``, their Lipschitz constant grows like ``1 / sigma_min(S)`` and an explicit method
needs ``h < sigma_min``.

Koch, O., Lubich, C. (2007). Dynamical low-rank approximation. SIAM J. Matrix Anal. Appl.
29(2), 434-454.
"""

from __future__ import annotations

from typing import Any

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..integrators.base import Integrator, Ledger, State, StepGenerator

__all__ = ["FactorODERK4"]


class FactorODERK4(Integrator):
    r"""One classical RK4 step per step on the Koch-Lubich factor ODEs (non-robust control).

    ``S' = U^H F V``, ``U' = (I - U U^H) F V S^{-1}``, ``V' = (I - V V^H) F^H U S^{-H}``
    with ``F = F(t, U S V^H)``. Fourth order while ``h << sigma_min(S)``; it blows up or
    loses all accuracy when ``S`` is ill-conditioned. Use it only as a negative control.
    """

    order = 4
    passes_per_step = 4
    rank_adaptive = False
    references = (
        "Koch, Lubich 2007, Dynamical low-rank approximation, SIAM J. Matrix Anal. Appl. "
        "29:434-454",
    )

    def __init__(self) -> None:
        super().__init__(None)

    def _rhs(self, led: Ledger, t: float, U: Any, S: Any, V: Any) -> StepGenerator:
        xp = bk.namespace(U, S, V)
        Y = LowRankMatrix(U, S, V, check=False)
        FV = yield led.right(t, Y, V)
        FhU = yield led.left(t, Y, U, at=Y)
        dS = bk.adjoint(U) @ FV
        X = FV - U @ dS
        dU = bk.adjoint(xp.linalg.solve(bk.adjoint(S), bk.adjoint(X)))
        Z = FhU - V @ (bk.adjoint(V) @ FhU)
        dV = bk.adjoint(xp.linalg.solve(S, bk.adjoint(Z)))
        return dU, dS, dV

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        U, S, V = state.Y
        led = Ledger(rank_before=state.Y.rank)
        X = (U, S, V)
        k1 = yield from self._rhs(led, t, *X)
        k2 = yield from self._rhs(led, t + h / 2, *_axpy(X, h / 2, k1))
        k3 = yield from self._rhs(led, t + h / 2, *_axpy(X, h / 2, k2))
        k4 = yield from self._rhs(led, t + h, *_axpy(X, h, k3))
        new = [
            x + (h / 6) * (a + 2 * b + 2 * c + d)
            for x, a, b, c, d in zip(X, k1, k2, k3, k4, strict=True)
        ]
        Y1 = LowRankMatrix(*new, check=False)
        return state.with_Y(Y1, t + h), led.finish(Y1.rank)

    def __repr__(self) -> str:
        return "FactorODERK4()"


def _axpy(X: tuple[Any, ...], a: float, K: tuple[Any, ...]) -> list[Any]:
    return [x + a * k for x, k in zip(X, K, strict=True)]
