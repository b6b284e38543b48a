r"""Optimizers of dynamical low-rank training: the direction ``d`` of the flow ``W' = -d``.

An optimizer turns gradients into the descent direction that the integrator integrates. For a
low-rank layer the integrator never asks for ``d`` itself, only for the products ``d V``,
``d^H U`` and ``U^H d V`` in the bases of its substeps; these bases change at every step
(augmentation, truncation). An optimizer state kept in the coordinates of old bases and reused
as if the bases had not changed is wrong (the transport pitfall of the low-rank training codes);
the optimizers below keep their state where a basis change cannot corrupt it.

* :class:`SGD`: ``d = grad L`` (the plain gradient flow of Schotthöfer et al., 2022,
  arXiv:2205.13571).
* :class:`HeavyBall`: Polyak's heavy ball ``W_{k+1} = W_k - lr g_k + beta (W_k - W_{k-1})``.
  The momentum is the previous *displacement* ``W_k - W_{k-1}``, a difference of two factored
  matrices: it lives in the ambient space, so no transport is needed at all; the integrator
  receives ``d = grad L - (beta/lr) (W_k - W_{k-1})`` through exact factored products.
* :class:`Adam`: Kingma & Ba (2015, arXiv:1412.6980) on the coordinates in which the integrator
  asks for products (the K-, L- and S-gradients). Before a moment is used in new bases it is
  transported: first moments linearly (``m V_old^H V_new``, which is exact for the part of the
  ambient moment in the old span), second moments with the entrywise squared transfer matrix
  (the variance of a combination of independent coordinates), which keeps them non-negative.
  Within one step every request uses the moments of the previous step (transported to its
  bases) and the step commits, per product kind, the moments of its last request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _backend as bk
from ..factors import LowRankMatrix

__all__ = ["SGD", "Adam", "HeavyBall", "Optimizer"]

# An optimizer state is a JSON-like tree: {"layers": [dict, ...], "params": [dict, ...]} whose
# leaves are arrays (so that checkpoints can store it) or None.


class Optimizer(ABC):
    """Base class: how gradients become directions, for low-rank layers and other parameters."""

    def init(self, n_layers: int, params: Sequence[Any]) -> dict[str, Any]:
        """The state before the first step."""
        return {"layers": [{} for _ in range(n_layers)], "params": [{} for _ in params]}

    @abstractmethod
    def layer_view(self, state: dict[str, Any], layer: int, step: int, W: LowRankMatrix) -> Any:
        """An object answering the integrator's product requests of ``layer`` in one step."""

    @abstractmethod
    def update_params(
        self,
        state: dict[str, Any],
        params: Sequence[Any],
        grads: Sequence[Any],
        lr: float,
        step: int,
    ) -> tuple[list[Any], dict[str, Any]]:
        """One step of the other parameters; returns them and the updated state."""

    def commit_layers(
        self,
        state: dict[str, Any],
        views: Sequence[Any],
        old: Sequence[LowRankMatrix],
        new: Sequence[LowRankMatrix],
    ) -> dict[str, Any]:
        """The state after every layer has stepped from ``old`` to ``new``."""
        return state


class _GradientView:
    """Products of ``F = -d`` with ``d`` the gradient (plus a subclass's correction)."""

    def product(
        self, kind: str, gp: Any, layer: int, Y: LowRankMatrix, bases: tuple[Any, ...], lr: float
    ) -> Any:
        g = _gradient_product(kind, gp, layer, bases)
        d = self.direction(kind, g, bases, lr)
        # -d without a copy where d is an array nobody else holds: a direction computed here,
        # or a product of a pass that declares its products fresh (``fresh_products``).
        fresh = d is not g or getattr(gp, "fresh_products", False)
        if fresh and (d.flags.writeable if type(d) is np.ndarray else bk.allows_inplace(d)):
            d *= -1
            return d
        return -d

    def direction(self, kind: str, g: Any, bases: tuple[Any, ...], lr: float) -> Any:
        return g


