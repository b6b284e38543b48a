r"""What every integrator shares: the step protocol, the per-step ledger, the substep ODEs.

The step protocol
-----------------
An integrator step is written once, as a generator, and serves :func:`~lowrank_integrators.solve`,
the verification suite and dynamical low-rank training alike. It never calls the problem: it
``yield``\ s *requests* (values, see :mod:`lowrank_integrators.protocol`) and a driver sends
back the answers:

* ``yield led.right(t, Y, V)`` -> ``F(t, Y) V``; ``led.left(t, Y, U)`` -> ``F(t, Y)^H U``;
  ``led.project(t, Y, U, V)`` -> ``U^H F(t, Y) V`` (the :class:`Ledger` counts them);
  a step that overwrites a tall product asks for it with ``hand_over=True`` and takes it
  with :func:`~lowrank_integrators.protocol.received`, so that the driver keeps no
  reference to it (the midpoint BUG orthonormalises ``F V`` in its own storage);
* ``X1 = yield from self.substep.solve(KStep(led, V0, at=Y0), t0, t1, X0)`` solves a substep:
  the solver yields one :class:`~lowrank_integrators.protocol.Field` request per evaluation
  (on a small NumPy state it first asks for the field as a function,
  :class:`~lowrank_integrators.protocol.FieldFunction`, and calls it where the driver gives
  one: a problem driver does, the training client does not);
* ``a, b = yield Parallel(branch_a(), branch_b())`` runs independent parts of a step (the K-
  and L-steps of BUG): a problem driver runs them one after the other, the training client
  answers their requests together;
* ``at=Y0`` on a request or substep ODE declares that its point is the same matrix as ``Y0``
  (the start of a K-step is ``K0 V0^H = Y0``); the training client answers all requests
  declared at one point from one forward/backward pass. This is how the passes per step follow
  from the structure: with Euler substeps DLRT (:class:`~lowrank_integrators.AugmentedBUG`),
  the parallel BUG and abc-PSI need 1 pass, the midpoint BUG 2, BUG 2, projector splitting
  3 (Strang 5). Each class states it as ``passes_per_step``.

``Integrator.step(problem, state, t, h)`` runs ``step_requests`` with
:func:`~lowrank_integrators.protocol.answer_from_problem`; the training client drives the same
generator with :class:`~lowrank_integrators.protocol.StepTask`.

Contract for writing an integrator
----------------------------------
1. Subclass :class:`Integrator` (or :class:`AdaptiveIntegrator` when the step ends in a
   truncation rule); declare the theory as class attributes: ``order``, ``rank_adaptive``,
   ``exact_tangent``, ``exact_data``, ``norm``, ``descent``, ``max_rank_growth``,
   ``passes_per_step`` and ``references`` (author, year, arXiv id).
2. Implement ``step_requests(state, t, h)``, a generator returning ``(State, StepInfo)``.
   Integrators are immutable configuration: a step never mutates ``self`` or the input state.
3. Make every field request through a :class:`Ledger` (``led.right`` ...) or a substep ODE
   built on it (:class:`KStep`, :class:`LStep`, :class:`SStep`), and every QR and SVD
   through the ledger; it counts them and builds :class:`StepInfo`.
4. Solve substeps with ``yield from self.substep.solve(ode, t0, t1, X0)``; all substeps of
   one step run over the same ``[t, t + h]`` unless the method itself splits the interval.
   Pass the start value of a K- or L-step as ``self.start(U0, S0)`` rather than ``U0 @ S0``:
   the solver may then avoid holding it as a tall array. Declare ``at=Y0`` where the start
   point is the step's initial value (or another point already requested).
5. Rank-adaptive methods truncate through ``self.truncation`` with ``ledger.truncate`` or,
   after an augmentation, through
   :class:`~lowrank_integrators.integrators.augmentation.AugmentedBases` (augment ->
   Galerkin -> truncate -> release, with its memory invariant).

Worked example: the fixed-rank BUG step (Ceruti, Lubich 2022, arXiv:2010.02022)::

    class MyBUG(Integrator):
        order, passes_per_step = 1, 2

        def step_requests(self, state, t, h):
            Y0 = state.Y
            U0, S0, V0 = Y0
            led = Ledger(rank_before=Y0.rank)

            def k_step():
                K1 = yield from self.substep.solve(KStep(led, V0, at=Y0), t, t + h,
                                                   self.start(U0, S0))
                return led.orth(K1)

            def l_step():
                L1 = yield from self.substep.solve(LStep(led, U0, at=Y0), t, t + h,
                                                   self.start(V0, adjoint(S0)))
                return led.orth(L1)

            U1, V1 = yield Parallel(k_step(), l_step())
            S_start = (adjoint(U1) @ U0) @ S0 @ (adjoint(V0) @ V1)
            S1 = yield from self.substep.solve(SStep(led, U1, V1), t, t + h, S_start)
            Y1 = LowRankMatrix(U1, S1, V1, check=False)
            return state.with_Y(Y1, t + h), led.finish(Y1.rank)

``solve(problem, Y0, span, h, method=MyBUG(substep=Euler()))`` and
``LowRankTraining(MyBUG(substep=Euler()), net.gradient)`` both run it unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .. import _backend as bk
from .._checks import check_matrix_start, check_product
from ..factors import LowRankMatrix
from ..protocol import (
    Field,
    Left,
    Parallel,
    Project,
    Request,
    Right,
    StageUpdate,
    StepGenerator,
    answer_from_problem,
)
from ..substeps import FactoredStart, SubstepSolver, as_substep, lend_workspace, owned_result
from ..threads import limit_threads
from ..truncation import FixedRank, TruncationRecord, TruncationRule

__all__ = [
    "AdaptiveIntegrator",
    "Field",
    "Integrator",
    "KStep",
    "LStep",
    "Ledger",
    "Left",
    "Parallel",
    "Project",
    "Request",
    "Right",
    "SStep",
    "State",
    "StepGenerator",
    "StepInfo",
    "StepMethod",
]


@dataclass(frozen=True)
class State:
    """The integrator state at time ``t``: the low-rank approximation ``Y`` and method data.

    ``data`` holds what a method carries from step to step (nothing for the methods of this
    package); it is replaced, never mutated.
    """

    Y: Any
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    def with_Y(self, Y: Any, t: float) -> State:
        if type(self) is State:  # the common case, without dataclasses.replace
            return State(Y, t, self.data)
        return replace(self, Y=Y, t=t)


@dataclass
class StepCounts:
    """The cost of one step: field products, factorisations and rejected attempts.

    Attributes
    ----------
    n_right, n_left, n_project : int
        Applications of ``F V``, ``F^H U`` and ``U^H F V``.
    n_qr, n_svd : int
        QR and SVD factorisations (of any size).
    rejected : int
        Rejected attempts (methods with step rejection).
    """

    n_right: int = 0
    n_left: int = 0
    n_project: int = 0
    n_qr: int = 0
    n_svd: int = 0
    rejected: int = 0

    @property
    def n_f(self) -> int:
        """Total number of factored ``F`` applications."""
        return self.n_right + self.n_left + self.n_project


@dataclass
class StepInfo(StepCounts):
    """Cost and rank bookkeeping of one matrix step.

    Attributes
    ----------
    rank_before, rank_after : int
        Rank of the input and output states.
    truncation : TruncationRecord or None
        The last rank decision of the step.
    """

    rank_before: int = 0
    rank_after: int = 0
    truncation: TruncationRecord | None = None


class FactorisationLedger:
    """Counts the QR and SVD factorisations of one step (shared by matrix and Tucker steps)."""

    info: StepCounts

    def qr(self, X: Any, *, overwrite: bool = False) -> tuple[Any, Any]:
        """Thin QR ``X = Q R``; with ``overwrite`` a NumPy ``X`` no one else holds becomes ``Q``."""
        self.info.n_qr += 1
        return bk.qr(X, overwrite=overwrite)

    def qr_project(self, X: Any, W: Any, *, overwrite: bool = False) -> tuple[Any, Any, Any]:
        """Thin QR ``X = Q R`` and ``Q^H W`` formed in its last pass (one QR)."""
        self.info.n_qr += 1
        return bk.qr_project(X, W, overwrite=overwrite)

    def orth(self, X: Any) -> Any:
        """Orthonormal basis of ``range(X)`` (thin QR, R discarded)."""
        return self.qr(X)[0]

    def qr_blocks(self, *blocks: Any) -> tuple[Any, Any]:
        """Thin QR of ``[B1, B2, ...]`` without a separate concatenation (one QR)."""
        self.info.n_qr += 1
        return bk.qr_blocks(blocks)

    def qr_increment(self, U0: Any, K1: Any, S0: Any) -> tuple[Any, Any]:
        """Thin QR of ``[U0, K1 - U0 S0]``, whose Q factor is that of ``[U0, K1]`` (one QR;
        see :func:`~lowrank_integrators._backend.qr_increment`)."""
        self.info.n_qr += 1
        return bk.qr_increment(U0, K1, S0)

    def qr_augment(self, U0: Any, X: Any) -> tuple[Any, Any]:
        """Thin QR of ``[U0, X]`` with ``X`` first orthogonalised against ``U0`` (one QR)."""
        self.info.n_qr += 1
        return bk.qr_augment(U0, X)

    def orth_blocks(self, *blocks: Any) -> Any:
        """``orth([B1, B2, ...])``: orthonormal basis of the span of the blocks' columns."""
        return self.qr_blocks(*blocks)[0]

    def svd(self, X: Any) -> tuple[Any, Any, Any]:
        """Reduced SVD ``X = P diag(sigma) Q^H``."""
        self.info.n_svd += 1
        return bk.svd(X)


