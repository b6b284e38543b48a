r"""The block the rank-adaptive integrators share: augment -> Galerkin -> truncate -> release.

Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247 (augmented bases, Galerkin step
in them, truncation).

The augmented BUG, the midpoint BUG, abc-PSI and the parallel BUG each build bases ``U_hat``
(``m x k``) and ``V_hat`` (``n x l``) that contain the old ones, compute a core ``S_hat`` in
them (a Galerkin substep, a QR, or an assembled block matrix) and truncate
``U_hat S_hat V_hat^H``.

Memory invariant: at ``n ~ 1e6`` the number of tall arrays alive at the end of a step decides
whether it fits. :class:`AugmentedBases` owns the two bases; the step keeps no other reference
to them, and :meth:`AugmentedBases.form` releases ``U_hat`` once ``U_hat P`` exists and
before ``V_hat Q`` is formed. ``tests/test_memory.py`` counts the tall arrays of every method.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..protocol import StepGenerator
from ..substeps import SubstepSolver
from ..truncation import TruncationRule
from .base import FactorisationLedger, KStep, Ledger, LStep, Parallel, SStep

__all__ = ["AugmentedBases", "augment", "embed_core"]


def augment(led: FactorisationLedger, X: Any, U0: Any) -> tuple[Any, Any]:
    """``U_hat = [U0 D, Q]`` orthonormal with ``range(X)`` inside, and ``D``'s diagonal.

    One thin QR of ``[U0, X]`` (``min(rows, cols)`` columns) after ``X`` is orthogonalised
    against ``U0``, in the storage of the concatenation (see
    :func:`~lowrank_integrators._backend.qr_augment`). As ``U0`` is
    orthonormal, the leading block of the QR is ``U0 D`` up to rounding, ``D`` diagonal with
    unimodular entries (the QR's sign convention, which does not depend on the signs of the
    columns of ``U0``). That block is replaced by ``U0 D`` itself, so that
    ``U_hat^H U0 = [D^H; 0]`` holds by construction and the Galerkin start needs no product
    over tall arrays (see :func:`embed_core`). The new columns ``Q`` are orthogonal to the
    QR's leading block, hence to ``U0``, to working precision.

    Returns
    -------
    U_hat : array, shape (m, min(m, r + k))
    m : array, shape (r,)
        The diagonal of ``U_hat^H U0 = [diag(m); 0]`` (entries of modulus one).
    """
    U_hat = led.qr_augment(U0, X)[0]
    r = int(U0.shape[1])
    xp = bk.namespace(U_hat, U0)
    lead = U_hat[:, :r]
    if type(lead) is np.ndarray:  # no tall temporary
        c = np.einsum("ij,ij->j", lead.conj() if bk.is_complex(lead) else lead, U0)
    else:
        c = xp.sum(xp.conj(lead) * U0, axis=0)
    if bk.is_complex(U0):
        size = xp.abs(c)
        m = xp.where(size > 0, c / xp.where(size > 0, size, 1), xp.ones_like(c))
    else:
        m = xp.where(c < 0, -xp.ones_like(c), xp.ones_like(c))
    if bk.allows_inplace(U_hat):
        U_hat[:, :r] = U0
        U_hat[:, :r] *= xp.conj(m)
        return U_hat, m
    return xp.concat([U0 * xp.conj(m), U_hat[:, r:]], axis=1), m


def embed_core(S0: Any, rows: int, cols: int, m_left: Any, m_right: Any) -> Any:
    """``[diag(m_left); 0] S0 [diag(m_right); 0]^H``: ``S0`` (r x s) as a leading block.

    For bases from :func:`augment` (``U_hat^H U0 = [diag(m_left); 0]``, likewise for ``V``)
    this is ``U_hat^H (U0 S0 V0^H) V_hat`` exactly.
    """
    xp = bk.namespace(S0)
    S0 = m_left[:, None] * S0 * xp.conj(m_right)[None, :]
    r, s = int(S0.shape[0]), int(S0.shape[1])
    dev = bk.device(S0)
    if cols > s:
        S0 = xp.concat([S0, xp.zeros((r, cols - s), dtype=S0.dtype, device=dev)], axis=1)
    if rows > r:
        S0 = xp.concat([S0, xp.zeros((rows - r, cols), dtype=S0.dtype, device=dev)], axis=0)
    return S0


class AugmentedBases:
    """The augmented bases of one step, from augmentation to the truncated result.

    Parameters
    ----------
    U, V : array, optional
        ``U_hat`` and ``V_hat``; may be set later (``bases.V = ...``).
    """

    def __init__(self, U: Any = None, V: Any = None) -> None:
        self.U = U
        self.V = V

    def augment_by_substeps(
        self, method: Any, led: Ledger, Y0: LowRankMatrix, t0: float, t1: float
    ) -> StepGenerator:
        """The augmented K- and L-steps of the rank-adaptive BUG from ``Y0`` over ``[t0, t1]``.

        The two substeps are independent (one :class:`~lowrank_integrators.protocol.Parallel`
        request); each tall result is consumed by its augmentation at once. Sets ``U`` and
        ``V`` to ``[U0 D, *]`` and ``[V0 E, *]`` and returns ``(S_start, D, E)``: the Galerkin
        start ``D^H S0 E`` padded with zeros, which is ``Y0`` in the augmented bases.
        """
        U0, S0, V0 = Y0
        lead: dict[str, Any] = {}

        def k_step() -> StepGenerator:
            K0 = method.start(U0, S0)
            K1 = yield from method.substep.solve(KStep(led, V0, at=Y0), t0, t1, K0)
            self.U, lead["U"] = augment(led, K1, U0)

        def l_step() -> StepGenerator:
            L0 = method.start(V0, bk.adjoint(S0))
            L1 = yield from method.substep.solve(LStep(led, U0, at=Y0), t0, t1, L0)
            self.V, lead["V"] = augment(led, L1, V0)

        yield Parallel(k_step(), l_step())
        rows, cols = int(self.U.shape[1]), int(self.V.shape[1])
        return embed_core(S0, rows, cols, lead["U"], lead["V"]), lead["U"], lead["V"]

    def galerkin(
        self,
        substep: SubstepSolver,
        led: Ledger,
        t0: float,
        t1: float,
        S_start: Any,
        at: LowRankMatrix | None = None,
    ) -> StepGenerator:
        """The Galerkin substep ``S' = U_hat^H F(t, U_hat S V_hat^H) V_hat`` from ``S_start``.

        ``at`` declares the point ``U_hat S_start V_hat^H`` (``Y0`` when the bases contain the
        old ones and ``S_start = U_hat^H Y0 V_hat``).
        """
        return (yield from substep.solve(SStep(led, self.U, self.V, at=at), t0, t1, S_start))

    def truncate(self, led: Ledger, rule: TruncationRule, S_hat: Any, h: float) -> LowRankMatrix:
        """The rank decision on ``S_hat`` (one SVD, recorded) and the truncated matrix."""
        return self.form(*led.truncate_core(rule, S_hat, h))

    def form(self, P: Any, S1: Any, Q: Any) -> LowRankMatrix:
        """``(U_hat P) S1 (V_hat Q)^H``, releasing ``U_hat`` before ``V_hat Q`` exists."""
        U1 = self.U @ P
        self.U = None
        V1 = self.V @ Q
        self.V = None
        return LowRankMatrix(U1, S1, V1, check=False)
