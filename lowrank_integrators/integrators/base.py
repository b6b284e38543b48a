r"""What every integrator shares: the step contract, the per-step ledger, the substep ODEs.

Contract for writing an integrator
----------------------------------
1. Subclass :class:`Integrator`; set the class attributes ``order``, ``rank_adaptive`` and
   ``references`` (author, year, arXiv id).
2. Implement ``step(problem, state, t, h) -> (State, StepInfo)``. Integrators are
   immutable configuration: a step never mutates ``self``, the problem or the input state.
3. Obtain ``F``-products, QR and SVD only through a :class:`Ledger`; it counts them, checks
   the shapes the problem returns and builds :class:`StepInfo`.
4. Solve substeps with ``self.substep(ode, t0, t1, X0)`` using the :class:`KStep`,
   :class:`LStep` and :class:`SStep` ODEs below; all substeps of one step run over the same
   ``[t, t + h]`` unless the method itself splits the interval. Pass the start value of a
   K- or L-step as ``self.start(U0, S0)`` rather than ``U0 @ S0``: the solver may then avoid
   holding it as a tall array.
5. Rank-adaptive methods truncate through ``self.truncation`` with ``ledger.truncate`` (the
   factors in, the truncated matrix out) or ``ledger.truncate_core`` (the core in, small
   factors out, so that ``U_hat`` can be released before ``V_hat Q`` is formed); both count
   the SVD and record the decision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import _backend as bk
from .._checks import check_matrix_start, check_product
from ..factors import LowRankMatrix
from ..problems import MatrixODE
from ..substeps import FactoredStart, SubstepSolver, as_substep
from ..truncation import FixedRank, TruncationRecord, TruncationRule

__all__ = [
    "AdaptiveIntegrator",
    "Integrator",
    "KStep",
    "LStep",
    "Ledger",
    "SStep",
    "State",
    "StepInfo",
]


@dataclass(frozen=True)
class State:
    """The integrator state at time ``t``: the low-rank approximation ``Y`` and method data.

    ``data`` holds what a method carries from step to step (nothing for the methods of this
    module); it is replaced, never mutated.
    """

    Y: Any
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    def with_Y(self, Y: Any, t: float) -> State:
        return replace(self, Y=Y, t=t)


@dataclass
class StepInfo:
    """Cost and rank bookkeeping of one step.

    Attributes
    ----------
    n_right, n_left, n_project : int
        Applications of ``F V``, ``F^H U`` and ``U^H F V``.
    n_qr, n_svd : int
        QR and SVD factorisations (of any size).
    rank_before, rank_after : int
        Rank of the input and output states.
    truncation : TruncationRecord or None
        The last rank decision of the step.
    rejected : int
        Rejected attempts (methods with step rejection).
    """

    n_right: int = 0
    n_left: int = 0
    n_project: int = 0
    n_qr: int = 0
    n_svd: int = 0
    rank_before: int = 0
    rank_after: int = 0
    truncation: TruncationRecord | None = None
    rejected: int = 0

    @property
    def n_f(self) -> int:
        """Total number of factored ``F`` applications."""
        return self.n_right + self.n_left + self.n_project


class Ledger:
    """Counts and checks every interaction of one step with the problem and with LAPACK.

    Integrators call ``F`` and factorisations only through a ledger, so that cost budgets
    (which define the methods) are observable and a problem returning a wrongly shaped
    product, or one of a dtype that does not cast safely into the state's, is caught at once
    with a message naming the product (see :func:`~lowrank_integrators._checks.check_product`).
    """

    def __init__(self, problem: MatrixODE, rank_before: int = 0) -> None:
        self.problem = problem
        self.info = StepInfo(rank_before=rank_before)

    # --- F products --------------------------------------------------------------------
    def right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        """``F(t, Y) V``."""
        self.info.n_right += 1
        out = self.problem.apply_right(t, Y, V)
        return check_product("problem.apply_right", out, (Y.shape[0], V.shape[1]), Y.dtype)

    def left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        """``F(t, Y)^H U``."""
        self.info.n_left += 1
        out = self.problem.apply_left(t, Y, U)
        return check_product("problem.apply_left", out, (Y.shape[1], U.shape[1]), Y.dtype)

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        """``U^H F(t, Y) V``."""
        self.info.n_project += 1
        out = self.problem.project(t, Y, U, V)
        return check_product("problem.project", out, (U.shape[1], V.shape[1]), Y.dtype)

    # --- factorisations ----------------------------------------------------------------
    def qr(self, X: Any) -> tuple[Any, Any]:
        """Thin QR ``X = Q R``."""
        self.info.n_qr += 1
        return bk.qr(X)

    def orth(self, X: Any) -> Any:
        """Orthonormal basis of ``range(X)`` (thin QR, R discarded)."""
        return self.qr(X)[0]

    def qr_blocks(self, *blocks: Any) -> tuple[Any, Any]:
        """Thin QR of ``[B1, B2, ...]`` without a separate concatenation (one QR)."""
        self.info.n_qr += 1
        return bk.qr_blocks(blocks)

    def orth_blocks(self, *blocks: Any) -> Any:
        """``orth([B1, B2, ...])``: orthonormal basis of the span of the blocks' columns."""
        return self.qr_blocks(*blocks)[0]

    def svd(self, X: Any) -> tuple[Any, Any, Any]:
        """Reduced SVD ``X = P diag(sigma) Q^H``."""
        self.info.n_svd += 1
        return bk.svd(X)

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
        self.info.rank_after = rank_after
        return self.info