class Ledger(FactorisationLedger):
    """Counts every request and factorisation of one matrix step and builds its :class:`StepInfo`.

    The ledger makes the step's requests (it never sees the problem): cost budgets, which
    define the methods, are observable whatever driver answers the step.

    Parameters
    ----------
    rank_before : int
        Rank of the step's input.
    """

    def __init__(self, rank_before: int = 0) -> None:
        self.info = StepInfo(rank_before=int(rank_before))

    # --- F products --------------------------------------------------------------------
    def right(
        self,
        t: float,
        Y: LowRankMatrix,
        V: Any,
        at: LowRankMatrix | None = None,
        *,
        hand_over: bool = False,
    ) -> Right:
        """The request ``F(t, Y) V`` (``hand_over``: see :class:`~lowrank_integrators.
        protocol.Right`)."""
        self.info.n_right += 1
        return Right(t, Y, V, at, hand_over)

    def left(
        self,
        t: float,
        Y: LowRankMatrix,
        U: Any,
        at: LowRankMatrix | None = None,
        *,
        hand_over: bool = False,
    ) -> Left:
        """The request ``F(t, Y)^H U`` (``hand_over``: see :class:`~lowrank_integrators.
        protocol.Left`)."""
        self.info.n_left += 1
        return Left(t, Y, U, at, hand_over)

    def project(
        self, t: float, Y: LowRankMatrix, U: Any, V: Any, at: LowRankMatrix | None = None
    ) -> Project:
        """The request ``U^H F(t, Y) V``."""
        self.info.n_project += 1
        return Project(t, Y, U, V, at)

    # --- rank decisions ----------------------------------------------------------------
    def truncate(
        self, rule: TruncationRule, U: Any, S: Any, V: Any, h: float, **kw: Any
    ) -> LowRankMatrix:
        """Apply a truncation rule (one SVD) and record its decision."""
        self.info.n_svd += 1
        Y, record = rule.truncate(U, S, V, h, **kw)
        self.info.truncation = record
        return Y

    def truncate_core(self, rule: TruncationRule, S: Any, h: float) -> tuple[Any, Any, Any]:
        """The rank decision on a core (one SVD), recorded: ``S ~ P S1 Q^H``.

        Returns ``(P, S1, Q)``; the caller forms ``U P`` and ``V Q`` and may release ``U``
        before forming ``V Q`` (one tall array fewer at the end of a rank-adaptive step).
        """
        self.info.n_svd += 1
        P, S1, Q, record = rule.truncate_core(S, h)
        self.info.truncation = record
        return P, S1, Q

    def finish(self, rank_after: int) -> StepInfo:
        self.info.rank_after = int(rank_after)
        return self.info


