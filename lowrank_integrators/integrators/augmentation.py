r"""The block the rank-adaptive integrators share: augment -> Galerkin -> truncate -> release.

Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247 (augmented bases, Galerkin step
in them, truncation).

The augmented BUG, the midpoint BUG, abc-PSI and the parallel BUG each build bases ``U_hat``
(``m x k``) and ``V_hat`` (``n x l``) that contain the old ones, compute a core ``S_hat`` in
them (a Galerkin substep, a QR, or an assembled block matrix) and truncate
``U_hat S_hat V_hat^H``.

Memory invariant: at ``n ~ 1e6`` the number of tall arrays alive at the end of a step decides
whether it fits. :class:`AugmentedBases` owns the two bases; the step keeps no other reference
to them, and :meth:`AugmentedBases.form` releases ``U_hat`` once ``U_hat P`` exists and
before ``V_hat Q`` is formed. ``tests/test_memory.py`` counts the tall arrays of every method.
"""

from __future__ import annotations

from typing import Any

from ..factors import LowRankMatrix
from ..protocol import StepGenerator
from ..substeps import SubstepSolver
from ..truncation import TruncationRule
from .base import FactorisationLedger, Ledger, SStep

__all__ = ["AugmentedBases", "augment"]


def augment(led: FactorisationLedger, X: Any, U0: Any) -> Any:
    """``orth([X, U0])``: ``min(rows, cols)`` orthonormal columns whose range contains ``U0``'s."""
    return led.orth_blocks(X, U0)


class AugmentedBases:
    """The augmented bases of one step, from augmentation to the truncated result.

    Parameters
    ----------
    U, V : array, optional
        ``U_hat`` and ``V_hat``; may be set later (``bases.V = ...``).
    """

    def __init__(self, U: Any = None, V: Any = None) -> None:
        self.U = U
        self.V = V

    def galerkin(
        self,
        substep: SubstepSolver,
        led: Ledger,
        t0: float,
        t1: float,
        S_start: Any,
        at: LowRankMatrix | None = None,
    ) -> StepGenerator:
        """The Galerkin substep ``S' = U_hat^H F(t, U_hat S V_hat^H) V_hat`` from ``S_start``.

        ``at`` declares the point ``U_hat S_start V_hat^H`` (``Y0`` when the bases contain the
        old ones and ``S_start = U_hat^H Y0 V_hat``).
        """
        return (yield from substep.solve(SStep(led, self.U, self.V, at=at), t0, t1, S_start))

    def truncate(self, led: Ledger, rule: TruncationRule, S_hat: Any, h: float) -> LowRankMatrix:
        """The rank decision on ``S_hat`` (one SVD, recorded) and the truncated matrix."""
        return self.form(*led.truncate_core(rule, S_hat, h))

    def form(self, P: Any, S1: Any, Q: Any) -> LowRankMatrix:
        """``(U_hat P) S1 (V_hat Q)^H``, releasing ``U_hat`` before ``V_hat Q`` exists."""
        U1 = self.U @ P
        self.U = None
        V1 = self.V @ Q
        self.V = None
        return LowRankMatrix(U1, S1, V1, check=False)
