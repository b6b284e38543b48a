r"""Rank-adaptive (augmented) basis-update & Galerkin integrator.

Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247.

One step from ``Y0 = U0 S0 V0^H`` (rank r) at ``t0`` to ``t1 = t0 + h`` (rank ``r1 <= 2r``):

1. K-step as in BUG, giving ``K1``;  ``U_hat = [U0, Q]`` with ``Q`` orthonormalising ``K1``
   against ``U0`` (``min(m, 2r)`` columns), so ``M_hat = U_hat^H U0 = [I; 0]``.
2. L-step as in BUG (in parallel), giving ``L1``;  ``V_hat = [V0, P]`` likewise,
   ``N_hat = V_hat^H V0 = [I; 0]``.
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
from .augmentation import AugmentedBases
from .base import AdaptiveIntegrator, Ledger, State, StepGenerator

__all__ = ["AugmentedBUG"]


class AugmentedBUG(AdaptiveIntegrator):
    """Rank-adaptive BUG integrator (Ceruti-Kusch-Lubich 2022).

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V``,
    ``F^H U`` and ``U^H F V``; two thin QRs of ``2r`` columns; one SVD of the
    ``2r x 2r`` core. With Euler substeps every product is taken at ``Y0`` (the Galerkin step
    starts from ``U_hat^H Y0 V_hat``, which represents ``Y0``): one forward/backward pass per
    training step (DLRT).

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank r; ``Tolerance(theta, ...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    exact_data = True
    norm = "truncation"
    descent = True
    max_rank_growth = 2.0
    passes_per_step = 1
    second_order_sylvester = True
    references = (
        "Ceruti, Kusch, Lubich 2022, A rank-adaptive robust integrator for dynamical low-rank "
        "approximation, BIT 62:1149-1174, arXiv:2104.05247",
    )

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        U0, S0, V0 = Y0
        bk.namespace(U0, S0, V0)
        led = Ledger(rank_before=Y0.rank)
        t1 = t + h
        hat = AugmentedBases()
        # U_hat = [U0 D, *] and V_hat = [V0 E, *]: the start is D^H S0 E padded with zeros.
        # (on PyTorch the tests of the new bases are read with the singular values of the core)
        S_start, _, _ = yield from hat.augment_by_substeps(
            self, led, Y0, t, t1, keep_spare=True, defer=True
        )
        Y1 = yield from hat.galerkin_and_truncate(
            self.substep, led, self.truncation, t, t1, S_start, h, at=Y0
        )
        return state.with_Y(Y1, t1), led.finish(Y1.rank)
