r"""What the Tucker integrators share: the step bookkeeping, the base class and the substep ODEs.

With the mode-i matrix form ``Mat_i(Y) = U_i S_i V_i^H`` of :mod:`lowrank_integrators.tucker`
(``Mat_i(C)^H = Q_i S_i^H``, ``V_i = (kron_{j != i} conj(U_j)) Q_i``) the substeps are

* mode-i K-step   ``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``,
* mode-i S-step   ``S' = -U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i`` (backward; projector
  splitting),
* core step       ``C' = F(t, C x_j U_j) x_j U_j^H`` (Galerkin).

``V_i`` is never formed: ``Ten_i(K_i V_i^H)`` is the Tucker tensor with core ``Ten_i(Q_i^H)``
and factor ``K_i`` in mode i, and ``Mat_i(Z) V_i = Mat_i(Z x_{j != i} U_j^H) Q_i``. The fields
come from the problem (``problem.mode_field`` and ``problem.core_field``, built once per
substep); the mode S-step is ``-U_i^H`` times the mode field at ``K = U_i S``.

Counting convention of :class:`TuckerStepInfo`: a K-step evaluation ``Mat_i(F) V_i`` counts
as one ``n_right`` (it is the ``F V`` product of the mode-i matricization); an evaluation
projected in every mode (core step, mode S-step) counts as one ``n_project``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _backend as bk
from .._checks import check_factor_dtype
from ..tensor_problems import TensorODE
from ..truncation import TruncationRecord
from ..tucker import TuckerTensor, unfold
from .base import CountedField, Integrator, Ledger, State, StepInfo

__all__ = [
    "CoreStep",
    "ModeKStep",
    "ModeSStep",
    "TuckerIntegrator",
    "TuckerLedger",
    "TuckerStepInfo",
    "mode_matrix_form",
]


@dataclass
class TuckerStepInfo(StepInfo):
    """:class:`StepInfo` of a Tucker step: ranks are tuples, one rank decision per mode.

    Attributes
    ----------
    rank_before, rank_after : tuple of int
        Multilinear ranks of the input and output states.
    truncations : tuple of TruncationRecord
        The per-mode rank decisions of a rank-adaptive step (empty otherwise); ``truncation``
        holds the last of them.
    """

    rank_before: tuple[int, ...] = ()
    rank_after: tuple[int, ...] = ()
    truncations: tuple[TruncationRecord, ...] = ()


class TuckerLedger(Ledger):
    """The :class:`Ledger` of a Tucker step: tuple ranks and mode/core fields."""

    def __init__(self, problem: TensorODE, ranks_before: tuple[int, ...]) -> None:
        self.problem = problem
        self.info = TuckerStepInfo(rank_before=tuple(ranks_before))

    def mode_field(
        self, bases: list[Any], Q: Any, mode: int, counter: str = "n_right"
    ) -> Callable[[float, Any], Any]:
        """The problem's mode-``mode`` field, counted in ``counter`` and shape-checked."""
        return CountedField(self, counter, "mode_field", self.problem.mode_field(bases, Q, mode))

    def core_field(self, bases: list[Any]) -> Callable[[float, Any], Any]:
        """The problem's Galerkin core field, counted in ``n_project`` and shape-checked."""
        return CountedField(self, "n_project", "core_field", self.problem.core_field(bases))

    def finish(self, ranks_after: tuple[int, ...]) -> TuckerStepInfo:  # type: ignore[override]
        self.info.rank_after = tuple(ranks_after)
        return self.info


def mode_matrix_form(led: TuckerLedger, core: Any, mode: int) -> tuple[Any, Any]:
    """``(S_i, Q_i)`` with ``Mat_i(C) = S_i Q_i^H`` from the thin QR ``Mat_i(C)^H = Q_i S_i^H``."""
    Q, R = led.qr(bk.adjoint(unfold(core, mode)))
    return bk.adjoint(R), Q


# --- substep ODEs ----------------------------------------------------------------------------


class ModeKStep:
    r"""``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``, ``V_i`` built from ``factors`` and ``Q``."""

    def __init__(self, ledger: TuckerLedger, factors: list[Any], Q: Any, mode: int) -> None:
        self.rhs = ledger.mode_field(list(factors), Q, mode)

    def increment(self, t0: float, t1: float) -> Any | None:
        return None


class ModeSStep:
    r"""``S' = -U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i``: the backward S-step of mode i."""

    def __init__(self, ledger: TuckerLedger, factors: list[Any], Q: Any, mode: int) -> None:
        self.U = factors[mode]
        self.U_H = bk.adjoint(self.U)
        self._field = ledger.mode_field(list(factors), Q, mode, counter="n_project")

    def rhs(self, t: float, S: Any) -> Any:
        return -(self.U_H @ self._field(t, self.U @ S))

    def increment(self, t0: float, t1: float) -> Any | None:
        return None


class CoreStep:
    r"""``C' = F(t, C x_j U_j) x_j U_j^H``: the Galerkin core step in fixed bases."""

    def __init__(self, ledger: TuckerLedger, factors: list[Any]) -> None:
        self.rhs = ledger.core_field(list(factors))

    def increment(self, t0: float, t1: float) -> Any | None:
        return None


# --- the base class --------------------------------------------------------------------------


class TuckerIntegrator(Integrator):
    """Base class of the Tucker integrators: validates a :class:`TuckerTensor` start.

    Subclasses implement ``step(problem, state, t, h)`` with ``problem`` a
    :class:`~lowrank_integrators.tensor_problems.TensorODE` and ``state.Y`` a
    :class:`TuckerTensor`.
    """

    #: Fixed-rank methods need every mode rank to be attainable: ``r_i <= prod_{j != i} r_j``.
    needs_compatible_ranks: bool = True

    def init(self, problem: TensorODE, Y0: TuckerTensor, t0: float) -> State:
        """Initial state at ``t0``; validates ``problem`` and ``Y0``."""
        if not isinstance(problem, TensorODE):
            raise TypeError(
                f"{type(self).__name__} integrates tensor problems (TensorODE such as "
                f"TensorSylvesterODE or DenseTensorODE), got {type(problem).__name__}"
            )
        if not isinstance(Y0, TuckerTensor):
            raise TypeError(
                f"Y0 must be a TuckerTensor, got {type(Y0).__name__}; use "
                "TuckerTensor.from_dense(X, ranks=...) for a dense initial value"
            )
        check_factor_dtype("Y0.core", Y0.core)
        for i, U in enumerate(Y0.factors):
            check_factor_dtype(f"Y0.factors[{i}]", U)
        problem.check_state(Y0)
        if self.needs_compatible_ranks:
            ranks = Y0.ranks
            for i, r in enumerate(ranks):
                others = 1
                for j, s in enumerate(ranks):
                    if j != i:
                        others *= s
                if r > others:
                    raise ValueError(
                        f"Y0 has ranks {ranks}: the rank {r} of mode {i} exceeds the product "
                        f"{others} of the other ranks, so the mode-{i} unfolding of the core "
                        f"cannot have rank {r} and {type(self).__name__} cannot keep it"
                    )
        return State(Y=Y0, t=float(t0))
