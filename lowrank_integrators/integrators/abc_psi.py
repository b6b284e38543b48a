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

import sys

from .. import _backend as bk
from ..substeps import owned_result
from .augmentation import AugmentedBases, augment, embed_core
from .base import AdaptiveIntegrator, KStep, Ledger, LStep, State, StepGenerator

__all__ = ["AugmentedBackwardCorrectedPSI"]


class AugmentedBackwardCorrectedPSI(AdaptiveIntegrator):
    """Augmented backward-corrected projector splitting (Kusch-Schotthöfer-Walter 2025).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V`` and
    ``F^H U``, none of ``U^H F V``; two QRs (``[K1, U0]`` and ``L1``, ``2r`` columns each);
    one SVD of the ``2r x 2r`` core. With Euler substeps both products are taken at ``Y0``
    (the L-step starts from ``U_hat S_tilde V0^H = Y0``): one forward/backward pass per
    training step, although the L-step needs the K-step's basis and runs after it.

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank r; ``Tolerance(theta, ...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    descent = True
    max_rank_growth = 2.0
    passes_per_step = 1
    second_order_sylvester = True
    references = (
        "Kusch, Schotthöfer, Walter 2025, An augmented backward-corrected projector splitting "
        "integrator for dynamical low-rank training, arXiv:2502.03006",
    )

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        U0, S0, V0 = Y0
        bk.namespace(U0, S0, V0)
        led = Ledger(rank_before=Y0.rank)
        t1 = t + h

        K1 = yield from self.substep.solve(KStep(led, V0, at=Y0), t, t1, self.start(U0, S0))
        refs = sys.getrefcount(K1)  # before any call holds it
        U_hat, m_U = augment(led, K1, U0, overwrite=owned_result(K1, refs))
        hat = AugmentedBases(U_hat)
        del U_hat
        del K1  # m x r: not kept through the L-step

        # (U_hat^H U0) S0 with U_hat^H U0 = [diag(m_U); 0]: no product over tall arrays
        ones = bk.namespace(S0).ones(int(S0.shape[1]), dtype=S0.dtype, device=bk.device(S0))
        S_tilde = embed_core(S0, int(hat.U.shape[1]), int(S0.shape[1]), m_U, ones)

        L0 = self.start(V0, bk.adjoint(S_tilde))
        L1 = yield from self.substep.solve(LStep(led, hat.U, at=Y0), t, t1, L0)
        refs = sys.getrefcount(L1)
        hat.V, R = led.qr(L1, overwrite=owned_result(L1, refs))
        del L1

        Y1 = hat.truncate(led, self.truncation, bk.adjoint(R), h)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)
