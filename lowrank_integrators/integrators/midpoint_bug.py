r"""Robust second-order BUG integrator based on the midpoint rule.

Ceruti, G., Einkemmer, L., Kusch, J., Lubich, C. (2024). A robust second-order low-rank BUG
integrator based on the midpoint rule. BIT 64. arXiv:2402.08607.

One step from ``Y0 = U0 S0 V0^H`` (rank r) at ``t0`` to ``t1 = t0 + h`` (the ``4r`` version):

1. Half step: one augmented BUG step over ``[t0, t0 + h/2]``, **not truncated**:
   K-step from ``U0 S0`` and L-step from ``V0 S0^H`` (in parallel);
   ``U_half = orth([K_half, U0])``, ``V_half = orth([L_half, V0])`` (``2r`` columns);
   Galerkin S-step ``S' = U_half^H F(t, U_half S V_half^H) V_half`` from
   ``(U_half^H U0) S0 (V0^H V_half)``, giving ``Y_half = U_half S_half V_half^H``.
2. With ``F_half = F(t_half, Y_half)``, ``t_half = t0 + h/2``:
   ``U_hat = orth([U_half, F_half V_half])`` and ``V_hat = orth([V_half, F_half^H U_half])``
   (``4r`` columns). They contain ``range(U0)`` and ``range(V0)``.
3. Full-step Galerkin over ``[t0, t1]``: ``S' = U_hat^H F(t, U_hat S V_hat^H) V_hat`` from
   ``S(t0) = U_hat^H Y0 V_hat``, giving ``S_hat``.
4. Truncate ``(U_hat, S_hat, V_hat)``: to rank r with ``FixedRank(r)``, adaptively with a
   tolerance (second order needs ``tau = O(h^3)``, e.g. ``Tolerance(theta, scale_with_h=3)``).

The method is second order and robust to small singular values. The rank can at most
quadruple per step.

Errors at large and small steps. ``S_half`` has, besides the ``r`` singular values of ``Y0``,
``r`` of the size of the half step's local error, and ``F_half V_half`` carries the field's
directions along them scaled by that size: new columns of relative size far below one but
above round-off at larger steps. The QR normalises them, the ``4r`` bases then hold more of
the solution's next directions than the method needs, and the error lies below the
second-order line; as ``h`` shrinks they sink into round-off and the error returns to that
line. On the Sylvester rotation of Ceruti-Lubich 2022 (``n = 100``, ``r = 4``, ``T = 1``, one
RK4 step per substep; relative errors against the exact rank-r solution):

* ``h = 0.02``: those columns are ``1e-13`` to ``1e-12`` of ``||F_half V_half||`` (``S_half``:
  ``3e-11`` to ``3e-10`` beside ``0.06`` to ``0.5``);
* ``h = 0.02, 0.01, 0.005``: errors ``3.1e-6, 2.7e-7, 1.2e-6`` (the last varies with the
  rounding: these columns are then at round-off level);
* ``h = 0.002, 0.001, 0.0005, 0.00025``: ``1.7e-6, 4.3e-7, 1.1e-7, 2.7e-8``, order 2.0 (``r =
  8``: ``1.2e-6`` to ``2.1e-8``);
* a dense transcription of the step whose bases drop the directions below ``1e-12`` of the
  largest: ``1.8e-4, 4.5e-5, 1.1e-5, 1.8e-6, 4.5e-7`` at ``h = 0.02 ... 0.001``, the
  second-order line throughout.

So a sweep over large steps overstates the order (the validation suite fits 2.8 on V1 over
``h = 0.1 ... 0.01``), and between the two regimes the error need not fall with ``h``; it
stays at or below the second-order line, with no round-off floor above it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..protocol import received
from ..substeps import owned_result
from .augmentation import AugmentedBases, KeptStorage, augment, embed_core
from .base import AdaptiveIntegrator, Ledger, State, StepGenerator

__all__ = ["MidpointBUG"]


class MidpointBUG(AdaptiveIntegrator):
    """Midpoint BUG integrator (Ceruti-Einkemmer-Kusch-Lubich 2024): robust, second order.

    Costs per step with ``RK4(steps=s)`` substeps: ``4s + 1`` applications each of ``F V``
    and ``F^H U`` (the half step's K- and L-steps and the two products at ``Y_half``) and
    ``8s`` of ``U^H F V`` (two Galerkin steps); four QRs (``2r``, ``2r``, ``4r``, ``4r``
    columns); one SVD of the ``4r x 4r`` core. With Euler substeps two evaluation points
    (``Y0``, ``Y_half``; both Galerkin steps start from a representation of ``Y0``): two
    forward/backward passes per training step.

    On NumPy arrays of a square problem the integrator keeps two tall arrays (``n x 4r``)
    between steps, into which the next step writes ``U_hat`` and ``V_hat``
    (``KeptStorage`` in ``lowrank_integrators.integrators.augmentation``). In the half step,
    where they would lie idle, the first holds the K- and L-substeps' registers and the second
    the half step's bases ``U_half`` and ``V_half``; ``V_hat`` then grows over ``V_half`` in
    place. A step allocates no tall array but the products ``F V`` and ``F^H U`` and the new
    factors (at ``n ~ 1e6`` each fresh array costs the zeroing of its pages), and its peak
    memory is that of a step without them. An array that anyone still holds, or of which
    anyone holds a view, is never written over; it is then not kept.

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank r; ``Tolerance(theta, ...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 2
    max_rank_growth = 4.0
    passes_per_step = 2
    references = (
        "Ceruti, Einkemmer, Kusch, Lubich 2024, A robust second-order low-rank BUG integrator "
        "based on the midpoint rule, BIT 64, arXiv:2402.08607",
    )

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        Y0 = state.Y
        U0, S0, V0 = Y0
        bk.namespace(U0, S0, V0)
        led = Ledger(rank_before=Y0.rank)
        t_half, t1 = t + 0.5 * h, t + h

        # Two n x 4r arrays are kept between steps (NumPy, square problems): U_hat and V_hat
        # are written into them, and in the half step, where they would lie idle, they hold
        # the K- and L-substeps' registers and the half step's bases, which are otherwise
        # fresh tall arrays too. V_hat grows over V_half in place. The step's peak stays that
        # of a step without them (docs/performance.md).
        m, r0 = int(U0.shape[0]), int(U0.shape[1])
        kept_U = kept_V = None
        if type(V0) is np.ndarray and V0.shape == U0.shape and V0.dtype == U0.dtype:
            kept_U = KeptStorage.take(self, U0, m, 4 * r0, keep=2)
            kept_V = KeptStorage.take(self, U0, m, 4 * r0, keep=2)
        try:
            # 1. untruncated augmented BUG half step
            # Tall intermediates are released as soon as they are used (n can be ~1e6).
            halves = None if kept_V is None else kept_V.carve((m, 2 * r0), (m, 2 * r0))
            out_U, out_V = _Once(halves, 0), _Once(halves, 1)
            halves = None
            half = AugmentedBases()
            # half.U = [U0 D, *], half.V = [V0 E, *]: the start is D^H S0 E padded with zeros.
            # (the registers are not named here: a substep owns an array no one else holds)
            S_start, lead_U, lead_V = yield from half.augment_by_substeps(
                self,
                led,
                Y0,
                t,
                t_half,
                registers=None if kept_U is None else kept_U.carve(*[(m, r0)] * 3),
                out_U=out_U,
                out_V=out_V,
            )
            out_U = out_V = None
            S_half = yield from half.galerkin(self.substep, led, t, t_half, S_start, at=Y0)
            Y_half = LowRankMatrix(half.U, S_half, half.V, check=False)

            # 2. bases enriched by the field at the midpoint (both products first, so that
            # each half-step basis is released as soon as its enriched basis exists)
            FV = received((yield led.right(t_half, Y_half, half.V, hand_over=True)))
            FhU = received((yield led.left(t_half, Y_half, half.U, hand_over=True)))
            del Y_half
            # each product, if no one else holds it, becomes the storage of its new columns
            refs = sys.getrefcount(FV)  # before any call holds it
            U_hat, m_U = augment(
                led,
                FV,
                half.U,
                overwrite=owned_result(FV, refs),
                out=None if kept_U is None else kept_U.whole,
            )
            hat = AugmentedBases(U_hat)
            del U_hat
            half.U = FV = None
            V_half, half.V = half.V, None
            grown = None
            if kept_V is not None and type(V_half) is np.ndarray:
                rows, cols = int(V_half.shape[0]), int(V_half.shape[1]) + int(FhU.shape[1])
                grown = kept_V.around(V_half, rows, cols, V_half.dtype)
            refs = sys.getrefcount(FhU)
            hat.V, m_V = augment(
                led,
                FhU,
                V_half,
                overwrite=owned_result(FhU, refs),
                out=None if grown is None else _Once([grown], 0),
            )
            V_half = FhU = grown = None

            # 3. full-step Galerkin from Y0 itself
            # hat.U = [half.U D2, *] = [U0 D D2, *, *] (likewise hat.V): again a padded S0.
            r = int(S0.shape[0])
            m_U, m_V = m_U[:r] * lead_U, m_V[: int(S0.shape[1])] * lead_V
            S_start = embed_core(S0, int(hat.U.shape[1]), int(hat.V.shape[1]), m_U, m_V)
            S_hat = yield from hat.galerkin(self.substep, led, t, t1, S_start, at=Y0)
            Y1 = hat.truncate(led, self.truncation, S_hat, h)
            del hat
        finally:
            for kept in (kept_U, kept_V):
                if kept is not None:
                    kept.close()
        return state.with_Y(Y1, t1), led.finish(Y1.rank)


class _Once:
    """The storage provider of one array of :func:`augment`: ``parts[index]`` where asked for
    its shape and dtype, handed out once and not held afterwards."""

    def __init__(self, parts: list[np.ndarray] | None, index: int) -> None:
        self.part = None if parts is None else parts[index]

    def __call__(self, rows: int, columns: int, dtype: Any) -> np.ndarray | None:
        part, self.part = self.part, None
        if part is None or part.shape != (rows, columns) or part.dtype != dtype:
            return None
        return part
