r"""Projector-splitting integrator (KSL) and its Strang composition (KSLSK).

Lubich, C., Oseledets, I. V. (2014). A projector-splitting integrator for dynamical
low-rank approximation. BIT 54, 171-188. arXiv:1301.1058.

One Lie-Trotter step from ``Y0 = U0 S0 V0^H`` at ``t0`` to ``t1 = t0 + h`` (fixed rank r):

1. K-step   ``K' = F(t, K V0^H) V0``,            ``K(t0) = U0 S0``;  QR ``K(t1) = U1 S_hat``.
2. S-step   ``S' = -U1^H F(t, U1 S V0^H) V0``,   ``S(t0) = S_hat``;  ``S_tilde = S(t1)``.
   The minus sign makes this the *backward* step; its time still runs from ``t0`` to ``t1``.
3. L-step   ``L' = F(t, U1 L^H)^H U1``,          ``L(t0) = V0 S_tilde^H``;  QR ``L(t1) = V1 S1^H``.

Strang (``order=2``) runs KSL over ``[t0, t0 + h/2]`` and the dual LSK over
``[t0 + h/2, t1]``; the two middle L-steps share ``U1`` and continue one ODE, so they are merged
into a single L-step over ``[t0, t1]`` (three QRs per step instead of four).

With exact substeps the method is exact for every ``h`` on fields ``F(Y) = A Y + Y B`` (a
sharp test of the sign of the S-step) and for rank-r explicit data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..substeps import SubstepSolver
from .base import Integrator, KStep, Ledger, LStep, SStep, State, StepGenerator

__all__ = ["ProjectorSplitting"]


class ProjectorSplitting(Integrator):
    """Projector-splitting integrator: Lie-Trotter KSL (``order=1``) or Strang KSLSK (``order=2``).

    Fixed rank. Robust to small singular values (error bounds independent of them, Kieri,
    Lubich, Walach 2016). Costs per step with ``RK4(steps=s)`` substeps: ``4s`` evaluations
    for each of the three (Strang: five) sequential substeps; 2 thin QRs (Strang: 3). With
    Euler substeps every substep starts at a new point: three forward/backward passes per
    training step (Strang: five).

    With RK4 substeps on NumPy arrays the integrator keeps two tall work arrays between
    steps for its substeps (see :class:`~lowrank_integrators.substeps.Workspace`); the peak
    memory of a step is unchanged.

    Parameters
    ----------
    order : {1, 2}
        1 for Lie-Trotter KSL, 2 for the Strang composition.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    rank_adaptive = False
    exact_tangent = True
    exact_data = True
    norm = "exact"
    passes_per_step = 3
    #: The Strang composition (``order=2``) differs in these attributes.
    variants: ClassVar[dict[int, dict[str, Any]]] = {2: {"order": 2, "passes_per_step": 5}}
    references = (
        "Lubich, Oseledets 2014, A projector-splitting integrator for dynamical low-rank "
        "approximation, BIT 54:171-188, arXiv:1301.1058",
        "Kieri, Lubich, Walach 2016, Discretized dynamical low-rank approximation in the "
        "presence of small singular values, SIAM J. Numer. Anal. 54:1020-1038",
    )

    def __init__(
        self, order: int = 1, substep: SubstepSolver | Callable[..., Any] | None = None
    ) -> None:
        super().__init__(substep)
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"order must be 1 (Lie-Trotter) or 2 (Strang), got {order!r}")
        self._select_variant(order)

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        led = Ledger(rank_before=Y0.rank)
        if self.order == 1:
            U1, S1, V1 = yield from self._ksl(led, Y0, t, t + h)
        else:
            U1, S1, V1 = yield from self._strang(led, Y0, t, h)
        Y1 = LowRankMatrix(U1, S1, V1, check=False)
        return state.with_Y(Y1, t + h), led.finish(Y1.rank)

    def _k_then_backward_s(
        self, led: Ledger, Y0: LowRankMatrix, t0: float, t1: float
    ) -> StepGenerator:
        U0, S0, V0 = Y0
        U1, S_hat = yield from self.substep_then(KStep(led, V0, at=Y0), U0, S0, t0, t1, led.qr)
        S_tilde = yield from self.substep.solve(SStep(led, U1, V0, sign=-1), t0, t1, S_hat)
        return U1, S_tilde

    def _ksl(self, led: Ledger, Y0: LowRankMatrix, t0: float, t1: float) -> StepGenerator:
        V0 = Y0.V
        U1, S_tilde = yield from self._k_then_backward_s(led, Y0, t0, t1)
        L_step = LStep(led, U1)
        V1, R = yield from self.substep_then(L_step, V0, bk.adjoint(S_tilde), t0, t1, led.qr)
        return U1, bk.adjoint(R), V1

    def _strang(self, led: Ledger, Y0: LowRankMatrix, t: float, h: float) -> StepGenerator:
        V0 = Y0.V
        t_half, t1 = t + 0.5 * h, t + h
        # KSL over [t, t + h/2] up to its L-step ...
        U1, S_tilde = yield from self._k_then_backward_s(led, Y0, t, t_half)
        # ... whose L-step merges with the L-step of LSK over [t + h/2, t1].
        L_step = LStep(led, U1)
        V1, R = yield from self.substep_then(L_step, V0, bk.adjoint(S_tilde), t, t1, led.qr)
        # LSK continues: backward S-step with (U1, V1), then the K-step with V1.
        S_tilde2 = yield from self.substep.solve(
            SStep(led, U1, V1, sign=-1), t_half, t1, bk.adjoint(R)
        )
        U2, S1 = yield from self.substep_then(KStep(led, V1), U1, S_tilde2, t_half, t1, led.qr)
        return U2, S1, V1

    def __repr__(self) -> str:
        return f"ProjectorSplitting(order={self.order}, substep={self.substep!r})"