# --- substep ODEs ---------------------------------------------------------------------------


class SubstepField:
    """Base of the substep ODEs: the requests of one substep and how a problem answers them.

    A subclass sets ``kind`` (the product its field is), ``counter`` (the :class:`StepCounts`
    field it counts in), ``field_name`` (for error messages) and implements ``field(problem)``
    (the problem's substep field), ``increment_of``, ``point(X)`` and ``bases``.

    Parameters
    ----------
    ledger : Ledger
        Counts the evaluations.
    at : LowRankMatrix, optional
        The point that the substep's start value represents (see the module docstring).
    sign : {1, -1}
        ``-1`` for a backward substep: its field is minus the product.
    """

    kind: ClassVar[str] = ""
    counter: ClassVar[str] = ""
    field_name: ClassVar[str] = ""

    def __init__(self, ledger: Any, at: LowRankMatrix | None = None, sign: int = 1) -> None:
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        self.ledger = ledger
        self.at = at
        self.sign = sign
        self._bound: tuple[Any, Callable[[float, Any], Any]] | None = None
        self._problem: Any = None
        self._rhs: Callable[[float, Any], Any] | None = None

    #: How many evaluations one request or call counts for in the ledger.
    weight: int = 1

    #: Whether :meth:`request` passes on a solver's register updates (set by the matrix
    #: substeps; a subclass that overrides ``request`` keeps the default, False).
    accepts_update: ClassVar[bool] = False

    # --- the protocol --------------------------------------------------------------------
    def request(
        self, t: float, X: Any, start: bool = False, update: StageUpdate | None = None
    ) -> Field:
        """The request for the field at ``(t, X)``; ``start`` marks the substep's start value.

        ``update`` (a stage's register updates, see
        :class:`~lowrank_integrators.protocol.StageUpdate`) travels with the request of a
        forward substep; a backward one (``sign = -1``) drops it, and its solver updates the
        registers from the answer.
        """
        info = self.ledger.info
        setattr(info, self.counter, getattr(info, self.counter) + self.weight)
        return Field(self, t, X, self.at if start else None, update if self.sign == 1 else None)

    def finish(self, out: Any) -> Any:
        """The substep's right-hand side from the answer (applies the sign)."""
        return out if self.sign == 1 else -out

    def field_function(self, problem: Any) -> Callable[[float, Any], Any]:
        """The substep's right-hand side from ``problem`` as a function ``f(t, X)`` (see
        :class:`~lowrank_integrators.protocol.FieldFunction`): every call counts as an
        evaluation and its result is checked as an answered request's is."""
        field = self.field(problem)
        info, counter, weight = self.ledger.info, self.counter, self.weight
        # the sign of a substep that keeps the default finish, without a call per evaluation
        finish = None if type(self).finish is SubstepField.finish else self.finish
        negate = self.sign == -1
        name = f"problem.{self.field_name}"

        def f(t: float, X: Any) -> Any:
            setattr(info, counter, getattr(info, counter) + weight)
            out = field(t, X)
            if type(out) is not type(X) or out.dtype != X.dtype or out.shape != X.shape:
                out = check_product(name, out, X.shape, X.dtype)
            if finish is not None:
                return finish(out)
            return -out if negate else out

        return f

    def field(self, problem: Any) -> Callable[[float, Any], Any]:
        """The problem's field of this substep (built once per substep)."""
        if self._bound is None or self._bound[0] is not problem:
            self._bound = (problem, self.make_field(problem))
        return self._bound[1]

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        raise NotImplementedError

    def affine_of(self, problem: Any) -> bool:
        """Whether the problem's field of this substep is affine and autonomous: it declares
        ``affine = True`` (see :class:`~lowrank_integrators.protocol.Affine`)."""
        return getattr(self.field(problem), "affine", False) is True

    def increment_of(self, problem: Any, t0: float, t1: float) -> Any | None:
        """The exact increment over ``[t0, t1]`` from the problem, with the sign, or ``None``."""
        inc = self.make_increment(problem, t0, t1)
        if inc is None or self.sign == 1:
            return inc
        return -inc

    def make_increment(self, problem: Any, t0: float, t1: float) -> Any | None:
        return None

    # --- synchronous use by solvers that call their field ----------------------------------
    def bind(self, problem: Any) -> SubstepField:
        """This ODE with ``rhs`` and ``increment`` answered from ``problem`` (returns ``self``)."""
        self._problem = problem
        self._rhs = None
        return self

    def rhs(self, t: float, X: Any) -> Any:
        if self._rhs is None:
            if self._problem is None:
                raise RuntimeError("rhs needs a problem: call bind(problem) first")
            self._rhs = self.field_function(self._problem)
        return self._rhs(t, X)

    def increment(self, t0: float, t1: float) -> Any | None:
        if self._problem is None:
            raise RuntimeError("increment needs a problem: call bind(problem) first")
        return self.increment_of(self._problem, t0, t1)


