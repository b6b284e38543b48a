r"""``DLRTOptimizer``: dynamical low-rank training as a :class:`torch.optim.Optimizer`.

The factors ``U, S, V`` of every low-rank layer (:class:`~lowrank_integrators.torch.LowRankLinear`,
:class:`~lowrank_integrators.torch.LowRankConv2d`) move by a matrix integrator of the library
applied to the gradient flow ``W' = -d(W)`` over one step of length ``lr`` (``d`` is the
gradient for SGD, see :mod:`lowrank_integrators.training.optimizers`); every other parameter
takes a step of SGD, heavy ball or Adam. The default integrator is DLRT: the rank-adaptive
augmented BUG step with one explicit Euler step per substep and a relative truncation
tolerance ``tau`` (Schotthöfer et al. 2022, arXiv:2205.13571).

The steps of all layers are driven through the step protocol
(:mod:`lowrank_integrators.protocol`) in rounds, as the NumPy client
:class:`~lowrank_integrators.training.LowRankTraining` drives them: every request declared at
a layer's start point is answered from the backward pass(es) of the standard loop
``opt.zero_grad(); loss.backward(); opt.step()``, which is all that the one-pass methods (DLRT,
the parallel BUG, abc-PSI with Euler substeps) need. A method that evaluates the gradient
elsewhere (the fixed-rank BUG: 2 passes, the projector-splitting integrator: 3) takes
``opt.step(closure)``: the closure re-evaluates the model (``opt.zero_grad(); loss = ...;
loss.backward(); return loss``, as for :class:`torch.optim.LBFGS`), once per round whose
requests lie away from the start, with every layer at the point it requested.

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), Low-rank lottery tickets: finding
efficient low-rank neural networks via matrix differential equations, NeurIPS 35,
arXiv:2205.13571.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .. import _backend as bk
from .._checks import check_product
from ..factors import LowRankMatrix
from ..integrators.augmentation import leading_signs
from ..integrators.augmented_bug import AugmentedBUG
from ..integrators.base import Integrator, State, StepInfo
from ..integrators.tucker_bug import TuckerBUG
from ..integrators.tucker_steps import TuckerIntegrator, TuckerState
from ..protocol import Request, StepTask, expected_dtype, expected_shape
from ..substeps import Euler
from ..threads import limited
from ..training.optimizers import SGD, Adam, HeavyBall, Optimizer
from ..truncation import Tolerance
from ._tucker_fields import TuckerDirection, TuckerLayerField
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

    def right(self, layer: int, V: torch.Tensor) -> torch.Tensor:
        if V is self.start.V and self.gK is not None:
            return self.gK
        return self.layer.grad_right(V, records=self.records)

    def left(self, layer: int, U: torch.Tensor) -> torch.Tensor:
        if U is self.start.U and self.gL is not None:
            return self.gL
        return self.layer.grad_left(U, records=self.records)

    def project(self, layer: int, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if U is self.start.U and V is self.start.V and self.gS is not None:
            return self.gS
        blocks = self._augmented_project(U, V)
        if blocks is not None:
            return blocks
        return self.layer.grad_project(U, V, records=self.records)

    def _augmented_project(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor | None:
        """``U^T grad(W) V`` for augmented bases ``U = [U0 D, U1]``, ``V = [V0 E, V1]``.

        Of the four blocks only ``U1^T grad(W) V1`` needs the recorded passes; the others
        come from the products autograd formed: ``D (U0^T grad(W) V0) E``, ``D (grad(W)^T
        U0)^T V1`` and ``U1^T (grad(W) V0) E``. ``None`` where the bases are not of that form.
        """
        gK, gL, gS = self.gK, self.gL, self.gS
        U0, V0 = self.start.U, self.start.V
        if gK is None or gL is None or gS is None:
            return None
        r, s = int(U0.shape[1]), int(V0.shape[1])
        if int(U.shape[1]) <= r or int(V.shape[1]) <= s:
            return None
        d = leading_signs(U, U0)
        e = leading_signs(V, V0) if d is not None else None
        if d is None or e is None:
            return None
        U1, V1 = U[:, r:], V[:, s:]
        # the signs are +-1: the blocks are scaled exactly, in any order
        top = torch.cat([gS * e, gL.mT @ V1], dim=1).mul_(d[:, None])
        # the new columns share no block with the products the passes formed
        fresh = [rec._replace(formed=None) for rec in self.records]
        new = self.layer.grad_project(U1, V1, records=fresh)
        return torch.cat([top, torch.cat([(U1.mT @ gK) * e, new], dim=1)], dim=0)


class _LayerStep:
    """One low-rank layer's step: its start, its optimizer view and its protocol task."""

    def __init__(
        self,
        layer: FactoredLayer,
        state: dict[str, Any],
        method: Integrator,
        view: Any,
        start: LowRankMatrix,
        lr: float,
    ) -> None:
        self.layer = layer
        self.state = state
        self.view = view
        self.start = start
        self.lr = lr
        self.start_pass = _RecordedPass(layer, start)
        t = float(state["t"])
        self.task = StepTask(method.step_requests(State(Y=start, t=t), t, lr))


