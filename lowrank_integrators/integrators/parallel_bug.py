r"""Parallel basis-update & Galerkin integrator with step rejection, and its second-order variant.

Ceruti, G., Kusch, J., Lubich, C. (2024). A parallel rank-adaptive integrator for dynamical
low-rank approximation. SIAM J. Sci. Comput. arXiv:2304.05660.

Kusch, J. (2024). Second-order robust parallel integrators for dynamical low-rank
approximation. arXiv:2403.02834.

One first-order step from ``Y0 = U0 S0 V0^H`` (rank r) at ``t0`` to ``t1 = t0 + h``:

1. In parallel, each over ``[t0, t1]``:

   * K-step  ``K' = F(t, K V0^H) V0``,           ``K(t0) = U0 S0``    giving ``K1``;
   * L-step  ``L' = F(t, U0 L^H)^H U0``,         ``L(t0) = V0 S0^H``  giving ``L1``;
   * S-step  ``S' = U0^H F(t, U0 S V0^H) V0``,   ``S(t0) = S0``       giving ``S_bar1``
     (Galerkin in the *old* basis).

2. ``U_tilde = ext(U0, K1)``, ``V_tilde = ext(V0, L1)``: the new directions, i.e. the trailing
   columns of the Q factor of ``QR([U0, K1]) = [U_1, U_tilde] R``. The augmented basis is that
   Q factor, ``U_hat = [U_1, U_tilde]``; its leading block spans ``range(U0)`` with
   ``U0 = U_1 R_U`` (``R_U`` the leading ``r x r`` block of ``R``, unitary up to round-off),
   and likewise ``V0 = V_1 R_V``. In single precision it is computed as the QR of
   ``[U0, K1 - U0 S0]``, which has the same Q factor and the same diagonal blocks of ``R``
   (``K1 - U0 S0`` differs from ``K1`` by columns inside ``span(U0)``) but a condition number
   that does not grow like ``1 / h``: the Cholesky QR then holds it where ``[U0, K1]`` would
   need a Householder fallback, and the new directions are as accurate as the increment.
3. Assemble the ``2r x 2r`` core with its zero block, the blocks computed in ``U0``, ``V0``
   written in ``U_1``, ``V_1``::

       S_hat = [[ R_U S_bar1 R_V^H,      R_U L1^H V_tilde ],
                [ U_tilde^H K1 R_V^H,    0                ]]

   ``U_tilde^H K1`` and ``V_tilde^H L1`` are the trailing diagonal blocks of the two ``R``
   factors (``[U0, K1] = U_hat R``): no product over tall arrays.
4. Truncate ``(U_hat, S_hat, V_hat)``.

With one explicit Euler step per substep the step before truncation is the tangent-projected
Euler step ``Y0 + h P(Y0) F(t0, Y0)``.

**Step rejection** (the criteria follow the authors' public code). The step is recomputed when

(a) every singular value of ``S_hat`` survives the truncation and ``p < rmax``, or
(b) ``h * ||U_tilde^H F(t0, Y0) V_tilde||_F > c_eta * tau`` and ``p < rmax``,

where ``p = min(rows, cols)`` of ``S_hat`` (``2r`` in general) and ``tau`` is the threshold of
the truncation rule. Criterion (b) measures the dropped ``(2, 2)`` block: with Euler substeps
it is exactly ``h U_tilde^H F(t0, Y0) V_tilde``. A rejected step restarts from the **same**
``Y0``, written in the doubled bases ``U0 <- U_hat``, ``V0 <- V_hat`` with the core
``[[R_U S0 R_V^H, 0], [0, 0]]``; BUG-type steps accept the singular core. Each rejection
doubles the bases (up to ``m`` and ``n`` columns), so at most about ``log2(max(m, n))``
attempts are rejected; a step that rejects more raises
:class:`~lowrank_integrators.errors.RejectionLimitError` instead of looping. Without
rejection the rank hardly grows: new directions only enter through the off-diagonal blocks,
which are ``O(h)``, so their singular values are ``O(h^2)`` and a tolerance truncates them.

**Orthonormality.** The bases are always Q factors of a QR, never the old basis pasted into
one: pasting ``U0`` would carry its round-off defect from step to step, and over ``1e5``
steps in single precision the defect would grow far beyond that of one QR.

**Second order** (``order=2``, Kusch 2024). Before the parallel substeps both bases are
augmented by the directions of ``F`` at the initial value,
``U_hat0 = [U0, ext(U0, F(t0, Y0) V0)]`` and ``V_hat0 = [V0, ext(V0, F(t0, Y0)^H U0)]``, and
``Y0`` is written in them with the core ``[[S0, 0], [0, 0]]``. The first-order step above is
then taken from this representation: the K-, L- and S-steps run in the ``2r`` bases, the new
directions ``ext(U_hat0, K1)`` bring the bases to ``4r`` columns and the ``4r x 4r`` core is
truncated. (``U_hat0`` is again a Q factor, and ``Y0`` is written in it through ``R_U``,
``R_V`` as above.)
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from .. import _backend as bk
from ..errors import RejectionLimitError
from ..factors import LowRankMatrix
from ..substeps import SubstepSolver, owned_result
from ..truncation import FixedRank, TruncationRecord, TruncationRule
from .augmentation import AugmentedBases, RegisterHandover
from .base import (
    AdaptiveIntegrator,
    KStep,
    Ledger,
    LStep,
    Parallel,
    SStep,
    State,
    StepGenerator,
)

__all__ = ["ParallelBUG"]


class ParallelBUG(AdaptiveIntegrator):
    """Parallel rank-adaptive BUG integrator (Ceruti-Kusch-Lubich 2024), optionally second order.

    Costs per attempt with ``RK4(steps=s)`` substeps: ``4s`` applications each of ``F V``,
    ``F^H U`` and ``U^H F V`` (the three substeps are independent); two thin QRs of ``2r``
    columns; one SVD of the ``2r x 2r`` core. Rejection test (b) adds one projection
    ``U_tilde^H F(t0, Y0) V_tilde`` when it is evaluated (only if test (a) did not already
    reject). ``order=2`` adds ``F(t0, Y0) V0``, ``F(t0, Y0)^H U0`` and two QRs per attempt,
    and its core is ``4r x 4r``. A rejected attempt costs as much as an accepted one, and
    ``StepInfo`` counts both. With Euler substeps every product of every attempt is taken at
    ``Y0``: one forward/backward pass per training step, rejections included.

    Parameters
    ----------
    truncation : TruncationRule
        ``Tolerance(...)`` adapts the rank. ``FixedRank(k)`` truncates to ``k``.
    reject : bool, default True
        Recompute a step in the doubled bases when it wants more rank (see the module
        docstring). ``rmax`` in the criteria is ``truncation.rmax`` for a ``Tolerance``
        (``None``: no cap besides ``min(m, n)``) and ``k`` for ``FixedRank(k)``. With
        ``FixedRank(k)`` criterion (b) does not apply (there is no tolerance), and criterion
        (a) rejects exactly while the doubled basis has fewer than ``k`` columns: a start
        below rank ``k`` is grown to ``k`` within one step, and a step at rank ``k`` is never
        rejected.
    order : {1, 2}, default 1
        1 for the parallel BUG of Ceruti-Kusch-Lubich, 2 for the second-order parallel
        integrator of Kusch. Step rejection with ``order=2`` applies the same criteria to the
        ``4r`` core (an extension: Kusch 2024 does not define rejection).
    c_eta : float, default 1.0
        Safety factor of rejection criterion (b).
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    max_rank_growth = math.inf  # rejected steps restart in doubled bases, repeatedly
    passes_per_step = 1
    fixed_rank_order = False
    #: The second-order variant (``order=2``) differs in these attributes.
    variants: ClassVar[dict[int, dict[str, Any]]] = {2: {"order": 2, "fixed_rank_order": True}}
    references = (
        "Ceruti, Kusch, Lubich 2024, A parallel rank-adaptive integrator for dynamical low-rank "
        "approximation, SIAM J. Sci. Comput., arXiv:2304.05660",
        "Kusch 2024, Second-order robust parallel integrators for dynamical low-rank "
        "approximation, arXiv:2403.02834",
    )

    def __init__(
        self,
        truncation: TruncationRule,
        reject: bool = True,
        order: int = 1,
        c_eta: float = 1.0,
        substep: SubstepSolver | Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(truncation, substep)
        if not isinstance(reject, bool):
            raise TypeError(f"reject must be a bool, got {type(reject).__name__}")
        if isinstance(order, bool) or order not in (1, 2):
            raise ValueError(f"order must be 1 (first order) or 2 (Kusch 2024), got {order!r}")
        if isinstance(c_eta, bool) or not isinstance(c_eta, numbers.Real):
            raise TypeError(f"c_eta must be a positive number, got {type(c_eta).__name__}")
        if not (math.isfinite(c_eta) and c_eta > 0):
            raise ValueError(f"c_eta must be a finite number > 0, got {c_eta}")
        self.reject = reject
        self._select_variant(order)
        self.c_eta = float(c_eta)

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        U, S, V = Y0
        led = Ledger(rank_before=Y0.rank)
        cap = _rank_cap(self.truncation, *Y0.shape)
        # Every rejection doubles the bases until they have m and n columns: more
        # rejections than this mean the criterion can never accept.
        max_rejections = max(Y0.shape).bit_length() + 1
        t1 = t + h
        while True:
            # Every attempt starts from Y0, written in the current bases U, V.
            if self.order == 2:
                U, S, V = yield from _augment_by_field(led, t, U, S, V, Y0)
            hat = AugmentedBases()
            S_hat, R_U, R_V = yield from self._parallel_substeps(led, hat, U, S, V, Y0, t, t1)
            # The rank decision needs the core only; the new factors are formed once accepted.
            P, S1, Q = led.truncate_core(self.truncation, S_hat, h)
            record = led.info.truncation
            if not self.reject:
                break
            rejects = yield from self._rejects(led, record, cap, t, h, U, S, V, hat, Y0)
            if not rejects:
                break
            if led.info.rejected >= max_rejections:
                raise RejectionLimitError(
                    f"ParallelBUG rejected {led.info.rejected + 1} attempts of the step from "
                    f"t = {t:.6g} (the bases stopped growing at {int(hat.U.shape[1])} and "
                    f"{int(hat.V.shape[1])} columns); the rejection criterion cannot accept"
                )
            led.info.rejected += 1
            # Restart from the same Y0, now written in the doubled bases.
            U, S, V = hat.U, _pad(R_U @ S @ bk.adjoint(R_V), hat.U, hat.V), hat.V
        del U, V  # the bases of the attempt: U_hat can go before V_hat Q is formed
        Y1 = hat.form(P, S1, Q)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)

    def _parallel_substeps(
        self,
        led: Ledger,
        hat: AugmentedBases,
        U0: Any,
        S0: Any,
        V0: Any,
        Y0: LowRankMatrix,
        t0: float,
        t1: float,
    ) -> StepGenerator:
        """The K-, L- and S-steps from ``Y0 = U0 S0 V0^H``; sets ``hat``.

        Returns ``(S_hat, R_U, R_V)`` (see the module docstring).
        """
        xp = bk.namespace(U0, S0, V0)
        r, s = int(U0.shape[1]), int(V0.shape[1])

        # The three substeps are independent (all start from Y0). Each tall result is used
        # and released before the next is computed, and the augmented bases are built in the
        # QR's own storage: at n ~ 1e6 this keeps two augmented bases and one substep alive.
        # The K-substep's dead work arrays, and its result once U_hat exists, serve as the
        # L-substep's registers (RegisterHandover).
        handover = RegisterHandover(U0, V0)

        def k_step() -> StepGenerator:
            K0 = handover.lend(self.start(U0, S0))
            K1 = yield from self.substep.solve(KStep(led, V0, at=Y0), t0, t1, K0)
            K0 = None
            refs = sys.getrefcount(K1)  # before any call holds it
            owned = owned_result(K1, refs)
            hat.U, R = _qr_of_start_and_result(led, U0, K1, S0)
            if owned:
                handover.give(K1, U0)
            K1 = None
            # U_hat^H K1 is the trailing diagonal block of R ([U0, K1] = U_hat R, to round-off)
            return R[r:, r:], R[:r, :r]

        def l_step() -> StepGenerator:
            L0 = handover.lend(self.start(V0, bk.adjoint(S0)))
            L1 = yield from self.substep.solve(LStep(led, U0, at=Y0), t0, t1, L0)
            L0 = None
            handover.l_substep_done()
            hat.V, R = _qr_of_start_and_result(led, V0, L1, bk.adjoint(S0))
            return bk.adjoint(R[s:, s:]), R[:s, :s]

        def s_step() -> StepGenerator:
            return (yield from self.substep.solve(SStep(led, U0, V0, at=Y0), t0, t1, S0))

        (UtK, R_U), (LtV, R_V), S_bar = yield Parallel(k_step(), l_step(), s_step())
        handover.close()
        # The blocks were computed in the coordinates of U0 and V0; U0 = U_hat[:, :r] R_U.
        R_V_H = bk.adjoint(R_V)
        zero = xp.zeros(
            (int(UtK.shape[0]), int(LtV.shape[1])), dtype=S0.dtype, device=bk.device(S0)
        )
        top = xp.concat([R_U @ S_bar @ R_V_H, R_U @ LtV], axis=1)
        S_hat = xp.concat([top, xp.concat([UtK @ R_V_H, zero], axis=1)], axis=0)
        return S_hat, R_U, R_V

    def _rejects(
        self,
        led: Ledger,
        record: TruncationRecord,
        cap: int,
        t0: float,
        h: float,
        U0: Any,
        S0: Any,
        V0: Any,
        hat: AugmentedBases,
        Y0: LowRankMatrix,
    ) -> StepGenerator:
        p = record.rank_before
        if p >= cap:
            return False
        if record.rank_after == p:  # criterion (a)
            return True
        tau = record.tolerance
        r, s = int(U0.shape[1]), int(V0.shape[1])
        U_tilde, V_tilde = hat.U[:, r:], hat.V[:, s:]
        if math.isnan(tau) or U_tilde.shape[1] == 0 or V_tilde.shape[1] == 0:
            return False
        # criterion (b): the weight of the dropped (2, 2) block, at Y0 written in (U0, V0).
        xp = bk.namespace(U0, S0, V0)
        Y = LowRankMatrix(U0, S0, V0, check=False)
        block = yield led.project(t0, Y, U_tilde, V_tilde, at=Y0)
        eta = float(xp.linalg.matrix_norm(block))
        return h * eta > self.c_eta * tau

    def __repr__(self) -> str:
        return (
            f"ParallelBUG(truncation={self.truncation!r}, reject={self.reject}, "
            f"order={self.order}, c_eta={self.c_eta}, substep={self.substep!r})"
        )


