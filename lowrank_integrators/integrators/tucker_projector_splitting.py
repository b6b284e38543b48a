r"""Projector-splitting integrator for Tucker tensors of fixed multilinear rank.

Lubich, C. (2015). Time integration in the multiconfiguration time-dependent Hartree method
of molecular quantum dynamics. Appl. Math. Res. eXpress 2015, 311-328.
Lubich, C., Vandereycken, B., Walach, A. (2018). Time integration of rank-constrained Tucker
tensors. SIAM J. Numer. Anal. 56, 1273-1290.

One step from ``Y0 = C0 x_1 U_1^0 ... x_d U_d^0`` at ``t0`` to ``t1 = t0 + h``. The modes are
treated in sequence ``i = 1, ..., d``, each with the current core ``C`` and the current factors
(already updated for ``j < i``), every substep over the full interval ``[t0, t1]``:

1. QR  ``Mat_i(C)^H = Q_i S_i^H``;  ``V_i = (kron_{j != i} conj(U_j)) Q_i`` so that
   ``Mat_i(Y) = U_i S_i V_i^H``.
2. K-step  ``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``, ``K_i(t0) = U_i^0 S_i``;
   QR ``K_i(t1) = U_i^1 S_hat_i``.
3. Backward S-step  ``S' = -U_i^{1H} Mat_i(F(t, Ten_i(U_i^1 S V_i^H))) V_i``,
   ``S(t0) = S_hat_i``, giving ``S_tilde_i``.
4. ``C <- Ten_i(S_tilde_i Q_i^H)``.

Finally the core step  ``C' = F(t, C x_j U_j^1) x_j U_j^{1H}`` from the last ``C``, giving ``C1``.

This is the Lie-Trotter splitting of the tangent projection into ``2d + 1`` subflows: first
order, robust to small singular values of the core unfoldings, and exact (with exact
substeps) for every ``h`` on fields ``F(Y) = sum_k Y x_k A_k``, which are tangent to the
manifold. For ``d = 2`` and equal ranks it reduces to the matrix KSL scheme.
"""

from __future__ import annotations

from typing import Any

from ..protocol import StepGenerator
from ..tucker import TuckerTensor, fold, matrix_adjoint
from .tucker_steps import (
    ModeKStep,
    ModeSStep,
    TuckerIntegrator,
    TuckerLedger,
    TuckerState,
    core_step,
    mode_matrix_form,
)

__all__ = ["TuckerProjectorSplitting"]


class TuckerProjectorSplitting(TuckerIntegrator):
    """Tucker projector-splitting integrator (Lubich 2015; Lubich-Vandereycken-Walach 2018).

    Fixed multilinear rank. Costs per step with ``RK4(steps=s)`` substeps: ``4s`` K-step
    products per mode, ``4s`` fully projected products per mode (backward S-steps) plus ``4s``
    for the core step; ``2d`` thin QRs (``d`` of the core unfoldings, ``d`` of the ``K_i``);
    no SVD.

    Parameters
    ----------
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    rank_adaptive = False
    exact_tangent = True
    exact_data = True
    norm = "exact"
    references = (
        "Lubich 2015, Time integration in the multiconfiguration time-dependent Hartree method "
        "of molecular quantum dynamics, Appl. Math. Res. eXpress 2015:311-328",
        "Lubich, Vandereycken, Walach 2018, Time integration of rank-constrained Tucker "
        "tensors, SIAM J. Numer. Anal. 56:1273-1290",
    )

    def step_requests(self, state: TuckerState, t: float, h: float) -> StepGenerator:
        C, factors0 = state.Y
        factors: list[Any] = list(factors0)
        ranks = state.Y.ranks  # fixed: every U_i^1 has the columns of U_i^0
        led = TuckerLedger(ranks)
        t1 = t + h

        for i in range(len(factors)):
            S_i, Q_i = mode_matrix_form(led, C, i)
            K0 = self.start(factors[i], S_i)
            K1 = yield from self.substep.solve(ModeKStep(led, factors, Q_i, i), t, t1, K0)
            U1, S_hat = led.qr(K1)
            factors[i] = U1
            S_tilde = yield from self.substep.solve(ModeSStep(led, factors, Q_i, i), t, t1, S_hat)
            C = fold(S_tilde @ matrix_adjoint(Q_i), i, ranks)

        C1 = yield from core_step(self.substep, led, factors, t, t1, C)
        Y1 = TuckerTensor(C1, factors, check=False)
        return state.with_Y(Y1, t1), led.finish(ranks)
