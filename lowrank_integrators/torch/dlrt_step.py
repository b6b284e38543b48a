r"""The DLRT step of one low-rank layer, evaluated directly from its backward pass.

The default method of :class:`~lowrank_integrators.torch.DLRTOptimizer` is the rank-adaptive
augmented BUG step with one explicit Euler step per substep (DLRT, Schotthöfer et al. 2022,
arXiv:2205.13571; the integrator of Ceruti, Kusch, Lubich 2022, arXiv:2104.05247) applied to
the gradient flow ``W' = -grad(W)`` over a step ``h`` (the learning rate). With Euler
substeps every product is taken at the start ``W0 = U0 S0 V0^T``, so the step has a closed
form that the optimizer evaluates here without the request-by-request bookkeeping of the step
protocol (the same equations as :class:`~lowrank_integrators.AugmentedBUG`; a test checks that
both give the same weights):

1. ``K1 = U0 S0 - h grad(W) V0`` and ``L1 = V0 S0^T - h grad(W)^T U0``; autograd formed both
   products (``U.grad`` and ``V.grad`` of a :class:`~lowrank_integrators.torch.FactoredLayer`);
2. ``U_hat = [U0, Q1]`` with ``Q1`` an orthonormal basis of the part of ``K1`` outside
   ``range(U0)`` (the QR of the projected ``K1``, or where that part is rank-deficient one
   Householder QR of ``[U0, K1]``), likewise ``V_hat = [V0, P1]``;
3. the Galerkin step ``S_hat = [S0, 0; 0, 0] - h U_hat^T grad(W) V_hat``, of whose four
   blocks three come from the products autograd formed (``U0^T grad(W) V0 = S.grad``,
   ``(grad(W)^T U0)^T P1``, ``Q1^T grad(W) V0``) and one, ``Q1^T (grad(W) P1)``, from the
   recorded passes: the only product with the layer's input the step forms;
4. the SVD of ``S_hat`` and the rank decision of the truncation rule on its singular values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import NonFiniteError
from ..integrators.base import StepInfo
from ..truncation import TruncationRecord, TruncationRule, tail_norms
from .layers import FactoredLayer

__all__ = [
    "AugmentedCore",
    "augmented_bases",
    "augmented_core",
    "direct_applies",
    "require_finite_cores",
    "truncate_augmented",
]


class AugmentedCore:
    """The augmented bases and the Galerkin core of one layer's step (before truncation).

    Attributes
    ----------
    U_hat, V_hat : torch.Tensor
        ``[U0, Q1]`` and ``[V0, P1]``.
    S_hat : torch.Tensor
        The core after the Galerkin step.
    rank : int
        The rank ``r`` of the start.
    """

    def __init__(self, U_hat: torch.Tensor, S_hat: torch.Tensor, V_hat: torch.Tensor, rank: int):
        self.U_hat = U_hat
        self.S_hat = S_hat
        self.V_hat = V_hat
        self.rank = rank


def direct_applies(layer: Any) -> bool:
    """Whether ``layer``'s last backward pass holds what :func:`augmented_core` needs.

    A real :class:`~lowrank_integrators.torch.FactoredLayer` with recorded passes and the
    three gradients of its factors.
    """
    if not isinstance(layer, FactoredLayer) or not layer._records:
        return False
    U, S, V = layer.U, layer.S, layer.V
    if U.grad is None or S.grad is None or V.grad is None:
        return False
    return not (U.is_complex() or S.is_complex() or V.is_complex())


def _augmented_basis(B0: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``[B0, Q1]``: ``Q1`` the last columns of the thin QR of ``[B0, X]``.

    The Householder QR of ``[B0, X]`` (``B0`` orthonormal) starts with ``B0`` up to column
    signs and rounding; its other columns are orthonormal to it, so ``[B0, Q1]`` is
    orthonormal and spans ``range([B0, X])`` (completed where ``X`` lies in ``range(B0)``).
    """
    r = int(B0.shape[1])
    Q = torch.linalg.qr(torch.cat([B0, X], dim=1)).Q
    return torch.cat([B0, Q[:, r:]], dim=1)


