r"""PyTorch adapter of dynamical low-rank training (needs the ``torch`` extra).

* :class:`LowRankLinear`: a linear layer ``z = x W^T + b`` whose weight is held as factors
  ``W = U S V^T`` (buffers ``U``, ``S``, ``V``; the integrator, not autograd, moves them).
* :class:`TorchGradient`: the ``gradient(weights, params, batch)`` of
  :class:`~lowrank_integrators.training.LowRankTraining` for any ``torch.nn.Module`` containing
  such layers: one forward pass (``torch.func.functional_call`` at the requested point) and one
  autograd backward pass give the gradients of the other parameters and, for every low-rank
  layer, its input ``X`` and output gradient ``G = dL/dz``. From them the products are exact
  autograd gradients at the factored weight: writing the layer as ``z = x V K^T`` gives
  ``dL/dK = G^T (X V) = grad(W) V``; as ``z = x L U^T`` (with ``L = V S^T``),
  ``dL/dL = X^T (G U) = grad(W)^T U``; as ``z = x V S^T U^T``, ``dL/dS = (G U)^T (X V)``.
  The weight matrix is never formed.
* :class:`DLRTOptimizer`: an optimizer-like object that steps any such model with any matrix
  integrator: ``opt.step(x, y)``.

Given the same weights and batch, the adapter takes the same step as the NumPy client (the
integrators are array-API generic and run on the torch tensors directly).

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), Low-rank lottery tickets: finding
efficient low-rank neural networks via matrix differential equations, NeurIPS 35,
arXiv:2205.13571.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _backend as bk
from ..factors import LowRankMatrix
from ..integrators.base import Integrator
from ..threads import limited
from .client import LowRankTraining, StepReport
from .optimizers import Optimizer

__all__ = ["DLRTOptimizer", "LowRankLinear", "TorchGradient", "TorchPass"]


class LowRankLinear(torch.nn.Module):
    """``z = x (U S V^T)^T + b`` with the factors as buffers.

    Parameters
    ----------
    in_features, out_features : int
    rank : int
        Initial rank.
    bias : bool, default True
    dtype, device : optional
    generator : torch.Generator, optional
        For the initial draw: the best rank-r approximation of a matrix uniform in
        ``[-sqrt(6/in_features), sqrt(6/in_features)]`` (He initialisation).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(
                f"rank must satisfy 1 <= rank <= min(in_features, out_features) = "
                f"{min(in_features, out_features)}, got {rank}"
            )
        self.in_features = in_features
        self.out_features = out_features
        kw = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        bound = math.sqrt(6.0 / in_features)
        W = (torch.rand(out_features, in_features, generator=generator, **kw) * 2 - 1) * bound
        P, sig, Qh = torch.linalg.svd(W, full_matrices=False)
        self.register_buffer("U", P[:, :rank].contiguous())
        self.register_buffer("S", torch.diag(sig[:rank]))
        self.register_buffer("V", Qh[:rank].mT.contiguous())
        self.bias = torch.nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self._capture: list[tuple[Any, ...]] | None = None

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    @property
    def factors(self) -> LowRankMatrix:
        """The weight as a :class:`~lowrank_integrators.LowRankMatrix` of the buffers."""
        return LowRankMatrix(self.U, self.S, self.V, check=False)

    def set_factors(self, W: LowRankMatrix) -> None:
        """Replace the weight (its rank may change)."""
        U, S, V = W
        self.U, self.S, self.V = U, S, V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xV = x @ self.V
        z = (xV @ self.S.mT) @ self.U.mT
        if self._capture is not None:
            if not z.requires_grad:
                # no trainable input upstream: make z a leaf so that dL/dz is still computed
                z.requires_grad_(True)
            self._capture.append((x.detach(), z, self.V, xV.detach()))
        return z if self.bias is None else z + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )


class TorchPass:
    """One forward/backward pass of a torch model (a ``GradientPass``)."""

    def __init__(
        self,
        loss: float,
        param_grads: list[torch.Tensor],
        acts: list[tuple[torch.Tensor, torch.Tensor]],
        formed: list[tuple[Any, Any]] | None = None,
    ) -> None:
        self.loss = loss
        self.param_grads = param_grads
        self._acts = acts
        # (V, X V) of every layer: the forward pass formed X V at the layer's own basis, which
        # a request in that very basis (the K-step of DLRT) reuses.
        self._formed = formed if formed is not None else [(None, None) for _ in acts]

    def _XV(self, layer: int, V: torch.Tensor) -> torch.Tensor:
        V_formed, XV = self._formed[layer]
        X = self._acts[layer][0]
        if V_formed is V:
            return XV
        if (
            V_formed is not None
            and not V.is_complex()
            and V.shape[0] == V_formed.shape[0]
            and V.shape[1] > V_formed.shape[1]
        ):
            # a basis whose leading block is V_formed up to column signs (augmented bases):
            # only the new columns are formed
            r = V_formed.shape[1]
            lead = V[:, :r]
            one = torch.ones((), dtype=V.dtype, device=V.device)
            signs = torch.where((lead * V_formed).sum(dim=0) < 0, -one, one)
            if torch.equal(lead, V_formed * signs):
                return torch.cat([XV * signs, X @ V[:, r:]], dim=1)
        return X @ V

    def right(self, layer: int, V: torch.Tensor) -> torch.Tensor:
        G = self._acts[layer][1]
        return bk.adjoint(G) @ self._XV(layer, V)

    def left(self, layer: int, U: torch.Tensor) -> torch.Tensor:
        X, G = self._acts[layer]
        return bk.adjoint(X) @ (G @ U)

    def project(self, layer: int, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        G = self._acts[layer][1]
        return bk.adjoint(G @ U) @ self._XV(layer, V)


class TorchGradient:
    """``gradient(weights, params, batch)`` for a model with :class:`LowRankLinear` layers.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        ``loss_fn(model(x), y) -> scalar tensor``, e.g. ``torch.nn.functional.cross_entropy``.

    Attributes
    ----------
    layers : list of LowRankLinear
        The low-rank layers in ``model.modules()`` order (the order of ``weights``).
    param_names : list of str
        The other parameters, in ``model.named_parameters()`` order (the order of ``params``).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
        self.layer_names = [n for n, _ in named]
        self.layers = [m for _, m in named]
        self.param_names = [n for n, _ in model.named_parameters()]

    def __call__(
        self, weights: Sequence[LowRankMatrix], params: Sequence[torch.Tensor], batch: Any
    ) -> TorchPass:
        x, y = batch
        if len(weights) != len(self.layers) or len(params) != len(self.param_names):
            raise ValueError(
                f"expected {len(self.layers)} weights and {len(self.param_names)} parameters, got "
                f"{len(weights)} and {len(params)}"
            )
        leaves = [p.detach().requires_grad_(True) for p in params]
        mapping: dict[str, torch.Tensor] = dict(zip(self.param_names, leaves, strict=True))
        for name, W in zip(self.layer_names, weights, strict=True):
            prefix = f"{name}." if name else ""
            mapping[prefix + "U"], mapping[prefix + "S"], mapping[prefix + "V"] = W.U, W.S, W.V
        captures: list[list[tuple[Any, ...]]] = [[] for _ in self.layers]
        for layer, cap in zip(self.layers, captures, strict=True):
            layer._capture = cap
        try:
            with torch.enable_grad():
                out = torch.func.functional_call(self.model, mapping, (x,))
                loss = self.loss_fn(out, y)
        finally:
            for layer in self.layers:
                layer._capture = None
        for i, cap in enumerate(captures):
            if len(cap) != 1:
                raise ValueError(
                    f"low-rank layer {self.layer_names[i]!r} ran {len(cap)} times in one forward "
                    "pass; a shared layer is not supported"
                )
        zs = [cap[0][1] for cap in captures]
        grads = torch.autograd.grad(loss, leaves + zs, allow_unused=True)
        n = len(leaves)
        param_grads = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads[:n], leaves, strict=True)
        ]
        acts = []
        for cap, g, z in zip(captures, grads[n:], zs, strict=True):
            acts.append((cap[0][0], g if g is not None else torch.zeros_like(z)))
        formed = [(cap[0][2], cap[0][3]) for cap in captures]
        return TorchPass(float(loss.detach()), [g.detach() for g in param_grads], acts, formed)


class DLRTOptimizer:
    """Steps a torch model with low-rank layers by a matrix integrator.

    Parameters
    ----------
    model : torch.nn.Module
        Containing :class:`LowRankLinear` layers (moved by ``method``) and ordinary parameters
        (moved by ``optimizer``).
    method : Integrator
        E.g. ``AugmentedBUG(Tolerance(0.1, relative=True, rmin=2), substep=Euler())`` (DLRT).
    lr : float
        Learning rate (the integrator's step size).
    loss_fn : callable
        ``loss_fn(model(x), y)``.
    optimizer : Optimizer, optional
        ``SGD()`` (default), ``HeavyBall(beta)`` or ``Adam()``.

    Examples
    --------
    >>> import torch
    >>> from lowrank_integrators import AugmentedBUG, Euler, Tolerance
    >>> from lowrank_integrators.training.torch_adapter import DLRTOptimizer, LowRankLinear
    >>> g = torch.Generator().manual_seed(0)
    >>> model = torch.nn.Sequential(LowRankLinear(8, 16, 4, generator=g), torch.nn.ReLU(),
    ...                             torch.nn.Linear(16, 3))
    >>> opt = DLRTOptimizer(model, AugmentedBUG(Tolerance(0.1, relative=True), substep=Euler()),
    ...                     lr=0.1, loss_fn=torch.nn.functional.cross_entropy)
    >>> report = opt.step(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    >>> report.n_passes
    1
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: Integrator,
        lr: float,
        loss_fn: Callable[..., torch.Tensor],
        optimizer: Optimizer | None = None,
    ) -> None:
        self.gradient = TorchGradient(model, loss_fn)
        self.client = LowRankTraining(method, self.gradient, optimizer)
        self.model = model
        self.lr = lr
        self._params = list(model.parameters())
        self.state = self.client.init(
            [layer.factors for layer in self.gradient.layers],
            [p.detach().clone() for p in self._params],
        )

    @limited(torch=True)
    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepReport:
        """One training step on the batch ``(x, y)``; the model is updated in place."""
        self.state, report = self.client.step(self.state, (x, y), self.lr)
        for layer, W in zip(self.gradient.layers, self.state.weights, strict=True):
            layer.set_factors(W)
        with torch.no_grad():
            for p, new in zip(self._params, self.state.params, strict=True):
                p.copy_(new)
        return report
