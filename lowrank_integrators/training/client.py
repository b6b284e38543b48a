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
2. Every low-rank layer runs ``method.step(problem_i, state_i, t, lr)`` of the *same*
   integrator, unmodified, on the problem ``F_i = -d_i`` where ``d_i`` is the optimizer's
   direction (the gradient for SGD). The steps run **in lockstep**: each request of a layer
   for an ``F``-product (``F V``, ``F^H U`` or ``U^H F V`` at a point ``Y_i``) waits until every
   layer still stepping has posted its next request; then *one* forward/backward pass at the
   combined point ``(Y_1, ..., Y_L)`` on the *same minibatch* serves all of them. This is the
   integrator applied to the product manifold of the layers: a K-substep of layer 1 sees
   layer 2 at the point of layer 2's K-substep.
3. A layer whose step has already finished (for example because another layer's step was
   rejected and is being repeated) contributes the point at which it *started* the step. The
   network's weights therefore change only when every layer has finished: a step is a map of
   the old weights and the minibatch alone, whatever the order in which layers finish.
4. A pass is reused when the combined point equals one already evaluated in this step (to
   round-off; see :func:`same_point`). With one Euler substep the augmented BUG (DLRT) and the
   parallel BUG evaluate every product at the start point, so a step costs one pass; the
   fixed-rank BUG needs two and the projector-splitting integrator three.