def _projected_columns(B0: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New columns for ``B0`` from the QR of ``X`` projected out of ``range(B0)`` alone.

    ``Z = X - B0 (B0^T X)``, projected twice (block Gram-Schmidt with reorthogonalisation),
    ``Z = Q R``, and ``Q1 = Q - B0 (B0^T Q)``: a QR of half the columns of ``[B0, X]``.
    Returns ``Q1`` and ``max |B0^T Q|``: ``[B0, Q1]`` is orthonormal to working precision
    when that is small (see :func:`augmented_bases`), not when ``Z`` is rank-deficient (``X``
    nearly inside ``range(B0)``), where the QR's columns carry no direction of ``Z``.
    """
    Z = X - B0 @ (B0.mT @ X)
    Z = Z - B0 @ (B0.mT @ Z)
    Q = torch.linalg.qr(Z).Q
    C = B0.mT @ Q
    return Q - B0 @ C, C.abs().amax()


#: Largest ``max |B0^T Q|^2 k`` (in units of the dtype's epsilon) for which the projected
#: columns are taken: ``[B0, Q1]`` is then orthonormal to working precision.
_CROSS_TOLERANCE = 32.0


def augmented_bases(
    steps: list[tuple[FactoredLayer, float]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Steps 1-2 of the module docstring for several layers: ``(U_hat, V_hat)`` of each.

    The new columns come from the QR of the projected ``K1`` (``L1``) where ``2 r <= n`` and
    the projected columns pass the orthogonality check; otherwise from one QR of
    ``[U0, K1]``. The checks of all layers are read back together (one host
    synchronisation).

    Parameters
    ----------
    steps : list of (FactoredLayer, float)
        Each layer (see :func:`direct_applies`) with its step ``h`` (the learning rate).
    """
    with torch.no_grad():
        pending = []
        sizes = []
        for layer, h in steps:
            U0, S0, V0 = layer.U.detach(), layer.S.detach(), layer.V.detach()
            gK, gL = layer.U.grad, layer.V.grad
            assert gK is not None and gL is not None
            pair = []
            for B0, X in (
                (U0, torch.sub(U0 @ S0, gK, alpha=h)),
                (V0, torch.sub(V0 @ S0.mT, gL, alpha=h)),
            ):
                cand = None
                if 2 * int(B0.shape[1]) <= int(B0.shape[0]):
                    cand = _projected_columns(B0, X)
                    sizes.append(cand[1])
                pair.append((B0, X, cand))
            pending.append(pair)
        checks = iter(torch.stack(sizes).tolist() if sizes else [])
        out = []
        for pair in pending:
            bases = []
            for B0, X, cand in pair:
                if cand is not None:
                    size = next(checks)
                    eps = float(torch.finfo(B0.dtype).eps)
                    if size * size * int(cand[0].shape[1]) <= _CROSS_TOLERANCE * eps:
                        bases.append(torch.cat([B0, cand[0]], dim=1))
                        continue
                bases.append(_augmented_basis(B0, X))
            out.append((bases[0], bases[1]))
    return out


def augmented_core(
    layer: FactoredLayer, h: float, U_hat: torch.Tensor, V_hat: torch.Tensor
) -> AugmentedCore:
    """Step 3 of the module docstring for one layer (its factors are not changed).

    Parameters
    ----------
    layer : FactoredLayer
        With recorded backward passes (see :func:`direct_applies`).
    h : float
        The step: the learning rate.
    U_hat, V_hat : torch.Tensor
        ``[U0, Q1]`` and ``[V0, P1]`` from :func:`augmented_bases`.

    Returns
    -------
    AugmentedCore
    """
    with torch.no_grad():
        S0 = layer.S.detach()
        gK, gS, gL = layer.U.grad, layer.S.grad, layer.V.grad
        assert gK is not None and gS is not None and gL is not None
        r = int(S0.shape[0])
        Q1, P1 = U_hat[:, r:], V_hat[:, r:]
        k, q = int(Q1.shape[1]), int(P1.shape[1])
        S_hat = torch.zeros(r + k, r + q, dtype=S0.dtype, device=S0.device)
        torch.sub(S0, gS, alpha=h, out=S_hat[:r, :r])
        if q:
            torch.mul(gL.mT @ P1, -h, out=S_hat[:r, r:])
        if k:
            torch.mul(Q1.mT @ gK, -h, out=S_hat[r:, :r])
        if k and q:
            # the products of the passes with the new columns only
            gP = layer.grad_right(P1, records=[rec._replace(formed=None) for rec in layer._records])
            torch.mul(Q1.mT @ gP, -h, out=S_hat[r:, r:])
    return AugmentedCore(U_hat, S_hat, V_hat, r)


def require_finite_cores(cores: list[AugmentedCore]) -> None:
    """Raise :class:`~lowrank_integrators.errors.NonFiniteError` before any SVD of a core
    holding NaN or infinity (one host synchronisation for all layers)."""
    if not cores:
        return
    sums = torch.stack([c.S_hat.sum() for c in cores])
    if bool(torch.isfinite(sums).all()):
        return
    for i, c in enumerate(cores):
        if not bool(torch.isfinite(c.S_hat).all()):
            raise NonFiniteError(
                f"the augmented core of low-rank layer {i} ({tuple(c.S_hat.shape)}) holds NaN "
                "or infinity: the gradient or the learning rate overflowed"
            )


def truncate_augmented(
    core: AugmentedCore, rule: TruncationRule, h: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, StepInfo]:
    """Step 4: the SVD of the core, the rank decision on the host, the new factors.

    Returns
    -------
    U1, S1, V1 : torch.Tensor
        The factors of rank ``r1`` (``S1`` diagonal).
    info : StepInfo
        The bookkeeping the protocol's step reports: one product of each kind, two QRs, one
        SVD, and the truncation record.
    """
    with torch.no_grad():
        P, sigma, Qh = torch.linalg.svd(core.S_hat)
        sig_host = sigma.cpu().numpy()
        r1 = int(rule.select_rank(sig_host, h))
        if not 1 <= r1 <= int(sig_host.shape[0]):
            raise ValueError(
                f"{type(rule).__name__}.select_rank chose rank {r1}; a rule must keep between "
                f"1 and the {int(sig_host.shape[0])} available singular values"
            )
        U1 = core.U_hat @ P[:, :r1]
        V1 = core.V_hat @ Qh[:r1].mT
        S1 = torch.diag(sigma[:r1])
    record = TruncationRecord(
        rank_before=int(sig_host.shape[0]),
        rank_after=r1,
        tail=float(tail_norms(np.asarray(sig_host))[r1]),
        tolerance=rule.tolerance(sig_host, h),
    )
    info = StepInfo(
        n_right=1,
        n_left=1,
        n_project=1,
        n_qr=2,
        n_svd=1,
        rank_before=core.rank,
        rank_after=r1,
        truncation=record,
    )
    return U1, S1, V1, info
