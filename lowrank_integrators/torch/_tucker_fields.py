r"""The gradient field of a :class:`TuckerConv2d` step and its SGD, heavy-ball and Adam directions.

A Tucker integrator with Euler substeps asks a problem for the mode-i K-step field
``Mat_i(F x_{j != i} U_j^T) Q_i`` and the core field ``F x_j B_j^T`` (in the bases ``B_j`` of
the step), each once, with ``F = -d`` the negative direction at the start point. Here ``d`` is
the kernel gradient (SGD), the gradient minus ``(beta/lr)`` times the previous displacement
``W_k - W_{k-1}`` (heavy ball, exact for Tucker tensors through small products) or Adam's
direction in the coordinates of each request, with moments transported into the coordinates
of the next step as :class:`~lowrank_integrators.training.Adam` does for matrices: first
moments by the transfer matrix of the coordinates, second moments by its entrywise square.

At the start bases the gradients come from the partial projections the backward passes kept
(:meth:`TuckerConv2d.mode_projection`, :meth:`TuckerConv2d.core_gradient`); in other bases
from the recorded passes (:meth:`TuckerConv2d.kernel_projection`). The kernel is never formed.

Zangrando, Schotthöfer, Ceruti, Kusch, Tudisco (2023), Rank-adaptive spectral pruning of
convolutional layers during training, arXiv:2305.19059.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..tensor_problems import TensorODE
from ..training.optimizers import SGD, Adam, HeavyBall, Optimizer
from ..tucker import TuckerTensor, fold, multi_mode_product, unfold
from .tucker_layers import TuckerConv2d

__all__ = ["TuckerDirection", "TuckerLayerField"]


def tucker_projection(T: TuckerTensor, bases: Sequence[Any], skip: int | None) -> torch.Tensor:
    """``T x_{j != skip} bases[j]^T`` of a Tucker tensor, from its factors."""
    mats = [U if j == skip else bases[j].mT @ U for j, U in enumerate(T.factors)]
    return multi_mode_product(T.core, mats)


class TuckerDirection:
    """The direction ``d`` of one Tucker layer's step, request by request.

    Parameters
    ----------
    direction : SGD, HeavyBall or Adam
    slot : dict
        The layer's optimizer state (read; the new entries are returned by :meth:`commit`).
    step : int
        Steps the layer took before.
    start : TuckerTensor
        The kernel at the start of the step.
    lr : float
        The step size (the heavy-ball displacement enters as ``(beta/lr) (W_k - W_{k-1})``).
    """

    def __init__(
        self,
        direction: Optimizer,
        slot: dict[str, Any],
        step: int,
        start: TuckerTensor,
        lr: float,
    ) -> None:
        self.direction = direction
        self.slot = slot
        self.k = step + 1
        self.start = start
        self.lr = lr
        self.last: dict[str, Any] = {}

    def mode(
        self, mode: int, g: torch.Tensor, bases: Sequence[Any], Q: torch.Tensor, lr: float
    ) -> torch.Tensor:
        """``d`` for the mode-``mode`` K-step product ``g = Mat_i(grad x_{j != i} U_j^T) Q``."""
        d = self.direction
        if isinstance(d, HeavyBall):
            return g - self._displacement(
                lambda T: unfold(tucker_projection(T, bases, mode), mode) @ Q
            )
        if isinstance(d, Adam):
            coords = {f"U{j}": B for j, B in enumerate(bases) if j != mode}
            coords["Q"] = Q
            return self._adam(
                f"mode{mode}", g, coords, lambda m, v: self._mode_transport(mode, m, v, bases, Q)
            )
        return g

    def core(self, g: torch.Tensor, bases: Sequence[Any], lr: float) -> torch.Tensor:
        """``d`` for the core product ``g = grad x_j B_j^T``."""
        d = self.direction
        if isinstance(d, HeavyBall):
            return g - self._displacement(lambda T: tucker_projection(T, bases, None))
        if isinstance(d, Adam):
            coords = {f"B{j}": B for j, B in enumerate(bases)}
            return self._adam("core", g, coords, lambda m, v: self._core_transport(m, v, bases))
        return g

    # --- heavy ball ---------------------------------------------------------------------------
    def _displacement(self, project: Callable[[TuckerTensor], torch.Tensor]) -> Any:
        if "prev_core" not in self.slot or self.direction.beta == 0.0:  # type: ignore[attr-defined]
            return 0.0
        prev = TuckerTensor(
            self.slot["prev_core"], [self.slot[f"prev_U{j}"] for j in range(4)], check=False
        )
        c = self.direction.beta / self.lr  # type: ignore[attr-defined]
        return c * (project(self.start) - project(prev))

    # --- Adam ---------------------------------------------------------------------------------
    def _adam(
        self,
        kind: str,
        g: torch.Tensor,
        coords: dict[str, torch.Tensor],
        transport: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        opt = self.direction
        assert isinstance(opt, Adam)
        if f"{kind}_m" in self.slot:
            m_old, v_old = transport(self.slot[f"{kind}_m"], self.slot[f"{kind}_v"])
        else:
            m_old, v_old = torch.zeros_like(g), torch.zeros_like(g)
        m = opt.beta1 * m_old + (1.0 - opt.beta1) * g
        v = opt.beta2 * v_old + (1.0 - opt.beta2) * g * g
        self.last.update({f"{kind}_m": m, f"{kind}_v": v})
        self.last.update({f"{kind}_{name}": B for name, B in coords.items()})
        m_hat = m / (1.0 - opt.beta1**self.k)
        v_hat = v / (1.0 - opt.beta2**self.k)
        return m_hat / (torch.sqrt(v_hat) + opt.eps)

    def _mode_transport(
        self, mode: int, m: torch.Tensor, v: torch.Tensor, bases: Sequence[Any], Q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # T = V_old^T V_new with V = (kron_{j != i} U_j) Q, formed from the small factors only
        s = self.slot
        old = [None if j == mode else s[f"mode{mode}_U{j}"] for j in range(4)]
        ranks = [int(Q.shape[1]) if j == mode else int(B.shape[1]) for j, B in enumerate(bases)]
        Z = fold(Q.mT, mode, ranks)
        Z = multi_mode_product(Z, [None if j == mode else old[j].mT @ bases[j] for j in range(4)])
        T = (unfold(Z, mode) @ s[f"mode{mode}_Q"]).mT
        return m @ T, v @ (T * T)

    def _core_transport(
        self, m: torch.Tensor, v: torch.Tensor, bases: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T = [(self.slot[f"core_B{j}"].mT @ B).mT for j, B in enumerate(bases)]
        return multi_mode_product(m, T), multi_mode_product(v, [t * t for t in T])

    def commit(self) -> dict[str, Any]:
        """The layer's optimizer state after the step."""
        if isinstance(self.direction, HeavyBall):
            out = {"prev_core": self.start.core}
            out.update({f"prev_U{j}": U for j, U in enumerate(self.start.factors)})
            return out
        if isinstance(self.direction, Adam):
            return dict(self.last)
        assert isinstance(self.direction, SGD)
        return {}