def _augment_by_field(
    led: Ledger, t0: float, U0: Any, S0: Any, V0: Any, Y0: LowRankMatrix
) -> StepGenerator:
    """Kusch's preparatory step: ``Y0`` in the bases augmented by ``F(t0, Y0) V0``, ``F^H U0``."""
    Y = LowRankMatrix(U0, S0, V0, check=False)
    U_hat0, R_U = _augmented_basis(led, U0, (yield led.right(t0, Y, V0, at=Y0)))
    V_hat0, R_V = _augmented_basis(led, V0, (yield led.left(t0, Y, U0, at=Y0)))
    return U_hat0, _pad(R_U @ S0 @ bk.adjoint(R_V), U_hat0, V_hat0), V_hat0


def _qr_of_start_and_result(led: Ledger, B0: Any, X1: Any, C0: Any) -> tuple[Any, Any]:
    """``(Q, R)`` of ``[B0, X1] = Q R`` for a substep's result ``X1`` from ``B0 C0``, up to ``R``'s
    off-diagonal block.

    ``[B0, X1]`` has a condition number near ``||C0|| / (h ||F||)``. In single precision that
    lies beyond the Cholesky passes for small steps, and the QR falls back to Householder: the
    QR is then taken of ``[B0, X1 - B0 C0]`` (:meth:`~.base.FactorisationLedger.qr_increment`),
    which has the same ``Q`` and diagonal blocks of ``R`` (measured 30 % faster ParallelBUG
    steps in float32 at ``n = 4096`` and ``65536``). In double precision the Cholesky passes
    take ``[B0, X1]`` itself, and forming the increment would add a product and a pass over
    the tall arrays (measured 8 % slower steps).
    """
    if float(bk.namespace(X1).finfo(X1.dtype).eps) > _INCREMENT_FROM_EPS:
        return led.qr_increment(B0, X1, C0)
    return led.qr_blocks(B0, X1)