class KStep(SubstepField):
    r"""``K' = F(t, K V0^H) V0`` (the K-step with fixed orthonormal right basis ``V0``)."""

    kind = "right"
    accepts_update = True
    counter = "n_right"
    field_name = "k_field"

    def __init__(self, ledger: Ledger, V0: Any, at: LowRankMatrix | None = None) -> None:
        super().__init__(ledger, at)
        self.V0 = V0

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.V0,)

    def point(self, K: Any) -> LowRankMatrix:
        return LowRankMatrix(K, bk.eye_like(self.V0, int(self.V0.shape[1])), self.V0, check=False)

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        return problem.k_field(self.V0)

    def make_increment(self, problem: Any, t0: float, t1: float) -> Any | None:
        return problem.increment_right(t0, t1, self.V0)


class LStep(SubstepField):
    r"""``L' = F(t, U0 L^H)^H U0`` (the L-step with fixed orthonormal left basis ``U0``)."""

    kind = "left"
    accepts_update = True
    counter = "n_left"
    field_name = "l_field"

    def __init__(self, ledger: Ledger, U0: Any, at: LowRankMatrix | None = None) -> None:
        super().__init__(ledger, at)
        self.U0 = U0

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.U0,)

    def point(self, L: Any) -> LowRankMatrix:
        return LowRankMatrix(self.U0, bk.eye_like(self.U0, int(self.U0.shape[1])), L, check=False)

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        return problem.l_field(self.U0)

    def make_increment(self, problem: Any, t0: float, t1: float) -> Any | None:
        return problem.increment_left(t0, t1, self.U0)


