r"""Basis-update & Galerkin (BUG) integrator for Tucker tensors: fixed-rank and rank-adaptive.

Ceruti, G., Lubich, C. (2022). An unconventional robust integrator for dynamical low-rank
approximation. BIT 62(1), 23-44. arXiv:2010.02022 (fixed multilinear rank).
Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247 (augmentation and truncation).
Ceruti, G., Lubich, C., Sulz, D. (2023). Rank-adaptive time integration of tree tensor
networks. SIAM J. Numer. Anal. 61, 194-222. arXiv:2201.10291 (Tucker tensors as the
one-level tree; per-mode truncation of the core).

One step from ``Y0 = C0 x_1 U_1^0 ... x_d U_d^0`` at ``t0`` to ``t1 = t0 + h``:

1. For each mode i (independent of the other modes: the d K-steps are solved together, as
   one substep ODE on the stacked ``K_i``), with
   ``Mat_i(C0)^H = Q_i S_i^H`` and ``V_i = (kron_{j != i} conj(U_j^0)) Q_i``:
   K-step  ``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``, ``K_i(t0) = U_i^0 S_i``.
   Fixed rank: ``U_i^1 = orth(K_i(t1))``. Rank-adaptive: ``U_i^1 = orth([K_i(t1), U_i^0])``
   (at most ``2 r_i`` columns). ``M_i = U_i^{1H} U_i^0``.
2. Core Galerkin step  ``C' = F(t, C x_j U_j^1) x_j U_j^{1H}``, ``C(t0) = C0 x_j M_j``,
   giving ``C_hat``. In the rank-adaptive case ``range(U_i^0) lies in range(U_i^1)``, so the
   start ``C(t0) x_j U_j^1 = Y0`` is exact.
3. Rank-adaptive only: for every mode, the SVD ``Mat_i(C_hat) = P_i Sigma_i (...)^H``; the
   truncation rule picks ``r_i^1`` from ``Sigma_i``; then ``C1 = C_hat x_i P_i[:, :r_i^1]^H`` and
   ``U_i <- U_i^1 P_i[:, :r_i^1]`` for all i (truncated HOSVD of the core).

The method is first order and robust to small singular values of the core unfoldings;
there is no backward substep. With a tolerance ``tau`` per mode the discarded part has norm
at most ``sqrt(d) tau``; as for matrices, a fixed absolute tolerance accumulates over the
``T/h`` steps, so scale it with ``h`` when converging in ``h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _backend as bk
from ..protocol import StepGenerator
from ..substeps import SubstepSolver
from ..tensor_problems import TensorODE
from ..truncation import FixedRank, TruncationRecord, TruncationRule, tail_norms
from ..tucker import TuckerTensor, matrix_adjoint, multi_mode_product, unfold
from .tucker_steps import (
    ModeKSteps,
    TuckerIntegrator,
    TuckerLedger,
    TuckerState,
    core_step,
    mode_matrix_form,
)

__all__ = ["TuckerBUG"]


class TuckerBUG(TuckerIntegrator):
    """Tucker BUG integrator: fixed multilinear rank or rank-adaptive.

    Costs per step with ``RK4(steps=s)`` substeps: ``4s`` K-step products per mode (asked
    for all modes at once: ``4s`` requests) and ``4s`` core products; ``2d`` thin QRs (``d``
    of the core unfoldings, ``d`` of the K-bases); with a truncation rule, ``d`` SVDs of the
    unfoldings of the augmented core.

    Parameters
    ----------
    truncation : None or TruncationRule
        ``None``: fixed ranks, no augmentation (Ceruti-Lubich 2022). A rule
        (``FixedRank(ranks)`` or ``Tolerance(theta, ...)``): augmented bases ``[K_i, U_i^0]``
        and per-mode truncation of the core (Ceruti-Kusch-Lubich 2022; Ceruti-Lubich-Sulz
        2023). The rule is applied to each mode with ``mode=i``; a mode never drops below
        rank 1, nor above the product of the other ranks (the largest rank a mode
        unfolding of the core can have).
    substep : SubstepSolver or callable, optional
        Substep solver, default ``RK4()``.
    """

    order = 1
    exact_data = True
    norm = "drift"
    max_rank_growth = 2.0
    references = (
        "Ceruti, Lubich 2022, An unconventional robust integrator for dynamical low-rank "
        "approximation, BIT 62:23-44, arXiv:2010.02022",
        "Ceruti, Kusch, Lubich 2022, A rank-adaptive robust integrator for dynamical low-rank "
        "approximation, BIT 62:1149-1174, arXiv:2104.05247",
        "Ceruti, Lubich, Sulz 2023, Rank-adaptive time integration of tree tensor networks, "
        "SIAM J. Numer. Anal. 61:194-222, arXiv:2201.10291",
    )

    def __init__(
        self,
        truncation: TruncationRule | None = None,
        substep: SubstepSolver | Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(substep)
        if truncation is not None and not isinstance(truncation, TruncationRule):
            raise TypeError(
                "truncation must be None (fixed ranks) or a TruncationRule such as "
                f"FixedRank(ranks) or Tolerance(theta), got {type(truncation).__name__}"
            )
        self.truncation = truncation

    @property
    def rank_adaptive(self) -> bool:  # type: ignore[override]
        """Whether a truncation rule was given (augmented bases, per-mode truncation)."""
        return self.truncation is not None

    def init(self, problem: TensorODE, Y0: TuckerTensor, t0: float) -> TuckerState:
        state = super().init(problem, Y0, t0)
        rule = self.truncation
        if isinstance(rule, FixedRank) and isinstance(rule.rank, tuple):
            if len(rule.rank) != Y0.ndim:
                raise ValueError(
                    f"FixedRank has {len(rule.rank)} ranks but Y0 has order {Y0.ndim}: give "
                    "one rank per mode"
                )
        return state

    def step_requests(self, state: TuckerState, t: float, h: float) -> StepGenerator:
        C0, U0 = state.Y
        bk.namespace(C0, *U0)
        led = TuckerLedger(state.Y.ranks)
        t1 = t + h

        forms = [mode_matrix_form(led, C0, i) for i in range(len(U0))]
        k_steps = ModeKSteps(led, list(U0), [Q for _, Q in forms])
        K0 = k_steps.stack([U @ S for U, (S, _) in zip(U0, forms, strict=True)])
        K1 = yield from self.substep.solve(k_steps, t, t1, K0)
        bases, M = [], []
        for i in range(len(U0)):
            if self.truncation is None:
                U1 = led.orth(k_steps.part(K1, i))
            else:
                U1 = led.orth_blocks(k_steps.part(K1, i), U0[i])
            bases.append(U1)
            M.append(matrix_adjoint(U1) @ U0[i])

        C_start = multi_mode_product(C0, M)
        C_hat = yield from core_step(self.substep, led, bases, t, t1, C_start)

        if self.truncation is None:
            Y1 = TuckerTensor(C_hat, bases, check=False)
        else:
            Y1 = self._truncate(led, C_hat, bases, h)
        return state.with_Y(Y1, t1), led.finish(Y1.ranks)

    def _truncate(self, led: TuckerLedger, C_hat: Any, bases: list[Any], h: float) -> TuckerTensor:
        rule = self.truncation
        assert rule is not None
        d = C_hat.ndim
        size = math.prod(int(n) for n in C_hat.shape)
        P: list[Any] = []
        if all(bk.svd_on_host(C_hat, (int(n), size // int(n))) for n in C_hat.shape):
            # the core read back once and every mode factorised on the host (see
            # _backend.svd_on_host): one wait for a GPU, not d
            host = bk.to_host(C_hat)
            xp, dev = bk.namespace_of(C_hat), bk.device(C_hat)
            sigmas = []
            for i in range(d):
                P_i, sigma, _ = led.svd(unfold(host, i))
                P.append(xp.asarray(P_i, device=dev))
                sigmas.append(sigma)
        else:
            on_device = []
            for i in range(d):
                P_i, sigma, _ = led.svd(unfold(C_hat, i))
                P.append(P_i)
                on_device.append(sigma)
            # the singular values of every mode in one transfer: one wait for a GPU, not d
            sigmas = _to_host_together(on_device)
        ranks = [max(1, rule.select_rank(s, h, mode=i)) for i, s in enumerate(sigmas)]
        # A mode rank above the product of the others cannot be carried by the core.
        changed = True
        while changed:
            changed = False
            for i in range(d):
                others = math.prod(ranks[j] for j in range(d) if j != i)
                if ranks[i] > others:
                    ranks[i], changed = others, True
        records = tuple(
            TruncationRecord(
                rank_before=int(s.shape[0]),
                rank_after=r,
                tail=float(tail_norms(s)[r]),
                tolerance=rule.tolerance(s, h),
            )
            for s, r in zip(sigmas, ranks, strict=True)
        )
        led.info.truncations = records
        led.info.truncation = records[-1]
        kept = [P_i[:, :r] for P_i, r in zip(P, ranks, strict=True)]
        C1 = multi_mode_product(C_hat, [matrix_adjoint(Pk) for Pk in kept])
        factors = [B @ Pk for B, Pk in zip(bases, kept, strict=True)]
        return TuckerTensor(C1, factors, check=False)

    def __repr__(self) -> str:
        return f"TuckerBUG(truncation={self.truncation!r}, substep={self.substep!r})"


def _to_host_together(arrays: list[Any]) -> list[np.ndarray]:
    """The 1-D ``arrays`` on the host, copied in one transfer (NumPy arrays as they are)."""
    if all(type(a) is np.ndarray for a in arrays):
        return list(arrays)
    xp = bk.namespace(*arrays)
    flat = bk.to_host(xp.concat(list(arrays)))
    out, start = [], 0
    for a in arrays:
        n = int(a.shape[0])
        out.append(flat[start : start + n])
        start += n
    return out