# --- substep ODEs ---------------------------------------------------------------------------


class CountedField:
    """A substep field of the problem, counted in ``ledger.info.<counter>`` and checked (a
    substep field returns an array of the shape of its argument, in a dtype that casts
    safely into the argument's)."""

    def __init__(self, ledger: Any, counter: str, name: str, field: Callable[..., Any]):
        self.ledger = ledger
        self.counter = counter
        self.name = name
        self.field = field

    def __call__(self, t: float, X: Any) -> Any:
        info = self.ledger.info
        setattr(info, self.counter, getattr(info, self.counter) + 1)
        return check_product(f"problem.{self.name}", self.field(t, X), tuple(X.shape), X.dtype)


class KStep:
    r"""``K' = F(t, K V0^H) V0`` (the K-step with fixed orthonormal right basis ``V0``)."""

    def __init__(self, ledger: Ledger, V0: Any) -> None:
        self.ledger = ledger
        self.V0 = V0
        self.rhs = CountedField(ledger, "n_right", "k_field", ledger.problem.k_field(V0))

    def increment(self, t0: float, t1: float) -> Any | None:
        return self.ledger.problem.increment_right(t0, t1, self.V0)


class LStep:
    r"""``L' = F(t, U0 L^H)^H U0`` (the L-step with fixed orthonormal left basis ``U0``)."""

    def __init__(self, ledger: Ledger, U0: Any) -> None:
        self.ledger = ledger
        self.U0 = U0
        self.rhs = CountedField(ledger, "n_left", "l_field", ledger.problem.l_field(U0))

    def increment(self, t0: float, t1: float) -> Any | None:
        return self.ledger.problem.increment_left(t0, t1, self.U0)


class SStep:
    r"""``S' = sign * U^H F(t, U S V^H) V``: Galerkin (``sign=+1``) or backward (``sign=-1``)."""

    def __init__(self, ledger: Ledger, U: Any, V: Any, sign: int = 1) -> None:
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        self.ledger = ledger
        self.U = U
        self.V = V
        self.sign = sign
        self._field = CountedField(ledger, "n_project", "s_field", ledger.problem.s_field(U, V))

    def rhs(self, t: float, S: Any) -> Any:
        out = self._field(t, S)
        return out if self.sign == 1 else -out

    def increment(self, t0: float, t1: float) -> Any | None:
        inc = self.ledger.problem.increment_project(t0, t1, self.U, self.V)
        if inc is None or self.sign == 1:
            return inc
        return -inc


# --- the integrator base --------------------------------------------------------------------


class Integrator(ABC):
    """Base class of the matrix integrators.

    Parameters
    ----------
    substep : SubstepSolver or callable, optional
        Solver for the K-, L- and S-substeps (default ``RK4(steps=1)``); a callable
        ``(f, t0, t1, X0) -> X1`` is accepted too.
    """

    #: Classical order of the method with exact substeps.
    order: int = 1
    #: Whether the method changes the rank by itself.
    rank_adaptive: bool = False
    #: Papers the method implements: "Authors Year, Title, arXiv:id".
    references: tuple[str, ...] = ()

    def __init__(self, substep: SubstepSolver | Callable[..., Any] | None = None) -> None:
        self.substep = as_substep(substep)

    def init(self, problem: MatrixODE, Y0: LowRankMatrix, t0: float) -> State:
        """Initial state at ``t0``; validates ``problem`` and ``Y0`` before any step."""
        check_matrix_start(self, problem, Y0, t0)
        return State(Y=Y0, t=float(t0))

    @abstractmethod
    def step(self, problem: MatrixODE, state: State, t: float, h: float) -> tuple[State, StepInfo]:
        """Advance ``state`` from ``t`` to ``t + h``."""

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

    def citation(self) -> str:
        """The references as text, one per line."""
        return "\n".join(self.references)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(substep={self.substep!r})"


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