#: Precisions coarser than this (single and half) factor the increment of a substep.
_INCREMENT_FROM_EPS = 1e-10


def _augmented_basis(led: Ledger, U0: Any, X: Any) -> tuple[Any, Any]:
    """``(Q, R_U)``: the Q factor of ``QR([U0, X])`` and ``R_U`` with ``U0 = Q[:, :r] R_U``.

    ``Q = [U_1, ext(U0, X)]`` is orthonormal to round-off whatever the (small) defect of
    ``U0``; ``R_U`` (unitary up to round-off) carries a core from the coordinates of ``U0``
    into those of ``U_1``. Pasting ``U0`` itself into ``Q`` would keep ``U0``'s defect, and
    the defects would add up over the steps.
    """
    bk.namespace(U0, X)
    Q, R = led.qr_blocks(U0, X)
    r = int(U0.shape[1])
    return Q, R[:r, :r]


def _pad(S0: Any, U_hat: Any, V_hat: Any) -> Any:
    """``[[S0, 0], [0, 0]]`` sized for bases ``U_hat``, ``V_hat`` that begin with those of S0."""
    xp = bk.namespace(S0)
    a, b = int(S0.shape[0]), int(S0.shape[1])
    k, l_ = int(U_hat.shape[1]), int(V_hat.shape[1])
    dev = bk.device(S0)
    top = xp.concat([S0, xp.zeros((a, l_ - b), dtype=S0.dtype, device=dev)], axis=1)
    return xp.concat([top, xp.zeros((k - a, l_), dtype=S0.dtype, device=dev)], axis=0)


def _rank_cap(rule: TruncationRule, m: int, n: int) -> int:
    """The ``rmax`` of the rejection criteria: the rule's cap, never above ``min(m, n)``."""
    cap = min(m, n)
    if isinstance(rule, FixedRank):
        return min(cap, int(rule.rank))  # a tuple rank was refused in __init__
    rmax = getattr(rule, "rmax", None)
    return cap if rmax is None else min(cap, int(rmax))
