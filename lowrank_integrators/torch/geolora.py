r"""``GeoLoRA``: rank-adaptive fine-tuning of low-rank adapters by the parallel BUG integrator.

GeoLoRA (Schotthöfer, Zangrando, Ceruti, Tudisco, Kusch 2025, arXiv:2410.18720) moves the
adapter ``U S V^T`` of every layer ``W = W0 + U S V^T`` (``W0`` frozen) by one step of the
parallel rank-adaptive BUG integrator (Ceruti, Kusch, Lubich 2024, arXiv:2304.05660) with one
explicit Euler step per substep, applied to the gradient flow of the loss over one step of
length ``lr``. From the gradient ``G`` of the loss with respect to the weight at the start of
the step it forms, in one go,

* the new directions of ``U`` from ``G V`` and of ``V`` from ``G^T U``,
* the coefficients ``S - lr U^T G V`` in the old bases and the off-diagonal blocks
  ``-lr Ũ^T G V``, ``-lr U^T G Ṽ`` in the new directions,

and truncates the ``2r x 2r`` core by a relative tolerance ``tau``. All three products are the
gradients that one backward pass through the adapter gives (``U.grad``, ``V.grad``, ``S.grad``,
see :class:`~lowrank_integrators.torch.FactoredLayer`), so a step costs one forward and one
backward pass in the standard loop ``opt.zero_grad(); loss.backward(); opt.step()``; the two
products in the new directions come from the inputs and output gradients the layer recorded in
that pass, without another pass.

Optionally a global **budget** of adapter parameters is decided across layers after every step:
the singular values of all adapters compete, and the largest are kept (every adapter keeps at
least rank 1) while the total ``sum_l r_l (m_l + n_l) + r_l^2`` stays within the budget.

The pretrained weights are never touched: they are frozen, so they have no gradient and the
optimizer skips them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _backend as bk
from ..integrators.parallel_bug import ParallelBUG
from ..substeps import Euler
from ..training.optimizers import SGD, Adam
from ..truncation import Tolerance, tail_norms
from .layers import FactoredLayer
from .optimizer import DLRTOptimizer

__all__ = ["BudgetRecord", "GeoLoRA", "adapter_parameters"]


@dataclass(frozen=True)
class BudgetRecord:
    """What the global budget decided after one step.

    Attributes
    ----------
    budget : int
        The largest total number of adapter parameters.
    ranks_before, ranks_after : tuple of int
        The rank of every low-rank layer after the integrator's step, and after the budget.
    params_before, params_after : int
        The total number of adapter parameters at these ranks.
    tail : float
        Frobenius norm of all singular values the budget discarded, over every layer.
    """

    budget: int
    ranks_before: tuple[int, ...]
    ranks_after: tuple[int, ...]
    params_before: int
    params_after: int
    tail: float


def _layer_cost(layer: FactoredLayer, r: int) -> int:
    m, n = int(layer.U.shape[0]), int(layer.V.shape[0])
    return r * (m + n) + r * r


def adapter_parameters(layers: Iterable[FactoredLayer]) -> int:
    """The number of factor parameters ``sum_l r_l (m_l + n_l) + r_l^2`` of low-rank layers."""
    return sum(_layer_cost(layer, layer.rank) for layer in layers)


class GeoLoRA(DLRTOptimizer):
    """GeoLoRA: the parallel BUG with Euler substeps as a :class:`torch.optim.Optimizer`.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups (typically ``model.parameters()`` of a model with
        :class:`~lowrank_integrators.torch.LowRankAdapter` modules, see
        :func:`~lowrank_integrators.torch.add_adapters`). The factors of every adapter (and of
        every :class:`~lowrank_integrators.torch.LowRankLinear` or
        :class:`~lowrank_integrators.torch.LowRankConv2d`) are stepped by the integrator, other
        parameters with a gradient by SGD or Adam; frozen parameters are left alone.
    lr : float
        Learning rate: the step size of the integrator.
    tau : float, default 0.1
        Relative truncation tolerance of every layer: after a step the discarded singular values
        of a layer's core have Frobenius norm at most ``tau`` times that of the core.
    rmax : int, optional
        The largest rank of every layer.
    budget : int, optional
        The largest total number of adapter parameters ``sum_l r_l (m_l + n_l) + r_l^2`` over
        all low-rank layers, enforced after every step (see the module docstring). It must
        allow rank 1 everywhere.
    adam : bool, default False
        Adam-type directions (Kingma & Ba 2015, arXiv:1412.6980) instead of the plain gradient:
        the moments of the adapters live in the coordinates of the products ``G V``,
        ``G^T U``, ``U^T G V`` and are transported into the new bases at every basis change
        (see :class:`lowrank_integrators.training.Adam`); other parameters take standard Adam.
    betas : (float, float), default (0.9, 0.999)
        Adam's decay rates (with ``adam=True``).
    eps : float, default 1e-8
        Adam's denominator offset (with ``adam=True``).
    reject : bool, default False
        Step rejection of the parallel BUG (Ceruti-Kusch-Lubich 2024): recompute a step in
        doubled bases when it wants more rank. GeoLoRA as published takes no rejection; a
        rejected step costs products from the recorded pass, never another pass.

    Attributes
    ----------
    last_infos : list of StepInfo
        The integrator's bookkeeping of the last step, one per low-rank layer.
    last_budget : BudgetRecord or None
        What the budget decided at the last step (None without a budget).

    Examples
    --------
    >>> import torch
    >>> from lowrank_integrators.torch import GeoLoRA, add_adapters
    >>> g = torch.Generator().manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> net = add_adapters(net, 2, generator=g)
    >>> opt = GeoLoRA(net.parameters(), lr=0.1, tau=0.1, budget=60)
    >>> x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    >>> opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
    >>> opt.last_budget.params_after <= 60
    True
    """

    _EXTRA = (*DLRTOptimizer._EXTRA, "budget", "last_budget")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        tau: float = 0.1,
        *,
        rmax: int | None = None,
        budget: int | None = None,
        adam: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        reject: bool = False,
    ) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"tau must be a number >= 0, got {type(tau).__name__}")
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {tau}")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ValueError(f"budget must be None or an int >= 1, got {budget!r}")
        if not isinstance(adam, bool):
            raise TypeError(f"adam must be a bool, got {type(adam).__name__}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        if not isinstance(reject, bool):
            raise TypeError(f"reject must be a bool, got {type(reject).__name__}")
        method = ParallelBUG(
            Tolerance(float(tau), relative=True, rmax=rmax), reject=reject, substep=Euler()
        )
        direction = Adam(betas[0], betas[1], eps) if adam else SGD()
        self.budget = budget
        self.last_budget: BudgetRecord | None = None
        super().__init__(params, lr, method, direction=direction)
        matrix_layers = self._matrix_layers()
        if len(matrix_layers) != len(self._layers):
            raise ValueError(
                "GeoLoRA steps matrix low-rank layers (adapters, LowRankLinear, LowRankConv2d); "
                "use DLRTOptimizer for TuckerConv2d layers"
            )
        if budget is not None:
            floor = sum(_layer_cost(layer, 1) for layer in matrix_layers)
            if budget < floor:
                raise ValueError(
                    f"budget = {budget} is below {floor}, the adapter parameters at rank 1 in "
                    f"every one of the {len(matrix_layers)} low-rank layers"
                )

    def _matrix_layers(self) -> list[FactoredLayer]:
        return [layer for layer in self._layers if isinstance(layer, FactoredLayer)]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One GeoLoRA step from the gradients of the last backward pass, then the budget.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; called once (the step needs no other
            evaluation).

        Returns
        -------
        The loss returned by ``closure``, or None.
        """
        loss = super().step(closure)
        if self.budget is not None:
            self.last_budget = self._apply_budget(self.budget)
        return loss

    def _apply_budget(self, budget: int) -> BudgetRecord:
        layers = self._matrix_layers()
        ranks = [layer.rank for layer in layers]
        total = adapter_parameters(layers)
        if total <= budget:
            return BudgetRecord(budget, tuple(ranks), tuple(ranks), total, total, 0.0)
        svds, sigmas = [], []
        for layer in layers:
            P, s, Qh, on_host = bk.svd_to_host(layer.S.detach())
            svds.append((P, s, Qh))
            sigmas.append(on_host.astype(np.float64))
        keep = [1] * len(layers)
        left = budget - sum(_layer_cost(layer, 1) for layer in layers)
        closed: set[int] = set()
        order = sorted(
            ((float(s[i]), j, i) for j, s in enumerate(sigmas) for i in range(1, len(s))),
            key=lambda c: (-c[0], c[1], c[2]),
        )
        for _, j, i in order:
            if j in closed or i != keep[j]:
                continue
            cost = _layer_cost(layers[j], i + 1) - _layer_cost(layers[j], i)
            if cost <= left:
                keep[j] += 1
                left -= cost
            else:
                closed.add(j)  # a layer's kept singular values are a leading block
        tail2 = 0.0
        for layer, (P, s, Qh), sig, k in zip(layers, svds, sigmas, keep, strict=True):
            tail2 += float(tail_norms(sig)[k]) ** 2
            if k == layer.rank:
                continue
            U = layer.U.detach() @ P[:, :k]
            V = layer.V.detach() @ Qh[:k].mT
            layer.set_factors(U, torch.diag(s[:k]), V)
        return BudgetRecord(
            budget,
            tuple(ranks),
            tuple(keep),
            total,
            adapter_parameters(layers),
            math.sqrt(tail2),
        )

    def __repr__(self) -> str:
        lrs = ", ".join(f"{g['lr']}" for g in self.param_groups)
        return (
            f"GeoLoRA(lr=[{lrs}], method={self.method!r}, direction={self.direction!r}, "
            f"budget={self.budget}, low-rank layers={len(self._layers)})"
        )
