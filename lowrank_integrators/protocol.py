r"""The step protocol: an integrator step asks for field products as values; a driver answers.

A step is a generator. It ``yield``\ s a request, the driver sends back the answer, and the
generator finally returns ``(state, info)``::

    FV = yield led.right(t, Y, V)            # F(t, Y) V
    U1, V1 = yield Parallel(k_branch(), l_branch())

The integrator never sees the problem. Two drivers answer the same requests:

* :func:`answer_from_problem` (used by ``Integrator.step`` and :func:`~lowrank_integrators.solve`)
  answers every request from a :class:`~lowrank_integrators.MatrixODE` (or a tensor problem),
  in order, one at a time; the branches of a :class:`Parallel` run one after the other. Where
  the problem's substep field offers ``fold`` (the compiled fields of
  :class:`~lowrank_integrators.SylvesterODE`), it answers a stage that carries its register
  updates with the updates done in the field's pass.
* :class:`StepTask` lets an outside driver advance a step in rounds: it hands out every open
  request of the step at once (all branches of a :class:`Parallel`), takes the answers and
  resumes. The training client drives the steps of all layers this way and answers each round
  from forward/backward passes of the network.

Requests
--------
``Right(t, Y, V)``, ``Left(t, Y, U)``, ``Project(t, Y, U, V)``
    ``F(t, Y) V``, ``F(t, Y)^H U``, ``U^H F(t, Y) V`` at the factored point ``Y``.
``Field(ode, t, X)``
    The right-hand side of a substep ODE (K-, L- or S-step; a mode or core step of a Tucker
    method) at ``(t, X)``, *before* the substep's sign: one of the three products above at the
    point ``ode.point(X)``, in the substep's own coordinates, so that a problem driver may use
    the problem's precomputed substep fields (``k_field`` and friends).
``Field(..., update=StageUpdate(acc, x0, c, a, first))``
    A stage of an explicit Runge-Kutta solver that carries its register updates: with ``F``
    the field (after the substep's sign), ``acc = x0 + c F`` (``first``) or ``acc += c F``,
    and, unless ``a`` is ``None``, the next stage ``x0 + a F``. A driver may answer it
    *folded*, doing the updates in the pass that evaluates ``F``, with an :class:`Updated`
    (the next stage, and the accumulator when it made one); any other answer is the
    derivative itself, and the solver does the updates (the generic path, with the same
    arithmetic). Drivers that do not know of updates answer every ``Field`` the same way.
``Increment(ode, t0, t1)``
    The exact integral of a state-independent substep field over ``[t0, t1]``, or ``None``.
``Affine(ode, t0, t1)``
    Whether the substep field is affine in the state and the same at every time of
    ``[t0, t1]`` (``f(t, X) = L(X) + c``), so that a Runge-Kutta solver may arrange its
    stages in an equivalent cheaper way; drivers that cannot tell answer ``False``.
``FieldFunction(ode)``
    The substep field itself, as a function ``f(t, X)`` (after the substep's sign), for a
    solver that evaluates a small substep by plain calls; every call counts and is checked
    as the answer to a ``Field`` request. Drivers that answer fields only one request at a
    time (from forward/backward passes) answer ``None``, and the solver makes requests.
``Increment``, ``Affine`` and ``FieldFunction`` are *queries*: a driver may decline them
(``None``, ``False``, ``None``) and the step goes on with field requests. A driver that
declines all of them declares so for the time it advances a step (:class:`StepTask` does,
through :func:`queries_declined`), and the substep solvers then do not ask: each request is a
round trip through every generator of the step, and queries were 12 of the 20 requests of a
training step at width 16.
``Parallel(*branches)``
    Independent sub-generators (for example the K- and L-steps of BUG); the answer is the
    tuple of their return values.
``SubstepCall(solver, ode, t0, t1, X0)``
    A substep solved by a solver that calls its field synchronously (a user callable); only a
    problem driver can answer it.

The ``at`` attribute of a product or field request declares the point: when it is a
:class:`~lowrank_integrators.LowRankMatrix`, the request's point represents the *same matrix*
(for example the start ``K0 V0^H = Y0`` of a K-step). A driver may answer all requests declared
at one point from one evaluation there: this is what makes a DLRT step cost one
forward/backward pass. The declaration is part of the step's structure, never a run-time test.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from ._checks import check_product
from .factors import LowRankMatrix

__all__ = [
    "Affine",
    "Field",
    "FieldFunction",
    "Handover",
    "Increment",
    "Left",
    "Parallel",
    "Project",
    "Request",
    "Right",
    "StageUpdate",
    "StepGenerator",
    "StepTask",
    "SubstepCall",
    "Updated",
    "answer_from_problem",
    "queries_declined",
    "received",
    "run_to_end",
]

#: A step (or any part of one) written against the protocol.
StepGenerator = Generator["Request", Any, Any]

#: Whether the driver advancing a step now declines every query (see :func:`queries_declined`).
_QUERIES_DECLINED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lowrank_integrators_queries_declined", default=False
)


def queries_declined() -> bool:
    """Whether the driver now advancing the step answers every query negatively.

    True while a :class:`StepTask` advances its step: ``Increment`` is then answered with
    ``None``, ``Affine`` with ``False`` and ``FieldFunction`` with ``None``, so a substep solver
    may take those answers without yielding the query (the same step, without the round
    trips). :func:`answer_from_problem`, which answers queries, sets it to False for the
    generators it runs.
    """
    return _QUERIES_DECLINED.get()


class Request:
    """Base class of everything a step may yield."""

    __slots__ = ()


@dataclass(eq=False)
class Right(Request):
    """``F(t, Y) V``.

    ``hand_over``: the step takes the product out of a :class:`Handover` (with
    :func:`received`), so that the driver keeps no reference to it and the step may
    overwrite it (drivers that answer with a plain array are received as well).
    """

    t: float
    Y: LowRankMatrix
    V: Any
    at: LowRankMatrix | None = None
    hand_over: bool = False

    kind = "right"

    @property
    def point(self) -> LowRankMatrix:
        return self.Y if self.at is None else self.at

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.V,)


@dataclass(eq=False)
class Left(Request):
    """``F(t, Y)^H U``.

    ``hand_over``: the step takes the product out of a :class:`Handover` (with
    :func:`received`), so that the driver keeps no reference to it and the step may
    overwrite it (drivers that answer with a plain array are received as well).
    """

    t: float
    Y: LowRankMatrix
    U: Any
    at: LowRankMatrix | None = None
    hand_over: bool = False

    kind = "left"

    @property
    def point(self) -> LowRankMatrix:
        return self.Y if self.at is None else self.at

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.U,)


@dataclass(eq=False)
class Project(Request):
    """``U^H F(t, Y) V``."""

    t: float
    Y: LowRankMatrix
    U: Any
    V: Any
    at: LowRankMatrix | None = None

    kind = "project"

    @property
    def point(self) -> LowRankMatrix:
        return self.Y if self.at is None else self.at

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.U, self.V)


@dataclass(eq=False)
class Field(Request):
    """The field of the substep ODE ``ode`` at ``(t, X)`` (before the substep's sign).

    ``ode.kind`` names the product (``"right"``, ``"left"``, ``"project"``),
    ``ode.point(X)`` the point and ``ode.bases`` the bases, for drivers that answer from
    products; ``ode.field(problem)`` is the problem's substep field for drivers that answer
    from a problem. ``X`` may be a factored start value (``U0 S0`` kept as its factors, with
    ``to_array()``): a driver answering from the declared point ``at`` never forms it.
    """

    ode: Any
    t: float
    X: Any
    at: LowRankMatrix | None = None
    #: The register updates a driver may fold into the evaluation (see :class:`StageUpdate`).
    update: StageUpdate | None = None

    @property
    def kind(self) -> str:
        kind = self.ode.kind
        return kind if type(kind) is str else str(kind)

    @property
    def point(self) -> LowRankMatrix:
        return self.ode.point(as_array(self.X)) if self.at is None else self.at

    @property
    def bases(self) -> tuple[Any, ...]:
        bases = self.ode.bases
        return bases if type(bases) is tuple else tuple(bases)


class StageUpdate:
    """The register updates of a Runge-Kutta stage, carried by its :class:`Field` request.

    With ``F`` the substep's field at the stage (after its sign):

    * ``acc = x0 + c F`` when ``first`` (``acc`` is ``None``: the driver makes it), else
      ``acc += c F`` in place; no accumulator when ``c`` is ``None`` (``acc`` is ``None``
      and ``first`` false);
    * unless ``a`` is ``None``, the next stage ``x0 + a F``, in a new array or in a dead work
      array that the solver offers (never the stage itself, which the evaluation reads).

    ``x0`` is the substep's start: an array, or a factored start (``left @ right``) that the
    driver forms block by block. A driver that folds the updates into the evaluation answers
    with an :class:`Updated`; every entry is then ``x0 + c F``, ``acc + c F`` and ``x0 + a F``
    of the entries of ``F``, as the solver would compute them (the value of ``F`` itself may
    differ by the reordering of its sums). Any other answer is ``F`` itself.

    Parameters
    ----------
    acc : array or None
        The accumulator (C-ordered NumPy array), ``None`` when ``first`` or without one.
    x0 : array or FactoredStart
        The start value of the substep.
    c, a : float or None
        The weights, step size included (``c`` ``None``: no accumulator; ``a`` ``None``: no
        next stage).
    first : bool
        Whether the accumulator starts here.
    """

    __slots__ = ("a", "acc", "c", "first", "x0")

    def __init__(self, acc: Any, x0: Any, c: float | None, a: float | None, first: bool) -> None:
        if c is None:
            if acc is not None or first or a is None:
                raise ValueError(
                    "without an accumulator (c None) acc must be None, first false and a given"
                )
        elif first != (acc is None):
            raise ValueError("acc must be None exactly for the first stage")
        self.acc = acc
        self.x0 = x0
        self.c = c
        self.a = a
        self.first = first

    def __repr__(self) -> str:
        return f"StageUpdate(c={self.c!r}, a={self.a!r}, first={self.first})"


class Updated:
    """The answer to a :class:`Field` whose :class:`StageUpdate` the driver folded in.

    Parameters
    ----------
    stage : array or None
        The next stage (``None`` for the last stage).
    acc : array or None
        The accumulator (the one of the update, or the new one of a first stage; ``None``
        for an update without one).
    """

    __slots__ = ("acc", "stage")

    def __init__(self, stage: Any, acc: Any) -> None:
        self.stage = stage
        self.acc = acc


@dataclass(eq=False)
class Increment(Request):
    """``int_{t0}^{t1} f dt`` of the substep ODE ``ode`` when its field ignores the state."""

    ode: Any
    t0: float
    t1: float


@dataclass(eq=False)
class Affine(Request):
    """Whether the field of the substep ODE ``ode`` is affine and autonomous on ``[t0, t1]``.

    The answer is ``True`` when ``f(t, X) = L(X) + c`` with the same linear ``L`` and
    constant ``c`` at every ``t`` of the interval (the K-, L- and S-fields of
    :class:`~lowrank_integrators.SylvesterODE`, whose substep fields declare ``affine``);
    ``False`` when the driver cannot tell (a driver answering from forward/backward passes).
    """

    ode: Any
    t0: float
    t1: float


class FieldFunction(Request):
    """The field of the substep ODE ``ode`` as a function ``f(t, X)``, or ``None``.

    A problem driver answers ``ode.field_function(problem)``: the problem's substep field
    with the substep's sign, which counts every call in the step's ledger and checks its
    result as the answer to a :class:`Field` request is checked (``None`` for a substep ODE
    without ``field_function``). A solver then evaluates the substep by plain calls, without
    a request per evaluation (on small states, where the round trip costs more than the
    arithmetic). Drivers that answer fields only as requests (from forward/backward passes)
    answer ``None``.
    """

    __slots__ = ("ode",)

    def __init__(self, ode: Any) -> None:
        self.ode = ode


class Parallel(Request):
    """Independent branches of a step; the answer is the tuple of their return values."""

    __slots__ = ("branches",)

    def __init__(self, *branches: StepGenerator) -> None:
        self.branches = branches


@dataclass(eq=False)
class SubstepCall(Request):
    """A substep solved synchronously by ``solver(ode, t0, t1, X0)`` (problem drivers only)."""

    solver: Any
    ode: Any
    t0: float
    t1: float
    X0: Any


# --- the problem driver -----------------------------------------------------------------------


def answer_from_problem(problem: Any, gen: StepGenerator) -> Any:
    """Run a step generator to its end, answering every request from ``problem``.

    The requests are answered inside ``problem.step_scope()`` when the problem has one (see
    :meth:`~lowrank_integrators.MatrixODE.step_scope`): what the problem keeps there is
    shared by the requests of this step only.

    Parameters
    ----------
    problem : MatrixODE or TensorODE
        Supplies the products and the substep fields.
    gen : generator
        A step (or a part of one) written against the protocol.

    Returns
    -------
    object
        The generator's return value (``(state, info)`` for a step).
    """
    scope = getattr(problem, "step_scope", None)
    declined = _QUERIES_DECLINED.set(False)  # this driver answers queries (also when nested)
    try:
        with contextlib.nullcontext() if scope is None else scope():
            answer: Any = None
            while True:
                try:
                    req = gen.send(answer)
                except StopIteration as stop:
                    return stop.value
                # Drop the previous answer before computing the next one, and the request
                # before resuming the step: a substep solver releases its tall stages in
                # between, and a reference held here would keep one more tall array alive at
                # the peak of a step.
                answer = None
                answer = _answer(problem, req)
                req = None
    finally:
        _QUERIES_DECLINED.reset(declined)


class Handover:
    """An answer handed over so that the driver keeps no reference to it.

    A driver necessarily holds what it sends while the step runs on; a tall substep
    derivative kept that way would outlive its substep. The problem driver therefore sends
    field answers in a handover that the receiver empties (see :func:`received`).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def take(self) -> Any:
        value, self.value = self.value, None
        return value


def received(answer: Any) -> Any:
    """The value of an answer, taken out of a :class:`Handover` when it is one."""
    return answer.take() if type(answer) is Handover else answer


def _answer(problem: Any, req: Request) -> Any:
    if isinstance(req, Field):
        field = req.ode.field(problem)
        if req.update is not None:
            # a field that can fold the stage's register updates into its pass (the compiled
            # Sylvester fields) answers with them done; None: it declined
            fold = getattr(field, "fold", None)
            done = None if fold is None else fold(req.t, as_array(req.X), req.update)
            if done is not None:
                return Handover(done)
        X = as_array(req.X)
        out = field(req.t, X)
        if type(out) is type(X) and out.dtype == X.dtype and out.shape == X.shape:
            return Handover(out)  # the common case, checked without naming the field
        name = f"problem.{req.ode.field_name}"
        return Handover(check_product(name, out, req.X.shape, req.X.dtype))
    if isinstance(req, FieldFunction):
        # a substep ODE of its own kind without one is asked per evaluation
        make = getattr(req.ode, "field_function", None)
        return None if make is None else make(problem)
    if isinstance(req, Right):
        out = problem.apply_right(req.t, req.Y, req.V)
        out = check_product("problem.apply_right", out, expected_shape(req), req.Y.dtype)
        return Handover(out) if req.hand_over else out
    if isinstance(req, Left):
        out = problem.apply_left(req.t, req.Y, req.U)
        out = check_product("problem.apply_left", out, expected_shape(req), req.Y.dtype)
        return Handover(out) if req.hand_over else out
    if isinstance(req, Project):
        out = problem.project(req.t, req.Y, req.U, req.V)
        return check_product("problem.project", out, expected_shape(req), req.Y.dtype)
    if isinstance(req, Increment):
        return req.ode.increment_of(problem, req.t0, req.t1)
    if isinstance(req, Affine):
        affine_of = getattr(req.ode, "affine_of", None)
        return affine_of is not None and affine_of(problem)
    if isinstance(req, Parallel):
        return tuple(answer_from_problem(problem, branch) for branch in req.branches)
    if isinstance(req, SubstepCall):
        return req.solver(req.ode.bind(problem), req.t0, req.t1, req.X0)
    raise TypeError(f"a step yielded {type(req).__name__}, which is not a request")


def as_array(X: Any) -> Any:
    """``X`` as an array: a factored start value (``to_array``) is formed, an array kept."""
    to_array = getattr(X, "to_array", None)
    return X if to_array is None else to_array()


def run_to_end(gen: StepGenerator) -> Any:
    """The return value of a generator that must not yield (a computation without requests)."""
    try:
        req = gen.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError(f"{type(req).__name__} yielded where no driver answers requests")


# --- stepping from outside, in rounds ---------------------------------------------------------


class _Node:
    """One generator of a step and, while it waits for a :class:`Parallel`, its branches."""

    __slots__ = ("children", "done", "gen", "request", "value")

    def __init__(self, gen: StepGenerator) -> None:
        self.gen = gen
        self.children: list[_Node] | None = None
        self.request: Request | None = None
        self.done = False
        self.value: Any = None

    def resume(self, answer: Any) -> None:
        """Send ``answer`` and run until the generator needs a field product or ends."""
        self.request = None
        send = self.gen.send
        while True:
            try:
                req = send(answer)
            except StopIteration as stop:
                self.done, self.value = True, stop.value
                return
            kind = type(req)
            if kind in _PRODUCT_REQUESTS:
                self.request = req
                return
            if kind is Increment:
                answer = None  # a field given by products has no exact increments
            elif kind is Affine:
                answer = False  # nor is it known to be affine
            elif kind is FieldFunction:
                answer = None  # nor is it a function of the state alone
            elif kind is Parallel:
                children = [_Node(b) for b in req.branches]  # type: ignore[attr-defined]
                for child in children:
                    child.resume(None)
                if not all(c.done for c in children):
                    self.children = children
                    return
                answer = tuple(c.value for c in children)
            else:
                answer = self._other(req)
                if answer is _WAIT:
                    return

    def _other(self, req: Any) -> Any:
        """A request of a subclass of the request types, or an error (not a request)."""
        if isinstance(req, (Right, Left, Project, Field)):
            self.request = req
            return _WAIT
        if isinstance(req, Increment):
            return None
        if isinstance(req, Affine):
            return False
        if isinstance(req, FieldFunction):
            return None
        if isinstance(req, Parallel):
            self.children = [_Node(b) for b in req.branches]
            for child in self.children:
                child.resume(None)
            if not all(c.done for c in self.children):
                return _WAIT
            values = tuple(c.value for c in self.children)
            self.children = None
            return values
        if isinstance(req, SubstepCall):
            raise TypeError(
                f"the substep solver {req.solver!r} calls its field synchronously; a step "
                "driven by requests needs a solver written as requests, such as Euler() or "
                "RK4()"
            )
        raise TypeError(f"a step yielded {type(req).__name__}, which is not a request")

    def leaves(self, out: list[_Node]) -> None:
        """Append the generators that wait for a product, in the order of the branches."""
        if self.done:
            return
        if self.children is None:
            if self.request is not None:
                out.append(self)
            return
        for c in self.children:
            c.leaves(out)

    def settle(self) -> None:
        """Resume every generator whose branches have all returned."""
        children = self.children
        if children is None:
            return
        for c in children:
            if c.children is not None:
                c.settle()
        if all(c.done for c in children):
            values = tuple(c.value for c in children)
            self.children = None
            self.resume(values)
            self.settle()


#: The requests a driver in rounds answers from products (exact types; subclasses are
#: recognised too, on a slower path).
_PRODUCT_REQUESTS = frozenset({Right, Left, Project, Field})

#: Returned by ``_Node._other`` when the generator waits (for a product or its branches).
_WAIT: Any = object()


class StepTask:
    """A step advanced from outside, in rounds of requests.

    Each round, :meth:`open_requests` lists the product requests the step waits for (one per
    branch still running: the K- and L-steps of BUG are open together); :meth:`answer` takes
    their answers in the same order and runs the step to its next round. :class:`Increment`
    requests are answered with ``None`` (fields given by products have no exact increments),
    :class:`Affine` requests with ``False`` and :class:`FieldFunction` requests with ``None``.

    Parameters
    ----------
    gen : generator
        The step, e.g. ``method.step_requests(state, t, h)``.
    """

    __slots__ = ("_open", "_root")

    def __init__(self, gen: StepGenerator) -> None:
        self._root = _Node(gen)
        self._open: list[_Node] | None = None
        declined = _QUERIES_DECLINED.set(True)  # see queries_declined
        try:
            self._root.resume(None)
        finally:
            _QUERIES_DECLINED.reset(declined)

    @property
    def done(self) -> bool:
        """Whether the step has returned."""
        return self._root.done

    @property
    def value(self) -> Any:
        """The step's return value (``(state, info)``) once :attr:`done`."""
        if not self._root.done:
            raise RuntimeError("the step has not finished")
        return self._root.value

    def _waiting(self) -> list[_Node]:
        """The generators that wait for a product this round (found once per round)."""
        if self._open is None:
            root = self._root
            if root.children is None:
                self._open = [] if root.done or root.request is None else [root]
            else:
                self._open = []
                root.leaves(self._open)
        return self._open

    def open_requests(self) -> list[Request]:
        """The product requests of this round (``Right``, ``Left``, ``Project`` or ``Field``)."""
        return [leaf.request for leaf in self._waiting()]  # type: ignore[misc]

    def answer(self, answers: Sequence[Any]) -> None:
        """Answer this round's requests (in the order of :meth:`open_requests`)."""
        leaves = self._waiting()
        if len(answers) != len(leaves):
            raise ValueError(f"expected {len(leaves)} answers, got {len(answers)}")
        self._open = None
        declined = _QUERIES_DECLINED.set(True)  # see queries_declined
        try:
            for leaf, ans in zip(leaves, answers, strict=True):
                leaf.resume(ans)
            self._root.settle()
        finally:
            _QUERIES_DECLINED.reset(declined)


def product_of(req: Request) -> tuple[str, LowRankMatrix, tuple[Any, ...]]:
    """``(kind, point, bases)`` of a product or field request: what a pass must answer."""
    return req.kind, req.point, req.bases  # type: ignore[attr-defined]


def expected_dtype(req: Request) -> Any:
    """The dtype of the state an answer enters (answers are checked and cast to it)."""
    if isinstance(req, Field):
        return req.X.dtype
    return req.point.dtype  # type: ignore[attr-defined]


def expected_shape(req: Request) -> tuple[int, int]:
    """The shape of the answer to a product or field request."""
    if isinstance(req, Field):
        return tuple(int(s) for s in req.X.shape)  # type: ignore[return-value]
    kind, Y, bases = product_of(req)
    if kind == "right":
        return int(Y.shape[0]), int(bases[0].shape[1])
    if kind == "left":
        return int(Y.shape[1]), int(bases[0].shape[1])
    return int(bases[0].shape[1]), int(bases[1].shape[1])