class TuckerLayerField(TensorODE):
    """``F = -d`` of one :class:`TuckerConv2d` over an Euler step, answered from its passes.

    Parameters
    ----------
    layer : TuckerConv2d
        With recorded backward passes at the kernel ``start``.
    start : TuckerTensor
        The layer's kernel (its factors are the start bases of the step).
    direction : TuckerDirection
    """

    def __init__(
        self, layer: TuckerConv2d, start: TuckerTensor, direction: TuckerDirection
    ) -> None:
        self.layer = layer
        self.start = start
        self.direction = direction
        self.lr = direction.lr
        self.shape = (layer.out_channels, layer.in_channels, *layer.kernel_size)

    def _at_start(self, bases: Sequence[Any], skip: int | None) -> bool:
        factors = self.start.factors
        return all(j == skip or bases[j] is U for j, U in enumerate(factors))

    def project(
        self, t: float, Y: TuckerTensor, bases: Sequence[Any], skip: int | None = None
    ) -> torch.Tensor:
        if not isinstance(self.direction.direction, SGD):
            raise NotImplementedError(
                "with momentum or Adam a TuckerConv2d step takes its products through "
                "mode_field and core_field only"
            )
        return -self.layer.kernel_projection(list(bases), skip)

    def mode_field(self, bases: Sequence[Any], Q: Any, mode: int) -> Callable[[float, Any], Any]:
        if self._at_start(bases, mode):
            P = self.layer.mode_projection(mode)
        else:
            P = self.layer.kernel_projection(list(bases), mode)
        F = -self.direction.mode(mode, unfold(P, mode) @ Q, bases, Q, self.lr)
        return lambda t, K: F

    def core_field(self, bases: Sequence[Any]) -> Callable[[float, Any], Any]:
        if self._at_start(bases, None):
            g = self.layer.core_gradient()
        else:
            g = self.layer.kernel_projection(list(bases), None)
        F = -self.direction.core(g, bases, self.lr)
        return lambda t, C: F
