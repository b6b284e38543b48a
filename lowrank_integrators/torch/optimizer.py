r"""``DLRTOptimizer``: dynamical low-rank training as a :class:`torch.optim.Optimizer`.

The factors ``U, S, V`` of every low-rank layer (:class:`~lowrank_integrators.torch.LowRankLinear`,
:class:`~lowrank_integrators.torch.LowRankConv2d`) move by a matrix integrator of the library
applied to the gradient flow ``W' = -d(W)`` over one step of length ``lr`` (``d`` is the
gradient for SGD, see :mod:`lowrank_integrators.training.optimizers`); every other parameter
takes a step of SGD, heavy ball or Adam. The default integrator is DLRT: the rank-adaptive
augmented BUG step with one explicit Euler step per substep and a relative truncation
tolerance ``tau`` (Schotthöfer et al. 2022, arXiv:2205.13571). It evaluates every product at
the start point, so the standard loop ``opt.zero_grad(); loss.backward(); opt.step()`` gives
it all it needs. A method that evaluates the gradient elsewhere (the fixed-rank BUG, the
projector-splitting integrator) takes ``opt.step(closure)``: the closure re-evaluates the
model (``opt.zero_grad(); loss = ...; loss.backward(); return loss``, as for
:class:`torch.optim.LBFGS`), once per point requested, with the layer being stepped at that
point and every other layer at its start point.

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), Low-rank lottery tickets: finding
efficient low-rank neural networks via matrix differential equations, NeurIPS 35,
arXiv:2205.13571.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..factors import LowRankMatrix
from ..integrators.augmented_bug import AugmentedBUG
from ..integrators.base import Integrator, State, StepInfo
from ..integrators.tucker_bug import TuckerBUG
from ..integrators.tucker_steps import TuckerIntegrator
from ..problems import MatrixODE
from ..substeps import Euler
from ..tensor_problems import TensorODE
from ..training.optimizers import SGD, Adam, HeavyBall, Optimizer
from ..truncation import Tolerance
from ..tucker import TuckerTensor, multi_mode_product
from .layers import FactoredLayer, replace_data
from .tucker_layers import TuckerConv2d

__all__ = ["DLRTOptimizer"]


class _RecordedPass:
    """The gradient of one layer at its start point, from its recorded backward passes."""

    def __init__(self, layer: FactoredLayer, start: LowRankMatrix) -> None:
        self.layer = layer
        self.records = list(layer._records)
        self.start = start
        # autograd already formed grad(W) V0, grad(W)^T U0 and U0^T grad(W) V0
        self.gK = layer.U.grad
        self.gL = layer.V.grad
        self.gS = layer.S.grad

    def _with_records(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        saved = self.layer._records
        self.layer._records = self.records
        try:
            return fn()
        finally:
            self.layer._records = saved

    def right(self, layer: int, V: torch.Tensor) -> torch.Tensor:
        if V is self.start.V and self.gK is not None:
            return self.gK
        return self._with_records(lambda: self.layer.grad_right(V))

    def left(self, layer: int, U: torch.Tensor) -> torch.Tensor:
        if U is self.start.U and self.gL is not None:
            return self.gL
        return self._with_records(lambda: self.layer.grad_left(U))

    def project(self, layer: int, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if U is self.start.U and V is self.start.V and self.gS is not None:
            return self.gS
        return self._with_records(lambda: self.layer.grad_project(U, V))


class _LayerField(MatrixODE):
    """``F = -d(W)`` of one layer: products at the start point from its recorded passes,
    elsewhere by re-evaluating the closure with the layer moved to the requested point."""

    def __init__(
        self,
        opt: DLRTOptimizer,
        layer: FactoredLayer,
        start: LowRankMatrix,
        view: Any,
        lr: float,
        closure: Callable[[], Any] | None,
    ) -> None:
        self.opt = opt
        self.layer = layer
        self.start = start
        self.view = view
        self.lr = lr
        self.closure = closure
        self.passes: list[tuple[LowRankMatrix, _RecordedPass]] = [
            (start, _RecordedPass(layer, start))
        ]
        self.n_passes = 0
        self._probe: torch.Tensor | None = None

    def _pass_at(self, Y: LowRankMatrix) -> _RecordedPass:
        for point, gp in self.passes:
            if self._same(Y, point):
                return gp
        if self.closure is None:
            raise RuntimeError(
                f"{self.opt.method!r} evaluates the gradient away from the start point of the "
                "step: pass a closure that re-evaluates the model, opt.step(closure)"
            )
        gp = self.opt._evaluate_at(self.layer, Y, self.closure)
        self.n_passes += 1
        self.passes.append((Y, gp))
        return gp

    def _same(self, A: LowRankMatrix, B: LowRankMatrix) -> bool:
        if A is B or (A.U is B.U and A.S is B.S and A.V is B.V):
            return True
        if self._probe is None:
            g = torch.Generator(device="cpu").manual_seed(0x5EED)
            host = torch.randn(A.shape[1], 4, generator=g, dtype=torch.float64)
            self._probe = host.to(device=A.S.device, dtype=A.S.dtype)
        a, b = A.matmul(self._probe), B.matmul(self._probe)
        eps = torch.finfo(A.S.dtype).eps
        scale = float(torch.linalg.matrix_norm(a)) + float(torch.linalg.matrix_norm(b))
        k = max(A.rank, B.rank)
        return float(torch.linalg.matrix_norm(a - b)) <= 16.0 * math.sqrt(k) * eps * scale

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        return self.view.product("right", self._pass_at(Y), 0, Y, (V,), self.lr)

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        return self.view.product("left", self._pass_at(Y), 0, Y, (U,), self.lr)

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        return self.view.product("project", self._pass_at(Y), 0, Y, (U, V), self.lr)


class _KernelGradientField(TensorODE):
    """``F = -grad(W)`` of a Tucker kernel, the same at every point of an Euler step."""

    def __init__(self, F: torch.Tensor) -> None:
        self.F = F

    def project(
        self, t: float, Y: TuckerTensor, bases: Any, skip: int | None = None
    ) -> torch.Tensor:
        return multi_mode_product(
            self.F, [None if j == skip else B.mT for j, B in enumerate(bases)]
        )


def _factor_params(layer: Any) -> list[torch.Tensor]:
    if isinstance(layer, TuckerConv2d):
        return [layer.core, layer.U1, layer.U2, layer.U3, layer.U4]
    return [layer.U, layer.S, layer.V]


class DLRTOptimizer(torch.optim.Optimizer):
    """Dynamical low-rank training of any model with low-rank layers.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups, as for every :class:`torch.optim.Optimizer`
        (typically ``model.parameters()``). The factors ``U, S, V`` of a low-rank layer are
        recognised and stepped together by ``method``; they must lie in one group.
    lr : float
        Learning rate: the step size of the integrator. Read from ``param_groups`` at every
        step, so learning-rate schedulers apply.
    method : Integrator, optional
        Any matrix integrator of the library. Default: DLRT,
        ``AugmentedBUG(Tolerance(tau, relative=True, rmax=rmax), substep=Euler())``.
    tau : float, default 0.1
        The relative truncation tolerance of the default method.
    rmax : int, optional
        The largest rank of the default method.
    direction : SGD, HeavyBall or Adam, optional
        How gradients become the direction of the flow, for the low-rank layers (with moments
        transported into the new bases at every step) and for the other parameters alike.
        Default ``SGD()``. Layers :class:`~lowrank_integrators.torch.TuckerConv2d` need
        ``SGD()``.
    tucker_method : Tucker integrator, optional
        For :class:`~lowrank_integrators.torch.TuckerConv2d` layers (TDLRT, Zangrando et al.
        2023, arXiv:2305.19059). Default
        ``TuckerBUG(Tolerance(tau, relative=True, rmax=rmax), substep=Euler())``: with Euler
        substeps every product is taken at the start point, from the gradient of the kernel.

    Attributes
    ----------
    last_infos : list of StepInfo
        The integrator's bookkeeping of the last step, one per low-rank layer.

    Examples
    --------
    >>> import torch
    >>> from lowrank_integrators.torch import DLRTOptimizer, LowRankLinear
    >>> g = torch.Generator().manual_seed(0)
    >>> model = torch.nn.Sequential(LowRankLinear(8, 16, 4, generator=g), torch.nn.ReLU(),
    ...                             torch.nn.Linear(16, 3))
    >>> opt = DLRTOptimizer(model.parameters(), lr=0.1, tau=0.1)
    >>> x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    >>> opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    >>> model[0].rank <= 8
    True
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        method: Integrator | None = None,
        *,
        tau: float = 0.1,
        rmax: int | None = None,
        direction: Optimizer | None = None,
        tucker_method: Integrator | None = None,
    ) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"lr must be a positive number, got {type(lr).__name__}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if method is None:
            method = AugmentedBUG(Tolerance(tau, relative=True, rmax=rmax), substep=Euler())
        if not isinstance(method, Integrator):
            raise TypeError(
                f"method must be a matrix Integrator such as AugmentedBUG(...), got "
                f"{type(method).__name__}"
            )
        direction = SGD() if direction is None else direction
        if not isinstance(direction, (SGD, HeavyBall, Adam)):
            raise TypeError(
                f"direction must be SGD(), HeavyBall(...) or Adam(...), got "
                f"{type(direction).__name__}"
            )
        if tucker_method is None:
            tucker_method = TuckerBUG(Tolerance(tau, relative=True, rmax=rmax), substep=Euler())
        if not isinstance(tucker_method, TuckerIntegrator):
            raise TypeError(
                f"tucker_method must be a Tucker integrator such as TuckerBUG(...), got "
                f"{type(tucker_method).__name__}"
            )
        if not isinstance(getattr(tucker_method, "substep", None), Euler):
            raise ValueError(
                "tucker_method must take Euler substeps (substep=Euler()): the gradient of a "
                f"Tucker kernel is evaluated at the start point only, got {tucker_method!r}"
            )
        self._direction_arg = direction
        self._layers: list[Any] = []
        super().__init__(params, {"lr": float(lr)})
        self.tucker_method = tucker_method
        self.method = method
        self.direction = direction
        self.last_infos: list[StepInfo] = []

    # --- groups and layers ---------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; the factors of a low-rank layer must come together."""
        super().add_param_group(param_group)
        params = self.param_groups[-1]["params"]
        ids = {id(p) for p in params}
        for p in params:
            layer = getattr(p, "_lowrank_layer", None)
            if layer is None or any(layer is m for m in self._layers):
                continue
            if not all(id(q) in ids for q in _factor_params(layer)):
                raise ValueError(
                    f"the factors of a {type(layer).__name__} must all be in one parameter group"
                )
            if isinstance(layer, TuckerConv2d) and not isinstance(self._direction_arg, SGD):
                raise ValueError(
                    "TuckerConv2d layers are stepped with direction=SGD() only (no transport "
                    f"of moments for Tucker bases), got {self._direction_arg!r}"
                )
            self._layers.append(layer)

    def _roles(self) -> dict[int, Any]:
        return {id(p): layer for layer in self._layers for p in _factor_params(layer)}

    _EXTRA = ("_layers", "method", "tucker_method", "direction", "_direction_arg", "last_infos")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._EXTRA})
        return state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients and forget the low-rank layers' recorded passes."""
        super().zero_grad(set_to_none)
        for layer in self._layers:
            layer.clear_records()

    # --- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One training step from the gradients of the last backward pass(es).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (zeroing the gradients and calling
            ``backward`` itself). Called once first; methods that need the gradient away from
            the start point (BUG, projector splitting) call it again there.

        Returns
        -------
        The loss returned by the first call of ``closure``, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        roles = self._roles()
        dense: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []
        steps: list[tuple[FactoredLayer, dict[str, Any], _LayerField, State]] = []
        tucker_steps: list[tuple[TuckerConv2d, float]] = []
        for group in self.param_groups:
            lr = float(group["lr"])
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"lr must be a finite number > 0, got {lr}")
            for p in group["params"]:
                if id(p) in roles or p.grad is None:
                    continue
                # the start-point gradient: a closure evaluated later overwrites p.grad
                g = p.grad.clone() if closure is not None else p.grad
                dense.append((group, p, g))
            for layer in self._layers:
                if not any(_factor_params(layer)[0] is p for p in group["params"]):
                    continue
                if not layer._records:
                    continue
                if isinstance(layer, TuckerConv2d):
                    tucker_steps.append((layer, lr))
                else:
                    steps.append(self._prepare(layer, lr, closure))
        results = [self.method.step(field, st, st.t, field.lr) for _, _, field, st in steps]
        tucker_results = [self._tucker_step(layer, lr) for layer, lr in tucker_steps]
        self.last_infos = []
        for (layer, state, field, st), (new, info) in zip(steps, results, strict=True):
            Y1 = new.Y
            for name, a in (("U", Y1.U), ("S", Y1.S), ("V", Y1.V)):
                if not bool(torch.isfinite(a).all()):
                    raise FloatingPointError(
                        f"the {name} factor of a {type(layer).__name__} is not finite after the "
                        "step"
                    )
            slot = self.direction.commit_layers(
                {"layers": [state["slot"]], "params": []}, [field.view], [st.Y], [Y1]
            )["layers"][0]
            state["slot"] = slot
            state["t"] = float(new.t)
            state["step"] += 1
            layer.set_factors(Y1.U, Y1.S, Y1.V)
            for p in (layer.U, layer.S, layer.V):
                p.grad = None
            layer.clear_records()
            self.last_infos.append(info)
        for (layer, _lr), (state, new, info) in zip(tucker_steps, tucker_results, strict=True):
            state["t"] = float(new.t)
            state["step"] += 1
            layer.set_tucker(new.Y)
            for p in _factor_params(layer):
                p.grad = None
            layer.clear_records()
            self.last_infos.append(info)
        for group, p, g in dense:
            self._dense_update(p, g, float(group["lr"]))
        return loss

    def _tucker_step(self, layer: TuckerConv2d, lr: float) -> tuple[dict[str, Any], State, Any]:
        state = self.state[layer.core]
        if not state:
            state.update({"step": 0, "t": 0.0})
        field = _KernelGradientField(-layer.kernel_gradient())
        st = State(Y=layer.tucker, t=float(state["t"]))
        new, info = self.tucker_method.step(field, st, st.t, lr)
        for i, a in enumerate((new.Y.core, *new.Y.factors)):
            if not bool(torch.isfinite(a).all()):
                raise FloatingPointError(
                    f"factor {i} of a TuckerConv2d is not finite after the step"
                )
        return state, new, info

    def _prepare(
        self, layer: FactoredLayer, lr: float, closure: Callable[[], Any] | None
    ) -> tuple[FactoredLayer, dict[str, Any], _LayerField, State]:
        state = self.state[layer.U]
        if not state:
            state.update({"step": 0, "t": 0.0, "slot": {}})
        W0 = LowRankMatrix(layer.U.detach(), layer.S.detach(), layer.V.detach(), check=False)
        view = self.direction.layer_view(
            {"layers": [state["slot"]], "params": []}, 0, int(state["step"]), W0
        )
        field = _LayerField(self, layer, W0, view, lr, closure)
        return layer, state, field, State(Y=W0, t=float(state["t"]))

    def _evaluate_at(
        self, layer: FactoredLayer, Y: LowRankMatrix, closure: Callable[[], Any]
    ) -> _RecordedPass:
        """The gradient of ``layer`` with its weight moved to ``Y`` (other layers unchanged)."""
        saved = (layer.U.data, layer.S.data, layer.V.data)
        saved_grads = {id(p): p.grad for group in self.param_groups for p in group["params"]}
        records = {id(m): m._records for m in self._layers}
        try:
            for m in self._layers:
                m._records = []
            for p, a in ((layer.U, Y.U), (layer.S, Y.S), (layer.V, Y.V)):
                replace_data(p, a)
            for p in (layer.U, layer.S, layer.V):
                p.grad = None
            with torch.enable_grad():
                closure()
            point = LowRankMatrix(layer.U.detach(), layer.S.detach(), layer.V.detach(), check=False)
            gp = _RecordedPass(layer, point)
            gp.gK = gp.gL = gp.gS = None  # at a non-orthonormal point these are not the products
            return gp
        finally:
            for p, a in zip((layer.U, layer.S, layer.V), saved, strict=True):
                replace_data(p, a)
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = saved_grads[id(p)]
            for m in self._layers:
                m._records = records[id(m)]

    def _dense_update(self, p: torch.Tensor, g: torch.Tensor, lr: float) -> None:
        state = self.state[p]
        d = self.direction
        if isinstance(d, SGD):
            p.add_(g, alpha=-lr)
        elif isinstance(d, HeavyBall):
            prev = state.get("prev")
            new = p - lr * g
            if prev is not None:
                new = new + d.beta * (p - prev)
            state["prev"] = p.detach().clone()
            p.copy_(new)
        else:
            assert isinstance(d, Adam)
            k = int(state.get("step", 0)) + 1
            m = state.get("m")
            v = state.get("v")
            if m is None:
                m, v = torch.zeros_like(g), torch.zeros_like(g)
            m = d.beta1 * m + (1.0 - d.beta1) * g
            v = d.beta2 * v + (1.0 - d.beta2) * g * g
            m_hat = m / (1.0 - d.beta1**k)
            v_hat = v / (1.0 - d.beta2**k)
            p.sub_(lr * m_hat / (torch.sqrt(v_hat) + d.eps))
            state.update({"step": k, "m": m, "v": v})

    def __repr__(self) -> str:
        lrs = ", ".join(f"{g['lr']}" for g in self.param_groups)
        return (
            f"DLRTOptimizer(lr=[{lrs}], method={self.method!r}, direction={self.direction!r}, "
            f"low-rank layers={len(self._layers)})"
        )
