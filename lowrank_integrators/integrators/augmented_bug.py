r"""Rank-adaptive (augmented) basis-update & Galerkin integrator.

Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247.

One step from ``Y0 = U0 S0 V0^H`` (rank r) at ``t0`` to ``t1 = t0 + h`` (rank ``r1 <= 2r``):

1. K-step as in BUG, giving ``K1``;  ``U_hat = orth([K1, U0])`` (``min(m, 2r)`` columns),
   ``M_hat = U_hat^H U0``.
2. L-step as in BUG (in parallel), giving ``L1``;  ``V_hat = orth([L1, V0])``,
   ``N_hat = V_hat^H V0``.
3. S-step  ``S' = U_hat^H F(t, U_hat S V_hat^H) V_hat``,  ``S(t0) = M_hat S0 N_hat^H``.
   Because ``range(U0)`` lies in ``range(U_hat)`` (and likewise for V) the start
   ``U_hat S(t0) V_hat^H = Y0`` is exact.
4. Truncate ``(U_hat, S_hat1, V_hat)`` with the chosen rule.

With a tolerance rule the error bound is ``c0 delta + c1 eps + c2 h + c3 n theta``: a fixed
absolute ``theta`` makes the error grow like ``T theta / h`` as ``h`` shrinks; scale it with
``h`` (``Tolerance(theta, scale_with_h=2)`` keeps first order). Up to the truncation
tolerance the method conserves norm and energy when the ODE does and keeps the objective of
gradient flows decreasing.
"""

from __future__ import annotations

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..problems import MatrixODE
from .base import AdaptiveIntegrator, KStep, Ledger, LStep, SStep, State, StepInfo

__all__ = ["AugmentedBUG"]


class AugmentedBUG(AdaptiveIntegrator):
    """Rank-adaptive BUG integrator (Ceruti-Kusch-Lubich 2022).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V``,
    ``F^H U`` and ``U^H F V``; two thin QRs of ``2r`` columns; one SVD of the
    ``2r x 2r`` core.

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank r; ``Tolerance(theta, ...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    references = (
        "Ceruti, Kusch, Lubich 2022, A rank-adaptive robust integrator for dynamical low-rank "
        "approximation, BIT 62:1149-1174, arXiv:2104.05247",
    )

    def step(self, problem: MatrixODE, state: State, t: float, h: float) -> tuple[State, StepInfo]:
        U0, S0, V0 = state.Y
        bk.namespace(U0, S0, V0)
        led = Ledger(problem, rank_before=state.Y.rank)
        t1 = t + h

        # K1 and L1 are consumed by their QR at once: tall temporaries are not kept.
        K1 = self.substep(KStep(led, V0), t, t1, self.start(U0, S0))
        U_hat = led.orth_blocks(K1, U0)
        M_hat = bk.adjoint(U_hat) @ U0
        del K1

        L1 = self.substep(LStep(led, U0), t, t1, self.start(V0, bk.adjoint(S0)))
        V_hat = led.orth_blocks(L1, V0)
        N_hat = bk.adjoint(V_hat) @ V0
        del L1

        S_hat = self.substep(SStep(led, U_hat, V_hat), t, t1, M_hat @ S0 @ bk.adjoint(N_hat))

        P, S1, Q = led.truncate_core(self.truncation, S_hat, h)
        U1 = U_hat @ P
        del U_hat  # before V_hat Q exists: one tall array fewer at the end of the step
        Y1 = LowRankMatrix(U1, S1, V_hat @ Q, check=False)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)
