r"""Dynamical low-rank training: the gradient flow of a network as a client of the integrators.

Training integrates the gradient flow ``W' = -grad L(W)`` with the learning rate as the step
size; integrating it on the manifold of rank-r matrices with a matrix integrator compresses the
network while it trains.

Schotthöfer, S., Zangrando, E., Kusch, J., Ceruti, G., Tudisco, F. (2022). Low-rank lottery
tickets: finding efficient low-rank neural networks via matrix differential equations.
NeurIPS 35. arXiv:2205.13571 (DLRT: the augmented BUG step with one explicit Euler step per
substep).

Semantics of one training step
------------------------------
The network's weights are ``W_1, ..., W_L`` (low-rank layers, each a
:class:`~lowrank_integrators.LowRankMatrix`) and a list of other parameters (dense weights,
biases, factors of a vanilla ``U V^T`` layer).
One step with learning rate ``lr`` on one minibatch:

1. One forward/backward pass at the current point ``(W_1, ..., W_L, params)`` gives the loss
   and the gradients of the other parameters, which the optimizer updates once.
2. Every low-rank layer runs the step of the *same* integrator object on the field
   ``F_i = -d_i``, where ``d_i`` is the optimizer's direction (the gradient for SGD). The
   steps are generators of requests (see :mod:`lowrank_integrators.protocol`) and advance
   **in rounds**: each round collects the open requests of every layer (the K- and L-steps of
   BUG are open together) and answers them from forward/backward passes at the *combined*
   point, on the *same minibatch*. This is the integrator applied to the product manifold of
   the layers: a K-substep of layer 1 sees layer 2 at the point of layer 2's K-substep.
3. The point of a request is the point it declares (``at``: a K-step of DLRT starts at
   ``K0 V0^H = Y0`` and says so) or else its own. Requests of a round at one declared point
   per layer are answered from one pass, and a pass already evaluated at the same combined
   point in this step is reused: passes are decided by the structure of the step, never by
   comparing numbers. If a layer has several distinct points in one round, the round takes
   one pass per point, the layer's ``j``-th point in the ``j``-th pass (its last one when it has
   fewer).
4. A layer whose step has finished (for example because another layer's step was rejected and
   is being repeated) contributes the point at which it *started* the step. The network's
   weights change only when every layer has finished: a step is a map of the old weights and
   the minibatch alone.

Passes per step with Euler substeps (``passes_per_step`` of each integrator class): the
augmented BUG (DLRT), the parallel BUG (rejections included) and abc-PSI 1; the fixed-rank BUG
and the midpoint BUG 2; projector splitting 3 (Strang 5).

The weight matrix of a low-rank layer is never formed: the pass returns the products
``grad(W) V``, ``grad(W)^H U`` and ``U^H grad(W) V`` (for a dense layer ``y = x W^T`` with input
activations ``X`` and output gradients ``G``: ``grad(W) V = G^T (X V)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from .. import _backend as bk
from .. import _fused
from .._checks import check_product
from ..errors import StepFailure
from ..factors import LowRankMatrix
from ..integrators.base import Integrator, State, StepInfo
from ..problems import MatrixODE
from ..protocol import Field, Request, StepTask, expected_dtype, expected_shape
from ..threads import limited
from .optimizers import SGD, Optimizer

__all__ = [
    "GradientPass",
    "LowRankTraining",
    "StepReport",
    "TrainState",
    "TrainingDiverged",
]


class GradientPass(Protocol):
    """The result of one forward/backward pass at a combined point, on one minibatch.

    Attributes
    ----------
    loss : float
        The loss at the point.
    param_grads : sequence of arrays
        Gradients of the other (non-low-rank) parameters, in their order.
    """

    loss: float
    param_grads: Sequence[Any]

    #: Optional: ``True`` when every product returned is a new array the client may update in
    #: place (it then negates gradients without a copy); absent means ``False``.
    fresh_products: bool

    def right(self, layer: int, V: Any) -> Any:
        """``grad_W(layer) @ V``."""

    def left(self, layer: int, U: Any) -> Any:
        """``grad_W(layer)^H @ U``."""

    def project(self, layer: int, U: Any, V: Any) -> Any:
        """``U^H @ grad_W(layer) @ V``."""


#: ``gradient(weights, params, batch) -> GradientPass``: the user's forward/backward pass.
GradientFn = Callable[[Sequence[LowRankMatrix], Sequence[Any], Any], GradientPass]


class TrainingDiverged(RuntimeError):
    """A training step produced a non-finite loss or non-finite weights."""


@dataclass(frozen=True)
class TrainState:
    """Everything a training step changes.

    Attributes
    ----------
    layers : tuple of State
        The integrator state of every low-rank layer (``state.Y`` is the weight).
    params : tuple of arrays
        The other parameters.
    optimizer : dict
        The optimizer's state (see :class:`Optimizer`).
    step : int
        Number of steps taken.
    """

    layers: tuple[State, ...]
    params: tuple[Any, ...]
    optimizer: dict[str, Any]
    step: int = 0

    @property
    def weights(self) -> tuple[LowRankMatrix, ...]:
        """The low-rank weights ``W_i = U_i S_i V_i^H``."""
        return tuple(s.Y for s in self.layers)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(s.Y.rank for s in self.layers)


@dataclass
class StepReport:
    """What one training step did.

    Attributes
    ----------
    loss : float
        Loss at the start point on the step's minibatch.
    n_passes : int
        Forward/backward passes evaluated.
    n_requests : int
        Product requests answered, over all layers.
    layer_info : list of StepInfo
        The integrator's bookkeeping for each low-rank layer.
    ranks : tuple of int
        Ranks after the step.
    """

    loss: float
    n_passes: int = 0
    n_requests: int = 0
    layer_info: list[StepInfo] = field(default_factory=list)
    ranks: tuple[int, ...] = ()


class _Rounds:
    """Advances the steps of all layers in rounds and answers each round from passes."""

    def __init__(
        self,
        client: LowRankTraining,
        state: TrainState,
        batch: Any,
        lr: float,
        start_pass: GradientPass,
        views: list[Any],
    ) -> None:
        self.client = client
        self.state = state
        self.batch = batch
        self.lr = lr
        self.views = views
        self.starts = list(state.weights)
        # Passes of this step by combined point (the identities of the layers' points; the
        # points are kept alive with the pass so that identities stay unique).
        self.passes: dict[tuple[int, ...], tuple[list[LowRankMatrix], GradientPass]] = {
            _key(self.starts): (self.starts, start_pass)
        }
        self.n_passes = 1
        self.n_requests = 0

    def run(self) -> list[tuple[State, StepInfo]]:
        method = self.client.method
        lr = self.lr
        tasks = [StepTask(method.step_requests(st, st.t, lr)) for st in self.state.layers]
        while True:
            rounds = [task.open_requests() if not task.done else [] for task in tasks]
            if not any(rounds):
                break
            answers = self._serve(rounds)
            for task, reqs, ans in zip(tasks, rounds, answers, strict=True):
                if reqs:
                    task.answer(ans)
        return [task.value for task in tasks]

    def _serve(self, rounds: list[list[Request]]) -> list[list[Any]]:
        # The distinct points of every layer in this round, in the order of its requests, and
        # for every request the index of its point.
        points: list[list[LowRankMatrix]] = []
        where: list[list[int]] = []
        for reqs in rounds:
            pts: list[LowRankMatrix] = []
            idx: list[int] = []
            for req in reqs:
                p = req.point  # type: ignore[attr-defined]
                j = 0
                while j < len(pts) and pts[j] is not p:
                    j += 1
                if j == len(pts):
                    pts.append(p)
                idx.append(j)
            points.append(pts)
            where.append(idx)
        n = max(map(len, points))
        gps = []
        for j in range(n):
            combined = [
                pts[min(j, len(pts) - 1)] if pts else start
                for pts, start in zip(points, self.starts, strict=True)
            ]
            gps.append(self._pass_at(combined))
        lr = self.lr
        answers: list[list[Any]] = []
        for i, (reqs, idx, pts) in enumerate(zip(rounds, where, points, strict=True)):
            product = self.views[i].product
            out = []
            for req, j in zip(reqs, idx, strict=True):
                kind = req.kind  # type: ignore[attr-defined]
                ans = product(kind, gps[j], i, pts[j], req.bases, lr)  # type: ignore[attr-defined]
                out.append(_checked(ans, req, kind, i))
            self.n_requests += len(reqs)
            answers.append(out)
        return answers

    def _pass_at(self, points: list[LowRankMatrix]) -> GradientPass:
        key = _key(points)
        hit = self.passes.get(key)
        if hit is not None:
            return hit[1]
        gp = self.client.gradient(points, self.state.params, self.batch)
        self.n_passes += 1
        self.passes[key] = (points, gp)
        return gp


def _key(points: Sequence[LowRankMatrix]) -> tuple[int, ...]:
    return tuple(map(id, points))


def _checked(ans: Any, req: Request, kind: str, layer: int) -> Any:
    """The answer to ``req``, checked against the shape and dtype the step expects."""
    if type(ans) is np.ndarray and type(req) is Field:
        X = req.X  # the substep's value (an array or a factored start): the answer's model
        if ans.shape == X.shape and ans.dtype == X.dtype:
            return ans  # the common case, without building the check's arguments
    name = f"the {kind} product of layer {layer} of the gradient pass"
    return check_product(name, ans, expected_shape(req), expected_dtype(req))


class LowRankTraining:
    """Train a network whose low-rank layers follow a matrix integrator.

    Parameters
    ----------
    method : Integrator
        Any matrix integrator; use ``substep=Euler()`` for the discrete (SGD-like) methods of
        dynamical low-rank training, e.g. ``AugmentedBUG(Tolerance(0.1, relative=True, rmin=2,
        rmax=...), substep=Euler())`` is DLRT.
    gradient : callable
        ``gradient(weights, params, batch) -> GradientPass``: one forward/backward pass at the
        given point (a sequence of :class:`~lowrank_integrators.LowRankMatrix`, one per low-rank
        layer, whose factors need not be orthonormal, and the other parameters) on ``batch``.
    optimizer : Optimizer, optional
        :class:`SGD` (default, the gradient flow), :class:`HeavyBall` or :class:`Adam`.

    Examples
    --------
    See :class:`lowrank_integrators.training.MLP` for a network that supplies ``gradient``.
    """

    def __init__(
        self, method: Integrator, gradient: GradientFn, optimizer: Optimizer | None = None
    ) -> None:
        if not isinstance(method, Integrator):
            raise TypeError(
                f"method must be an Integrator such as AugmentedBUG(...), got "
                f"{type(method).__name__}"
            )
        if not getattr(method.substep, "yields_requests", False):
            raise TypeError(
                f"method.substep must be a solver written as requests, such as Euler() or RK4(), "
                f"got {method.substep!r}: training answers the field from forward/backward passes"
            )
        if not callable(gradient):
            raise TypeError(f"gradient must be callable, got {type(gradient).__name__}")
        optimizer = SGD() if optimizer is None else optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be SGD(), HeavyBall(...) or Adam(...), got "
                f"{type(optimizer).__name__}"
            )
        self.method = method
        self.gradient = gradient
        self.optimizer = optimizer

    def init(self, weights: Sequence[LowRankMatrix], params: Sequence[Any] = ()) -> TrainState:
        """The training state at step 0 (integrator time 0)."""
        layers = []
        for i, W in enumerate(weights):
            if not isinstance(W, LowRankMatrix):
                raise TypeError(f"weights[{i}] must be a LowRankMatrix, got {type(W).__name__}")
            layers.append(self.method.init(_NoProblem(), W, 0.0))
        params = tuple(params)
        return TrainState(
            layers=tuple(layers),
            params=params,
            optimizer=self.optimizer.init(len(layers), params),
            step=0,
        )

    @limited
    def step(self, state: TrainState, batch: Any, lr: float) -> tuple[TrainState, StepReport]:
        """One training step on ``batch`` with learning rate (step size) ``lr``.

        Raises
        ------
        TrainingDiverged
            When the loss or the new weights are not finite; ``state`` is left untouched.
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)):
            raise TypeError(f"lr must be a positive number, got {type(lr).__name__}")
        lr = float(lr)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        start_pass = self.gradient(state.weights, state.params, batch)
        loss = float(start_pass.loss)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss is {loss} at step {state.step}")
        views = [
            self.optimizer.layer_view(state.optimizer, i, state.step, st.Y)
            for i, st in enumerate(state.layers)
        ]
        rounds = _Rounds(self, state, batch, lr, start_pass, views)
        try:
            results = rounds.run()
        except StepFailure as exc:
            raise TrainingDiverged(f"step {state.step} failed: {exc}") from exc
        except Exception as exc:
            if bk.is_linalg_error(exc):
                raise TrainingDiverged(
                    f"a factorisation failed at step {state.step}: {exc}"
                ) from exc
            raise
        new_layers = tuple(res[0] for res in results)
        infos = [res[1] for res in results]
        for i, st in enumerate(new_layers):
            if not _fused.all_finite(*st.Y):
                raise TrainingDiverged(f"layer {i} has non-finite factors after step {state.step}")
        new_params, opt_state = self.optimizer.update_params(
            state.optimizer, state.params, start_pass.param_grads, lr, state.step
        )
        for j, p in enumerate(new_params):
            if not _fused.all_finite(p):
                raise TrainingDiverged(f"parameter {j} is non-finite after step {state.step}")
        opt_state = self.optimizer.commit_layers(
            opt_state, views, state.weights, [st.Y for st in new_layers]
        )
        new_state = (
            TrainState(new_layers, tuple(new_params), opt_state, state.step + 1)
            if type(state) is TrainState
            else replace(
                state,
                layers=new_layers,
                params=tuple(new_params),
                optimizer=opt_state,
                step=state.step + 1,
            )
        )
        report = StepReport(
            loss=loss,
            n_passes=rounds.n_passes,
            n_requests=rounds.n_requests,
            layer_info=infos,
            ranks=new_state.ranks,
        )
        return new_state, report


class _NoProblem(MatrixODE):
    """Placeholder for ``Integrator.init``, which validates the initial value only."""

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        raise RuntimeError("no problem bound")

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        raise RuntimeError("no problem bound")
