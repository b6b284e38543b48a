r"""Augmented backward-corrected projector-splitting integrator (abc-PSI).

Kusch, J., Schotthöfer, S., Walter, A. (2025). An augmented backward-corrected projector
splitting integrator for dynamical low-rank training. arXiv:2502.03006.

One step from ``Y0 = U0 S0 V0^H`` (rank r) at ``t0`` to ``t1 = t0 + h`` (rank ``<= 2r``):

1. K-step  ``K' = F(t, K V0^H) V0``, ``K(t0) = U0 S0``, giving ``K1``;
   ``U_hat = orth([K1, U0])`` (``min(m, 2r)`` columns), the only augmentation QR.
2. Backward-corrected S-step, **without evaluating F**: ``S_tilde = U_hat^H U0 S0``
   (``2r x r``). It replaces the backward S-step of projector splitting: one Euler step of
   that substep with ``F`` frozen at ``Y0`` gives exactly this. Since
   ``U_hat U_hat^H U0 = U0``, ``U_hat S_tilde V0^H = Y0`` and nothing is lost.
3. L-step in the augmented left basis: ``L' = F(t, U_hat L^H)^H U_hat``,
   ``L(t0) = V0 S_tilde^H`` (``n x 2r``), giving ``L1``.
4. QR ``L1 = V_hat R``; ``S_hat = R^H``.
5. Truncate ``(U_hat, S_hat, V_hat)``.

Equivalently ``U_hat L1^H`` solves the one-sided Galerkin ODE ``Y' = U_hat U_hat^H F(t, Y)``
from ``Y0``; with one explicit Euler step per substep the step before truncation is
``Y0 + h P_U_hat F(t0, Y0)``. For a gradient flow ``F = -grad L`` the descent direction is at
least as large as the tangent one, ``||P_U_hat grad L|| >= ||P(Y0) grad L||``, which gives the
descent guarantee of the paper. The method is first order in general; on fields of
Sylvester type, truncated back to fixed rank, it behaves like a second-order method.
"""

from __future__ import annotations

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..problems import MatrixODE
from .base import AdaptiveIntegrator, KStep, Ledger, LStep, State, StepInfo

__all__ = ["AugmentedBackwardCorrectedPSI"]


class AugmentedBackwardCorrectedPSI(AdaptiveIntegrator):
    """Augmented backward-corrected projector splitting (Kusch-Schotthöfer-Walter 2025).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V`` and
    ``F^H U``, none of ``U^H F V``; two QRs (``[K1, U0]`` and ``L1``, ``2r`` columns each);
    one SVD of the ``2r x 2r`` core. With Euler substeps both products are taken at ``Y0``
    (one evaluation point), but the L-step needs the K-step's basis, so they run one after
    the other.

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank r; ``Tolerance(theta, ...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    references = (
        "Kusch, Schotthöfer, Walter 2025, An augmented backward-corrected projector splitting "
        "integrator for dynamical low-rank training, arXiv:2502.03006",
    )

    def step(self, problem: MatrixODE, state: State, t: float, h: float) -> tuple[State, StepInfo]:
        U0, S0, V0 = state.Y
        bk.namespace(U0, S0, V0)
        led = Ledger(problem, rank_before=state.Y.rank)
        t1 = t + h

        K1 = self.substep(KStep(led, V0), t, t1, self.start(U0, S0))
        U_hat = led.orth_blocks(K1, U0)
        del K1  # m x r: not kept through the L-step

        S_tilde = (bk.adjoint(U_hat) @ U0) @ S0

        L1 = self.substep(LStep(led, U_hat), t, t1, self.start(V0, bk.adjoint(S_tilde)))
        V_hat, R = led.qr(L1)
        del L1

        P, S1, Q = led.truncate_core(self.truncation, bk.adjoint(R), h)
        U1 = U_hat @ P
        del U_hat  # before V_hat Q exists: one tall array fewer at the end of the step
        Y1 = LowRankMatrix(U1, S1, V_hat @ Q, check=False)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)
