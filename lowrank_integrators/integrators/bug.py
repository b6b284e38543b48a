r"""Fixed-rank basis-update & Galerkin (BUG) integrator, the "unconventional" integrator.

Ceruti, G., Lubich, C. (2022). An unconventional robust integrator for dynamical low-rank
approximation. BIT 62(1), 23-44. arXiv:2010.02022.

One step from ``Y0 = U0 S0 V0^H`` at ``t0`` to ``t1 = t0 + h`` (fixed rank r):

1. K-step  ``K' = F(t, K V0^H) V0``, ``K(t0) = U0 S0``;   ``U1 = orth(K(t1))``, ``M = U1^H U0``.
2. L-step  ``L' = F(t, U0 L^H)^H U0``, ``L(t0) = V0 S0^H``; ``V1 = orth(L(t1))``, ``N = V1^H V0``.
   (independent of step 1: the two may run in parallel)
3. S-step  ``S' = U1^H F(t, U1 S V1^H) V1``, ``S(t0) = M S0 N^H``;  ``S1 = S(t1)``.

There is no backward substep. The method is first order and robust to small singular values,
preserves (anti-)symmetry, and is exact for rank-r explicit data. It does not conserve the
norm of Schrodinger-type problems (the Galerkin step starts from a projection).
"""

from __future__ import annotations

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..problems import MatrixODE
from .base import Integrator, KStep, Ledger, LStep, SStep, State, StepInfo

__all__ = ["BUG"]


class BUG(Integrator):
    """Fixed-rank basis-update & Galerkin integrator (Ceruti-Lubich 2022).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V``,
    ``F^H U`` and ``U^H F V``; two thin QRs of r columns; no SVD.

    Parameters
    ----------
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    rank_adaptive = False
    references = (
        "Ceruti, Lubich 2022, An unconventional robust integrator for dynamical low-rank "
        "approximation, BIT 62:23-44, arXiv:2010.02022",
    )

    def step(self, problem: MatrixODE, state: State, t: float, h: float) -> tuple[State, StepInfo]:
        U0, S0, V0 = state.Y
        led = Ledger(problem, rank_before=state.Y.rank)
        t1 = t + h

        # K1 and L1 are consumed by their QR at once: tall temporaries are not kept.
        U1 = led.orth(self.substep(KStep(led, V0), t, t1, self.start(U0, S0)))  # orth(K1)
        M = bk.adjoint(U1) @ U0

        L0 = self.start(V0, bk.adjoint(S0))
        V1 = led.orth(self.substep(LStep(led, U0), t, t1, L0))  # orth(L1)
        N = bk.adjoint(V1) @ V0

        S1 = self.substep(SStep(led, U1, V1), t, t1, M @ S0 @ bk.adjoint(N))

        Y1 = LowRankMatrix(U1, S1, V1, check=False)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)