class SStep(SubstepField):
    r"""``S' = sign * U^H F(t, U S V^H) V``: Galerkin (``sign=+1``) or backward (``sign=-1``)."""

    kind = "project"
    accepts_update = True
    counter = "n_project"
    field_name = "s_field"

    def __init__(
        self, ledger: Ledger, U: Any, V: Any, sign: int = 1, at: LowRankMatrix | None = None
    ) -> None:
        super().__init__(ledger, at, sign)
        self.U = U
        self.V = V

    @property
    def bases(self) -> tuple[Any, ...]:
        return (self.U, self.V)

    def point(self, S: Any) -> LowRankMatrix:
        return LowRankMatrix(self.U, S, self.V, check=False)

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        return problem.s_field(self.U, self.V)

    def make_increment(self, problem: Any, t0: float, t1: float) -> Any | None:
        return problem.increment_project(t0, t1, self.U, self.V)


# --- the integrator bases -------------------------------------------------------------------


class StepMethod:
    """What matrix and Tucker integrators share: substep solver, protocol, declared theory.

    Theory is declared as class attributes (read by the registry
    :mod:`lowrank_integrators.methods`, the CLI, the verification suite, the paper figures and
    training); a class whose constructor selects a variant (``order=2``) declares the
    variant's values in ``variants`` and :meth:`theory` returns the right ones.

    Parameters
    ----------
    substep : SubstepSolver or callable, optional
        Solver for the substeps (default ``RK4(steps=1)``); a callable
        ``(f, t0, t1, X0) -> X1`` is accepted too (it can be answered by a problem, not by the
        training client, which needs a solver written as requests such as ``Euler()``).
    """

    #: Classical order of the method with exact substeps.
    order: int = 1
    #: Whether the method changes the rank by itself.
    rank_adaptive: bool = False
    #: Exact for every ``h`` on tangent fields ``F(Y) = A Y + Y B`` (projector splitting).
    exact_tangent: bool = False
    #: Reproduces rank-r explicit data ``A(t)`` to round-off.
    exact_data: bool = False
    #: Norm conservation on Schrodinger-type problems: "exact", "truncation", "drift", "unknown".
    norm: str = "unknown"
    #: Guaranteed descent of gradient flows for ``h <= 1/Lip``.
    descent: bool = False
    #: Largest factor by which the rank can grow in one step (``inf``: unbounded).
    max_rank_growth: float = 1.0
    #: Forward/backward passes per training step with Euler substeps (evaluation points).
    passes_per_step: int = 1
    #: Observed order 2 on Sylvester fields when truncated back to a fixed rank.
    second_order_sylvester: bool = False
    #: Whether the declared order also holds truncated to a fixed rank.
    fixed_rank_order: bool = True
    #: Papers the method implements: "Authors Year, Title, arXiv:id".
    references: tuple[str, ...] = ()
    #: Theory of the variants selected by the constructor's ``order`` (where it has one): the
    #: attributes that differ from the class's, by order.
    variants: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, substep: SubstepSolver | Callable[..., Any] | None = None) -> None:
        self.substep = as_substep(substep)

    @classmethod
    def theory(cls, order: int | None = None) -> dict[str, Any]:
        """The declared theory of the method (of its variant ``order``), as a dict."""
        names = (
            "order",
            "rank_adaptive",
            "exact_tangent",
            "exact_data",
            "norm",
            "descent",
            "max_rank_growth",
            "passes_per_step",
            "second_order_sylvester",
            "fixed_rank_order",
        )
        # A property (the rank adaptivity of TuckerBUG follows from its truncation argument)
        # depends on the configuration: None.
        out = {
            name: None if isinstance(getattr(cls, name), property) else getattr(cls, name)
            for name in names
        }
        if order is not None:
            out.update(cls.variants.get(order, {}))
        return out

    def _select_variant(self, order: int) -> None:
        """Set the declared theory of the variant ``order`` on this instance."""
        for name, value in self.variants.get(order, {}).items():
            setattr(self, name, value)

    def step_requests(self, state: State, t: float, h: float) -> StepGenerator:
        """The step from ``t`` to ``t + h``: a generator of requests returning ``(state, info)``.

        Every integrator of the package implements it. A subclass that overrides only
        ``step`` (the synchronous form, answered by a problem) still runs in ``solve``
        but cannot be driven by requests, e.g. in training.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not write its step as requests (step_requests); it can "
            "be run by solve through its step method only"
        )
        yield  # pragma: no cover - makes this method a generator

    def step(self, problem: Any, state: State, t: float, h: float) -> tuple[State, Any]:
        """Advance ``state`` from ``t`` to ``t + h``, answering the requests from ``problem``.

        An entry point like :func:`~lowrank_integrators.solve`: the step runs under the
        library's thread limit (:mod:`~lowrank_integrators.threads`), also when a user's own
        loop calls it; inside ``solve`` or another entry point the limit is already in place.
        """
        with limit_threads():
            return answer_from_problem(problem, self.step_requests(state, t, h))

    def start(self, left: Any, right: Any) -> Any:
        """The start value ``left @ right`` of a K- or L-substep (``K0 = U0 S0``).

        Solvers that accept it (:class:`~lowrank_integrators.RK4`,
        :class:`~lowrank_integrators.Euler`) get it as a
        :class:`~lowrank_integrators.substeps.FactoredStart` and never hold it as a tall
        array; any other solver gets the product.
        """
        if getattr(self.substep, "accepts_factored_start", False):
            return FactoredStart(left, right)
        return left @ right

    def substep_then(
        self,
        request: Any,
        left: Any,
        right: Any,
        t0: float,
        t1: float,
        factor: Callable[..., Any],
    ) -> StepGenerator:
        """Solve the substep ``request`` from ``left @ right`` over ``[t0, t1]``, then ``factor``.

        The start lends the step's work arrays (:func:`~lowrank_integrators.substeps.
        lend_workspace`), and ``factor(X1, overwrite=owned)`` receives the result, ``owned``
        true when no one else holds it, so that its QR may work in place (``Ledger.qr``) (see
        :func:`~lowrank_integrators.substeps.owned_result`). The result is not kept beyond
        ``factor``: no tall temporary outlives the substep.
        """
        X0 = lend_workspace(self.start(left, right), self)
        X1 = yield from self.substep.solve(request, t0, t1, X0)
        X0 = None
        refs = sys.getrefcount(X1)  # before any call holds it
        return factor(X1, overwrite=owned_result(X1, refs))

    def citation(self) -> str:
        """The references as text, one per line."""
        return "\n".join(self.references)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(substep={self.substep!r})"


class Integrator(StepMethod):
    """Base class of the matrix integrators (state ``Y`` a :class:`LowRankMatrix`)."""

    def init(self, problem: Any, Y0: LowRankMatrix, t0: float) -> State:
        """Initial state at ``t0``; validates ``problem`` and ``Y0`` before any step."""
        check_matrix_start(self, problem, Y0, t0)
        return State(Y=Y0, t=float(t0))


class AdaptiveIntegrator(Integrator):
    """An integrator whose step ends in a truncation rule.

    Parameters
    ----------
    truncation : TruncationRule
        ``FixedRank(r)`` truncates back to rank ``r``; ``Tolerance(...)`` adapts the rank.
    substep : SubstepSolver or callable, optional
        As for :class:`Integrator`.
    """

    rank_adaptive = True

    def __init__(
        self,
        truncation: TruncationRule,
        substep: SubstepSolver | Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(substep)
        if not isinstance(truncation, TruncationRule):
            raise TypeError(
                "truncation must be a TruncationRule such as FixedRank(r) or Tolerance(theta), "
                f"got {type(truncation).__name__}"
            )
        if isinstance(truncation, FixedRank) and isinstance(truncation.rank, tuple):
            raise ValueError(
                "truncation must give one rank for a matrix integrator, got per-mode ranks "
                f"{truncation.rank} (those are for Tucker integrators)"
            )
        self.truncation = truncation

    def __repr__(self) -> str:
        return f"{type(self).__name__}(truncation={self.truncation!r}, substep={self.substep!r})"