The weight matrix of a low-rank layer is never formed: the pass returns the products
``grad(W) V``, ``grad(W)^H U`` and ``U^H grad(W) V`` (for a dense layer ``y = x W^T`` with input
activations ``X`` and output gradients ``G``: ``grad(W) V = G^T (X V)``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from .. import _backend as bk
from ..errors import StepFailure
from ..factors import LowRankMatrix
from ..integrators.base import Integrator, State, StepInfo
from ..problems import MatrixODE
from ..threads import limited
from .optimizers import SGD, Optimizer

__all__ = [
    "GradientPass",
    "LowRankTraining",
    "StepReport",
    "TrainState",
    "TrainingDiverged",
    "same_point",
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
        Forward/backward passes evaluated (cache hits not counted).
    n_requests : int
        Product requests served, over all layers.
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


def same_point(A: LowRankMatrix, B: LowRankMatrix, probe: Any) -> bool:
    """Whether two factorisations represent the same matrix, to round-off.

    Compares ``A @ probe`` with ``B @ probe`` for a fixed random ``probe`` (a few columns):
    the matrix is never formed. Two factorisations of one matrix agree to a few ``eps`` times
    ``sqrt(rank)`` relative to their size; a difference above ``16 sqrt(k) eps`` counts as a
    different point. (A random probe misses a nonzero difference with probability zero.)
    """
    if A is B or (A.U is B.U and A.S is B.S and A.V is B.V):
        return True
    if A.shape != B.shape:
        return False
    xp = bk.namespace(A.S, B.S)
    a = A.matmul(probe)
    b = B.matmul(probe)
    diff = float(xp.linalg.matrix_norm(a - b))
    scale = float(xp.linalg.matrix_norm(a)) + float(xp.linalg.matrix_norm(b))
    eps = float(xp.finfo(bk.real_dtype(xp, A.dtype)).eps)
    k = max(A.rank, B.rank)
    return diff <= 16.0 * math.sqrt(k) * eps * scale


@dataclass
class _Request:
    kind: str  # "right", "left" or "project"
    Y: LowRankMatrix
    bases: tuple[Any, ...]


class _LayerProblem(MatrixODE):
    """``F = -d(W_i)``: the problem one layer's integrator sees; every product goes to the round."""

    def __init__(self, rounds: _Lockstep, layer: int) -> None:
        self._rounds = rounds
        self._layer = layer

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        return self._rounds.request(self._layer, _Request("right", Y, (V,)))

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        return self._rounds.request(self._layer, _Request("left", Y, (U,)))

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        return self._rounds.request(self._layer, _Request("project", Y, (U, V)))


class _Lockstep:
    """Runs the layers' integrator steps in worker threads and serves their requests in rounds.

    The calling thread is the coordinator: it waits until every layer still stepping has posted
    a request, evaluates (or reuses) one pass at the combined point and answers all of them.
    """

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
        self.n = len(self.starts)
        self.passes: list[tuple[list[LowRankMatrix], GradientPass]] = [
            (list(self.starts), start_pass)
        ]
        self.n_passes = 1
        self.n_requests = 0
        self._cond = threading.Condition()
        self._posted: dict[int, _Request] = {}
        self._answers: dict[int, Any] = {}
        self._finished: set[int] = set()
        self._aborted: BaseException | None = None
        self.results: list[Any] = [None] * self.n

    # --- worker side -----------------------------------------------------------------------
    def request(self, layer: int, req: _Request) -> Any:
        with self._cond:
            self._posted[layer] = req
            self._cond.notify_all()
            self._cond.wait_for(lambda: layer in self._answers or self._aborted is not None)
            if layer not in self._answers:
                raise RuntimeError("the training step was aborted") from self._aborted
            answer = self._answers.pop(layer)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _work(self, layer: int) -> None:
        try:
            problem = _LayerProblem(self, layer)
            st = self.state.layers[layer]
            self.results[layer] = self.client.method.step(problem, st, st.t, self.lr)
        except BaseException as exc:  # handed to the coordinator, re-raised there
            self.results[layer] = exc
        finally:
            with self._cond:
                self._finished.add(layer)
                self._cond.notify_all()

    # --- coordinator side ------------------------------------------------------------------
    def run(self) -> list[Any]:
        threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(self.n)
        ]
        for th in threads:
            th.start()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: len(self._posted) + len(self._finished) == self.n)
                    if len(self._finished) == self.n:
                        break
                    requests = dict(self._posted)
                    self._posted.clear()
                answers = self._serve(requests)
                with self._cond:
                    self._answers.update(answers)
                    self._cond.notify_all()
        except BaseException as exc:
            # e.g. KeyboardInterrupt while waiting: release the workers before joining them
            with self._cond:
                self._aborted = exc
                self._cond.notify_all()
            raise
        finally:
            for th in threads:
                th.join()
        return self.results

    def _serve(self, requests: dict[int, _Request]) -> dict[int, Any]:
        try:
            points = [requests[i].Y if i in requests else self.starts[i] for i in range(self.n)]
            gp = self._pass_at(points)
            answers: dict[int, Any] = {}
            for i in sorted(requests):  # a fixed order, whatever order the layers posted in
                req = requests[i]
                self.n_requests += 1
                answers[i] = self.views[i].product(req.kind, gp, i, req.Y, req.bases, self.lr)
            return answers
        except BaseException as exc:
            return dict.fromkeys(requests, exc)

    def _pass_at(self, points: list[LowRankMatrix]) -> GradientPass:
        for cached_points, gp in self.passes:
            if all(
                same_point(p, q, self.client._probe(p))
                for p, q in zip(points, cached_points, strict=True)
            ):
                return gp
        gp = self.client.gradient(points, self.state.params, self.batch)
        self.n_passes += 1
        self.passes.append((list(points), gp))
        return gp


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
        self._probes: dict[tuple[Any, ...], Any] = {}
        self._probe_lock = threading.Lock()

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
        lock = _Lockstep(self, state, batch, lr, start_pass, views)
        results = lock.run()
        for res in results:
            if isinstance(res, BaseException):
                if isinstance(res, StepFailure):
                    raise TrainingDiverged(f"step {state.step} failed: {res}") from res
                if bk.is_linalg_error(res):
                    raise TrainingDiverged(
                        f"a factorisation failed at step {state.step}: {res}"
                    ) from res
                raise res
        new_layers = tuple(res[0] for res in results)
        infos = [res[1] for res in results]
        for i, st in enumerate(new_layers):
            if not bk.all_finite(st.Y.U, st.Y.S, st.Y.V):
                raise TrainingDiverged(f"layer {i} has non-finite factors after step {state.step}")
        new_params, opt_state = self.optimizer.update_params(
            state.optimizer, state.params, start_pass.param_grads, lr, state.step
        )
        for j, p in enumerate(new_params):
            if not bk.all_finite(p):
                raise TrainingDiverged(f"parameter {j} is non-finite after step {state.step}")
        opt_state = self.optimizer.commit_layers(
            opt_state, views, state.weights, [st.Y for st in new_layers]
        )
        new_state = replace(
            state,
            layers=new_layers,
            params=tuple(new_params),
            optimizer=opt_state,
            step=state.step + 1,
        )
        report = StepReport(
            loss=loss,
            n_passes=lock.n_passes,
            n_requests=lock.n_requests,
            layer_info=infos,
            ranks=new_state.ranks,
        )
        return new_state, report

    def _probe(self, Y: LowRankMatrix) -> Any:
        n = Y.shape[1]
        key = (n, str(Y.dtype), type(Y.S).__module__, str(bk.device(Y.S)))
        with self._probe_lock:
            probe = self._probes.get(key)
            if probe is None:
                xp = bk.namespace(Y.S)
                host = np.random.default_rng(0x5EED).standard_normal((n, 4))
                probe = xp.asarray(host, dtype=Y.dtype, device=bk.device(Y.S))
                self._probes[key] = probe
        return probe


class _NoProblem(MatrixODE):
    """Placeholder for ``Integrator.init``, which validates the initial value only."""

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        raise RuntimeError("no problem bound")

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        raise RuntimeError("no problem bound")