class _Rounds:
    """Advances the steps of all layers in rounds and answers each round from passes.

    A request declared at a layer's start point is answered from the backward pass(es) of the
    standard loop. A round whose requests lie elsewhere is answered from one evaluation of the
    closure with every layer at its requested point (a layer without a request at its start),
    as the NumPy client does.
    """

    def __init__(
        self, opt: DLRTOptimizer, steps: list[_LayerStep], closure: Callable[[], Any] | None
    ) -> None:
        self.opt = opt
        self.steps = steps
        self.closure = closure
        self.passes: dict[tuple[int, ...], tuple[list[LowRankMatrix], list[_RecordedPass]]] = {}
        self.n_passes = 0

    def run(self) -> None:
        while True:
            rounds = [st.task.open_requests() if not st.task.done else [] for st in self.steps]
            if not any(rounds):
                return
            answers = self._serve(rounds)
            for st, reqs, ans in zip(self.steps, rounds, answers, strict=True):
                if reqs:
                    st.task.answer(ans)

    def _serve(self, rounds: list[list[Request]]) -> list[list[Any]]:
        steps = self.steps
        pairs = list(zip(steps, rounds, strict=True))
        if all(r.point is st.start for st, reqs in pairs for r in reqs):  # type: ignore[attr-defined]
            # every request declared at its layer's start: the backward pass answers them
            return [
                [self._answer(st, i, req, st.start_pass, st.start) for req in reqs]
                for i, (st, reqs) in enumerate(pairs)
            ]
        points: list[list[LowRankMatrix]] = []
        where: list[list[int]] = []
        for reqs in rounds:
            pts: list[LowRankMatrix] = []
            idx: list[int] = []
            for req in reqs:
                p = req.point  # type: ignore[attr-defined]
                j = next((j for j, q in enumerate(pts) if q is p), None)
                if j is None:
                    pts.append(p)
                    j = len(pts) - 1
                idx.append(j)
            points.append(pts)
            where.append(idx)
        n = max(len(pts) for pts in points)
        passes = []
        for j in range(n):
            combined = [
                pts[min(j, len(pts) - 1)] if pts else st.start
                for pts, st in zip(points, self.steps, strict=True)
            ]
            passes.append(self._pass_at(combined))
        return [
            [
                self._answer(st, i, req, passes[j][i], points[i][j])
                for req, j in zip(reqs, idx, strict=True)
            ]
            for i, (st, reqs, idx) in enumerate(zip(self.steps, rounds, where, strict=True))
        ]

    @staticmethod
    def _answer(st: _LayerStep, i: int, req: Request, gp: _RecordedPass, point: Any) -> Any:
        """The answer to one request of layer ``i`` from the pass ``gp`` at ``point``."""
        kind = req.kind  # type: ignore[attr-defined]
        ans = st.view.product(kind, gp, i, point, req.bases, st.lr)  # type: ignore[attr-defined]
        shape, dtype = expected_shape(req), expected_dtype(req)
        if type(ans) is torch.Tensor and ans.dtype == dtype and tuple(ans.shape) == shape:
            return ans  # the common case, without the message
        return check_product(f"the {kind} product of low-rank layer {i}", ans, shape, dtype)

    def _pass_at(self, points: list[LowRankMatrix]) -> list[_RecordedPass]:
        if all(p is st.start for p, st in zip(points, self.steps, strict=True)):
            return [st.start_pass for st in self.steps]
        key = tuple(id(p) for p in points)
        hit = self.passes.get(key)
        if hit is not None:
            return hit[1]
        if self.closure is None:
            raise RuntimeError(
                f"{self.opt.method!r} evaluates the gradient away from the start point of the "
                "step: pass a closure that re-evaluates the model, opt.step(closure)"
            )
        gps = self.opt._evaluate_at([st.layer for st in self.steps], points, self.closure)
        self.n_passes += 1
        self.passes[key] = (points, gps)  # the points stay alive, so their ids stay unique
        return gps


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
        Default ``SGD()``. For :class:`~lowrank_integrators.torch.TuckerConv2d` layers the
        moments live in the coordinates of the K-step of each mode and of the core step, and
        are transported into the next step's coordinates in the same way.
    tucker_method : Tucker integrator, optional
        For :class:`~lowrank_integrators.torch.TuckerConv2d` layers (TDLRT, Zangrando et al.
        2023, arXiv:2305.19059). Default
        ``TuckerBUG(Tolerance(tau, relative=True, rmax=rmax), substep=Euler())``: with Euler
        substeps every product is taken at the start point, from the gradient of the kernel.

    Attributes
    ----------
    last_infos : list of StepInfo
        The integrator's bookkeeping of the last step, one per low-rank layer.
    last_passes : int
        Forward/backward passes the last step used: the standard loop's own, plus one per
        round of requests away from the start point (closure calls).

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
        self.last_passes = 0

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
            self._layers.append(layer)

    def _roles(self) -> dict[int, Any]:
        return {id(p): layer for layer in self._layers for p in _factor_params(layer)}

    _EXTRA = (
        "_layers",
        "method",
        "tucker_method",
        "direction",
        "_direction_arg",
        "last_infos",
        "last_passes",
    )

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
    @limited(torch=True)
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
        passes = int(getattr(self.method, "passes_per_step", 1))
        if closure is None and passes > 1 and self._layers:
            raise RuntimeError(
                f"{self.method!r} takes {passes} forward/backward passes per step: pass a "
                "closure that re-evaluates the model, opt.step(closure)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        roles = self._roles()
        dense: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []
        steps: list[_LayerStep] = []
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
                    steps.append(self._prepare(layer, lr))
        rounds = _Rounds(self, steps, closure)
        # on an accelerator the finiteness tests of the steps' factorisations are read back
        # together when the rounds end (before any layer changes), not one wait each
        with bk.deferred_finite_checks():
            rounds.run()
        tucker_results = [self._tucker_step(layer, lr) for layer, lr in tucker_steps]
        # The integrators refuse non-finite bases and cores (NonFiniteError) while the rounds
        # run, before any layer below is changed: a failing step leaves the model as it was.
        self.last_infos = []
        self.last_passes = (1 if steps or tucker_steps else 0) + rounds.n_passes
        for ls in steps:
            layer, state = ls.layer, ls.state
            new, info = ls.task.value
            Y1 = new.Y
            slot = self.direction.commit_layers(
                {"layers": [state["slot"]], "params": []}, [ls.view], [ls.start], [Y1]
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
            state["slot"] = state.pop("next_slot")
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

    def _tucker_step(
        self, layer: TuckerConv2d, lr: float
    ) -> tuple[dict[str, Any], TuckerState, Any]:
        state = self.state[layer.core]
        if not state:
            state.update({"step": 0, "t": 0.0, "slot": {}})
        start = layer.tucker
        direction = TuckerDirection(self.direction, state["slot"], int(state["step"]), start, lr)
        field = TuckerLayerField(layer, start, direction)
        st = TuckerState(Y=start, t=float(state["t"]))
        # on an accelerator the finiteness tests of the step's factorisations and of its
        # result are read back together at the end, not one wait for the device each
        with bk.deferred_finite_checks():
            new, info = self.tucker_method.step(field, st, st.t, lr)
            for i, a in enumerate((new.Y.core, *new.Y.factors)):
                bk.require_finite(a, f"factor {i} of a TuckerConv2d after its step")
        state["next_slot"] = direction.commit()
        return state, new, info

    def _prepare(self, layer: FactoredLayer, lr: float) -> _LayerStep:
        state = self.state[layer.U]
        if not state:
            state.update({"step": 0, "t": 0.0, "slot": {}})
        W0 = LowRankMatrix(layer.U.detach(), layer.S.detach(), layer.V.detach(), check=False)
        view = self.direction.layer_view(
            {"layers": [state["slot"]], "params": []}, 0, int(state["step"]), W0
        )
        return _LayerStep(layer, state, self.method, view, W0, lr)

    def _evaluate_at(
        self,
        layers: list[FactoredLayer],
        points: list[LowRankMatrix],
        closure: Callable[[], Any],
    ) -> list[_RecordedPass]:
        """The gradients of ``layers`` with their weights moved to ``points``."""
        saved = [(m.U.data, m.S.data, m.V.data) for m in layers]
        saved_grads = {id(p): p.grad for group in self.param_groups for p in group["params"]}
        records = {id(m): m._records for m in self._layers}
        try:
            for m in self._layers:
                m._records = []
            for m, Y in zip(layers, points, strict=True):
                for p, a in ((m.U, Y.U), (m.S, Y.S), (m.V, Y.V)):
                    replace_data(p, a)
                    p.grad = None
            with torch.enable_grad():
                closure()
            gps = []
            for m in layers:
                point = LowRankMatrix(m.U.detach(), m.S.detach(), m.V.detach(), check=False)
                gp = _RecordedPass(m, point)
                gp.gK = gp.gL = gp.gS = None  # answered from the records, in any bases
                gps.append(gp)
            return gps
        finally:
            for m, data in zip(layers, saved, strict=True):
                for p, a in zip((m.U, m.S, m.V), data, strict=True):
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