def _gradient_product(kind: str, gp: Any, layer: int, bases: tuple[Any, ...]) -> Any:
    if kind == "right":
        return gp.right(layer, bases[0])
    if kind == "left":
        return gp.left(layer, bases[0])
    if kind == "project":
        return gp.project(layer, bases[0], bases[1])
    raise ValueError(f"unknown product kind {kind!r}")


class SGD(Optimizer):
    """Plain gradient descent: the direction is the gradient (the gradient flow itself)."""

    def layer_view(self, state: dict[str, Any], layer: int, step: int, W: LowRankMatrix) -> Any:
        return _GradientView()

    def update_params(
        self,
        state: dict[str, Any],
        params: Sequence[Any],
        grads: Sequence[Any],
        lr: float,
        step: int,
    ) -> tuple[list[Any], dict[str, Any]]:
        return [p - lr * g for p, g in zip(params, grads, strict=True)], state

    def __repr__(self) -> str:
        return "SGD()"


class _HeavyBallView(_GradientView):
    def __init__(self, beta: float, W: LowRankMatrix, W_prev: LowRankMatrix | None) -> None:
        self.beta = beta
        self.W = W
        self.W_prev = W_prev

    def direction(self, kind: str, g: Any, bases: tuple[Any, ...], lr: float) -> Any:
        if self.W_prev is None or self.beta == 0.0:
            return g
        c = self.beta / lr
        if kind == "right":
            (V,) = bases
            disp = self.W.matmul(V) - self.W_prev.matmul(V)
        elif kind == "left":
            (U,) = bases
            disp = self.W.rmatmul_adjoint(U) - self.W_prev.rmatmul_adjoint(U)
        else:
            U, V = bases
            disp = bk.adjoint(U) @ (self.W.matmul(V) - self.W_prev.matmul(V))
        return g - c * disp


class HeavyBall(Optimizer):
    """Polyak's heavy-ball momentum with the previous displacement as momentum.

    ``W_{k+1} = W_k - lr grad L(W_k) + beta (W_k - W_{k-1})`` for the other parameters; a
    low-rank layer integrates ``W' = -(grad L(W) - (beta/lr)(W_k - W_{k-1}))`` over ``lr`` with its
    integrator, so that with Euler substeps and no truncation it takes the same step projected
    onto its bases.

    Parameters
    ----------
    beta : float, default 0.9
        Momentum coefficient in ``[0, 1)``.
    """

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = _check_unit("beta", beta)

    def layer_view(self, state: dict[str, Any], layer: int, step: int, W: LowRankMatrix) -> Any:
        s = state["layers"][layer]
        prev = None
        if s.get("U") is not None:
            prev = LowRankMatrix(s["U"], s["S"], s["V"], check=False)
        return _HeavyBallView(self.beta, W, prev)

    def update_params(
        self,
        state: dict[str, Any],
        params: Sequence[Any],
        grads: Sequence[Any],
        lr: float,
        step: int,
    ) -> tuple[list[Any], dict[str, Any]]:
        new, slots = [], []
        for p, g, s in zip(params, grads, state["params"], strict=True):
            prev = s.get("prev")
            q = p - lr * g
            if prev is not None:
                q = q + self.beta * (p - prev)
            new.append(q)
            slots.append({"prev": p})
        return new, {"layers": state["layers"], "params": slots}

    def commit_layers(
        self,
        state: dict[str, Any],
        views: Sequence[Any],
        old: Sequence[LowRankMatrix],
        new: Sequence[LowRankMatrix],
    ) -> dict[str, Any]:
        layers = [{"U": W.U, "S": W.S, "V": W.V} for W in old]
        return {"layers": layers, "params": state["params"]}

    def __repr__(self) -> str:
        return f"HeavyBall(beta={self.beta})"


