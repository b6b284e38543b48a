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

from typing import Any

from .. import _backend as bk
from ..factors import LowRankMatrix
from .base import Integrator, KStep, Ledger, LStep, Parallel, SStep, State, StepGenerator

__all__ = ["BUG"]


class BUG(Integrator):
    """Fixed-rank basis-update & Galerkin integrator (Ceruti-Lubich 2022).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V``,
    ``F^H U`` and ``U^H F V``; two thin QRs of r columns; no SVD. With Euler substeps two
    evaluation points (``Y0`` for the K- and L-steps, ``U1 M S0 N^H V1^H`` for the S-step):
    two forward/backward passes per training step.

    With RK4 substeps on NumPy arrays the integrator keeps two tall work arrays (``n x r``)
    between steps (see :class:`~lowrank_integrators.substeps.Workspace`), which its next
    step's substeps reuse: the peak memory of a step is unchanged, and fresh memory (page
    faults at ``n ~ 1e6``) is saved.

    Parameters
    ----------
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    rank_adaptive = False
    exact_data = True
    norm = "drift"
    passes_per_step = 2
    references = (
        "Ceruti, Lubich 2022, An unconventional robust integrator for dynamical low-rank "
        "approximation, BIT 62:23-44, arXiv:2010.02022",
    )

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        U0, S0, V0 = Y0
        led = Ledger(rank_before=Y0.rank)
        t1 = t + h

        # K1 and L1 are consumed by their QR at once (in place when no one else holds them):
        # tall temporaries are not kept. M = U1^H U0 is formed in the QR's last pass.
        k_step = self.substep_then(
            KStep(led, V0, at=Y0),
            U0,
            S0,
            t,
            t1,
            lambda K1, overwrite: _orth_project(led, K1, U0, overwrite),
        )
        l_step = self.substep_then(
            LStep(led, U0, at=Y0),
            V0,
            bk.adjoint(S0),
            t,
            t1,
            lambda L1, overwrite: _orth_project(led, L1, V0, overwrite),
        )
        (U1, M), (V1, N) = yield Parallel(k_step, l_step)

        S1 = yield from self.substep.solve(SStep(led, U1, V1), t, t1, M @ S0 @ bk.adjoint(N))

        Y1 = LowRankMatrix(U1, S1, V1, check=False)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)


def _orth_project(led: Ledger, X: Any, W: Any, owned: bool) -> tuple[Any, Any]:
    """``(Q, Q^H W)`` for the thin QR ``X = Q R`` of a substep result (counted as one QR).

    An ``owned`` NumPy ``X`` (no one else holds it, see
    :func:`~lowrank_integrators.substeps.owned_result`) is overwritten by ``Q``, which saves
    a tall array, and ``Q^H W`` is accumulated in the QR's last pass; otherwise ``Q`` is the
    ledger's QR and ``Q^H W`` a product.
    """
    if not owned:
        Q = led.orth(X)
        return Q, bk.adjoint(Q) @ W
    Q, _, M = led.qr_project(X, W, overwrite=True)
    return Q, M