class _AdamView(_GradientView):
    def __init__(self, opt: Adam, slot: dict[str, Any], step: int) -> None:
        self.opt = opt
        self.slot = slot
        self.k = step + 1
        self.last: dict[str, dict[str, Any]] = {}

    def direction(self, kind: str, g: Any, bases: tuple[Any, ...], lr: float) -> Any:
        xp = bk.namespace(g)
        m_old, v_old = self._transported(kind, bases, g)
        b1, b2 = self.opt.beta1, self.opt.beta2
        g2 = xp.abs(g) ** 2
        m = b1 * m_old + (1.0 - b1) * g
        v = b2 * v_old + (1.0 - b2) * g2
        self.last[kind] = {"m": m, "v": v, "bases": bases}
        m_hat = m / (1.0 - b1**self.k)
        v_hat = v / (1.0 - b2**self.k)
        return m_hat / (xp.sqrt(v_hat) + self.opt.eps)

    def _transported(self, kind: str, bases: tuple[Any, ...], g: Any) -> tuple[Any, Any]:
        xp = bk.namespace(g)
        m = self.slot.get(f"{kind}_m")
        if m is None:
            return xp.zeros_like(g), xp.zeros(g.shape, dtype=bk.real_dtype(xp, g.dtype))
        v = self.slot[f"{kind}_v"]
        if kind in ("right", "left"):
            T = bk.adjoint(self.slot[f"{kind}_b0"]) @ bases[0]
            return m @ T, v @ (xp.abs(T) ** 2)
        TU = bk.adjoint(self.slot["project_b0"]) @ bases[0]
        TV = bk.adjoint(self.slot["project_b1"]) @ bases[1]
        m_t = bk.adjoint(TU) @ m @ TV
        v_t = xp.matrix_transpose(xp.abs(TU) ** 2) @ v @ (xp.abs(TV) ** 2)
        return m_t, v_t


class Adam(Optimizer):
    """Adam with moments transported across the integrator's basis changes.

    Parameters
    ----------
    beta1, beta2 : float
        Decay rates of the first and second moments, in ``[0, 1)``.
    eps : float
        Added to the square root of the second moment.

    Notes
    -----
    See the module docstring for the transport of the moments of low-rank layers. For the other
    parameters this is the standard method (Kingma & Ba 2015, arXiv:1412.6980).
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.beta1 = _check_unit("beta1", beta1)
        self.beta2 = _check_unit("beta2", beta2)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.eps = float(eps)

    def layer_view(self, state: dict[str, Any], layer: int, step: int, W: LowRankMatrix) -> Any:
        return _AdamView(self, state["layers"][layer], step)

    def update_params(
        self,
        state: dict[str, Any],
        params: Sequence[Any],
        grads: Sequence[Any],
        lr: float,
        step: int,
    ) -> tuple[list[Any], dict[str, Any]]:
        k = step + 1
        new, slots = [], []
        for p, g, s in zip(params, grads, state["params"], strict=True):
            xp = bk.namespace(g)
            m = s.get("m")
            v = s.get("v")
            if m is None:
                m = xp.zeros_like(g)
                v = xp.zeros_like(g)
            m = self.beta1 * m + (1.0 - self.beta1) * g
            v = self.beta2 * v + (1.0 - self.beta2) * g * g
            m_hat = m / (1.0 - self.beta1**k)
            v_hat = v / (1.0 - self.beta2**k)
            new.append(p - lr * m_hat / (xp.sqrt(v_hat) + self.eps))
            slots.append({"m": m, "v": v})
        return new, {"layers": state["layers"], "params": slots}

    def commit_layers(
        self,
        state: dict[str, Any],
        views: Sequence[Any],
        old: Sequence[LowRankMatrix],
        new: Sequence[LowRankMatrix],
    ) -> dict[str, Any]:
        layers = []
        for slot, view in zip(state["layers"], views, strict=True):
            slot = dict(slot)
            for kind, rec in view.last.items():
                slot[f"{kind}_m"] = rec["m"]
                slot[f"{kind}_v"] = rec["v"]
                for j, B in enumerate(rec["bases"]):
                    slot[f"{kind}_b{j}"] = B
            layers.append(slot)
        return {"layers": layers, "params": state["params"]}

    def __repr__(self) -> str:
        return f"Adam(beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return float(value)
