r"""What the Tucker integrators share: the step bookkeeping, the base class and the substep ODEs.

With the mode-i matrix form ``Mat_i(Y) = U_i S_i V_i^H`` of :mod:`lowrank_integrators.tucker`
(``Mat_i(C)^H = Q_i S_i^H``, ``V_i = (kron_{j != i} conj(U_j)) Q_i``) the substeps are

* mode-i K-step   ``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``,
* mode-i S-step   ``S' = -U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i`` (backward; projector
  splitting),
* core step       ``C' = F(t, C x_j U_j) x_j U_j^H`` (Galerkin).

``V_i`` is never formed: ``Ten_i(K_i V_i^H)`` is the Tucker tensor with core ``Ten_i(Q_i^H)``
and factor ``K_i`` in mode i, and ``Mat_i(Z) V_i = Mat_i(Z x_{j != i} U_j^H) Q_i``. The fields
come from the problem (``problem.mode_field``, ``problem.mode_s_field`` and
``problem.core_field``, built once per substep); the mode S-step field is ``-U_i^H`` times the
mode field at ``K = U_i S``.

A problem with ``projected_operators(bases, modes=...)`` (:class:`TensorSylvesterODE`) gets
the projected operators ``U_k^H A_k U_k`` formed once per basis ``U_k`` within a step
(:class:`ProjectedOperatorCache`) and handed to its fields as ``projected=``: ``2d`` operator
products per BUG step instead of ``d (d - 1) + d`` (``2d - 1`` per projector-splitting step,
whose S-steps use them too). A problem with ``mode_terms(bases, Q, mode, projected=...)``
gets the terms of its mode fields formed once per mode (:class:`ModeTermsCache`) and handed
to them as ``terms=``: the K-step and the S-step of a projector-splitting mode share them.

Counting convention of :class:`TuckerStepInfo`: a K-step evaluation ``Mat_i(F) V_i`` counts
as one ``n_right`` (it is the ``F V`` product of the mode-i matricization); an evaluation
projected in every mode (core step, mode S-step) counts as one ``n_project``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import _backend as bk
from .._checks import check_factor_dtype, check_product
from .._qr import _small_real_householder
from ..protocol import Field, StepGenerator
from ..tensor_problems import TensorODE
from ..truncation import TruncationRecord
from ..tucker import TuckerTensor, fold, matrix_adjoint, unfold
from .base import FactorisationLedger, StepCounts, StepMethod, SubstepField

__all__ = [
    "CoreStep",
    "ModeKStep",
    "ModeKSteps",
    "ModeSStep",
    "ModeTermsCache",
    "ProjectedOperatorCache",
    "TuckerIntegrator",
    "TuckerLedger",
    "TuckerState",
    "TuckerStepInfo",
    "TuckerSubstep",
    "core_step",
    "mode_matrix_form",
]


@dataclass(frozen=True)
class TuckerState:
    """The state of a Tucker integrator at time ``t``: the Tucker tensor ``Y`` and method data."""

    Y: TuckerTensor
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    def with_Y(self, Y: TuckerTensor, t: float) -> TuckerState:
        return TuckerState(Y, t, self.data)


@dataclass
class TuckerStepInfo(StepCounts):
    """Cost and rank bookkeeping of one Tucker step: multilinear ranks, per-mode decisions.

    Attributes
    ----------
    rank_before, rank_after : tuple of int
        Multilinear ranks of the input and output states.
    truncations : tuple of TruncationRecord
        The per-mode rank decisions of a rank-adaptive step (empty otherwise).
    truncation : TruncationRecord or None
        The last of them.
    """

    rank_before: tuple[int, ...] = ()
    rank_after: tuple[int, ...] = ()
    truncations: tuple[TruncationRecord, ...] = ()
    truncation: TruncationRecord | None = None


class ProjectedOperatorCache:
    """The projected operators ``U_k^H A_k U_k`` of one step, formed once per basis ``U_k``.

    An entry is kept with the basis it was formed from and reused while the step asks for
    the same basis object (the bases of a step are never modified in place).
    """

    __slots__ = ("_entries", "_problem")

    def __init__(self) -> None:
        self._problem: Any = None
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, problem: Any, bases: list[Any], modes: list[int]) -> list[Any] | None:
        """The projected operators of ``bases`` in ``modes`` (``None`` elsewhere).

        Returns ``None`` when ``problem`` has no ``projected_operators``.
        """
        form = getattr(problem, "projected_operators", None)
        if form is None:
            return None
        if problem is not self._problem:
            self._problem, self._entries = problem, {}
        entries = self._entries
        out: list[Any] = [None] * len(bases)
        missing = []
        for k in modes:
            entry = entries.get(k)
            if entry is not None and entry[0] is bases[k]:
                out[k] = entry[1]
            else:
                missing.append(k)
        if missing:
            formed = form(bases, modes=missing)
            for k in missing:
                entries[k] = (bases[k], formed[k])
                out[k] = formed[k]
        return out


class ModeTermsCache:
    """The terms ``(D, E)`` of the mode fields of one step, formed once per mode.

    The K-step and the S-step of one mode of projector splitting have the same ``Q_i`` and
    the same bases in the other modes (only ``U_i`` changes in between); their fields share
    the terms that depend on these alone (:meth:`TensorSylvesterODE.mode_terms
    <lowrank_integrators.TensorSylvesterODE.mode_terms>`). An entry is reused while the step
    asks with the same ``Q`` and basis objects.
    """

    __slots__ = ("_entries", "_problem")

    def __init__(self) -> None:
        self._problem: Any = None
        self._entries: dict[int, tuple[Any, list[Any], Any]] = {}

    def get(
        self, problem: Any, bases: list[Any], Q: Any, mode: int, projected: list[Any] | None
    ) -> Any | None:
        """The problem's ``mode_terms(bases, Q, mode)``; ``None`` when it has none."""
        form = getattr(problem, "mode_terms", None)
        if form is None:
            return None
        if problem is not self._problem:
            self._problem, self._entries = problem, {}
        others = [U for k, U in enumerate(bases) if k != mode]
        entry = self._entries.get(mode)
        if entry is not None and entry[0] is Q and _same_objects(entry[1], others):
            return entry[2]
        if projected is None:
            terms = form(bases, Q, mode)
        else:
            terms = form(bases, Q, mode, projected=projected)
        self._entries[mode] = (Q, others, terms)
        return terms


def _same_objects(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists hold the same objects, in order (identity, not equality)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is not y:
            return False
    return True


class TuckerLedger(FactorisationLedger):
    """Counts the requests and factorisations of one Tucker step and builds its info.

    ``projected`` caches the projected operators of the step's bases, ``terms`` the terms of
    its mode fields. The QRs and SVDs of a Tucker step are small (core unfoldings, bases of
    ``n_i x r_i``): small real NumPy arrays go straight to the LAPACK routes that
    :func:`~lowrank_integrators._backend.qr` and :func:`~lowrank_integrators._backend.svd`
    take for them, with the same finiteness checks and the same results.
    """

    def __init__(self, ranks_before: tuple[int, ...]) -> None:
        self.info = TuckerStepInfo(rank_before=tuple(int(r) for r in ranks_before))
        self.projected = ProjectedOperatorCache()
        self.terms = ModeTermsCache()

    def qr(self, X: Any, *, overwrite: bool = False) -> tuple[Any, Any]:
        if not _small_real(X):
            return super().qr(X, overwrite=overwrite)
        self.info.n_qr += 1
        if not np.isfinite(X).all():
            bk.require_finite(X, "a matrix to be factorised by QR")
        Q, R, _, _ = _small_real_householder(X, None)
        return Q, R

    def qr_blocks(self, *blocks: Any) -> tuple[Any, Any]:
        if not (blocks and all(_small_real(b) for b in blocks)):
            return super().qr_blocks(*blocks)
        X = np.concatenate(blocks, axis=1)
        if not _small_real(X) or X.dtype != blocks[0].dtype:
            return super().qr_blocks(*blocks)
        self.info.n_qr += 1
        if not np.isfinite(X).all():
            for b in blocks:
                bk.require_finite(b, "a block of a matrix to be factorised by QR")
        Q, R, _, _ = _small_real_householder(X, None)
        return Q, R

    def svd(self, X: Any) -> tuple[Any, Any, Any]:
        if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype.kind == "f"):
            return super().svd(X)
        if X.size > _SMALL_QR_ENTRIES or min(X.shape) == 0:
            return super().svd(X)
        self.info.n_svd += 1
        if not np.isfinite(X).all():
            bk.require_finite(X, "a matrix to be factorised by SVD")
        return bk._gesdd(X)

    def finish(self, ranks_after: tuple[int, ...]) -> TuckerStepInfo:
        self.info.rank_after = tuple(int(r) for r in ranks_after)
        return self.info


#: Largest QR or SVD input (entries) that takes the direct small route (far below the size
#: where the library's QR leaves its own small route for the Cholesky passes).
_SMALL_QR_ENTRIES = 4096


def _small_real(X: Any) -> bool:
    """Whether ``X`` is a small real tall NumPy matrix (the LAPACK small-QR route)."""
    return (
        type(X) is np.ndarray
        and X.ndim == 2
        and X.dtype.kind == "f"
        and 0 < X.shape[1] <= X.shape[0]
        and X.size <= _SMALL_QR_ENTRIES
    )


def mode_matrix_form(led: TuckerLedger, core: Any, mode: int) -> tuple[Any, Any]:
    """``(S_i, Q_i)`` with ``Mat_i(C) = S_i Q_i^H`` from the thin QR ``Mat_i(C)^H = Q_i S_i^H``."""
    Q, R = led.qr(matrix_adjoint(unfold(core, mode)))
    return matrix_adjoint(R), Q


# --- substep ODEs ----------------------------------------------------------------------------


class TuckerSubstep(SubstepField):
    """Base of the Tucker substep ODEs: their fields depend on the state for every problem
    (tensor problems have no exact increments), so a solver asks for no increment."""

    has_increments: ClassVar[bool] = False


class ModeKStep(TuckerSubstep):
    r"""``K_i' = Mat_i(F(t, Ten_i(K_i V_i^H))) V_i``, ``V_i`` built from ``factors`` and ``Q``."""

    counter = "n_right"
    field_name = "mode_field"

    def __init__(self, ledger: TuckerLedger, factors: list[Any], Q: Any, mode: int) -> None:
        super().__init__(ledger)
        self.factors, self.Q, self.mode = list(factors), Q, mode

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        return _mode_field(problem, self.ledger, self.factors, self.Q, self.mode)


class ModeKSteps(TuckerSubstep):
    r"""The K-steps of every mode of a BUG step, as one substep ODE.

    The mode-i K-steps of BUG start from the same ``Y0`` and do not depend on each other, so
    they form one ODE whose state stacks ``vec(K_i)`` (row-major) in a column of
    ``sum_i n_i k_i`` entries: a substep solver then asks for all ``d`` mode fields in one
    request per stage. Every solver of the package treats the entries of its state alike
    (the same stage times and entrywise updates), so the stacked substep is the ``d`` mode
    substeps, to round-off. An evaluation counts ``d`` times in ``n_right``.

    Parameters
    ----------
    ledger : TuckerLedger
    factors : list of arrays
        The bases ``U_j`` of the step's start.
    Qs : list of arrays
        ``Q_i`` of the mode-i matrix forms ``Mat_i(C) = S_i Q_i^H``.
    """

    counter = "n_right"
    field_name = "mode_field"

    def __init__(self, ledger: TuckerLedger, factors: list[Any], Qs: list[Any]) -> None:
        super().__init__(ledger)
        self.factors, self.Qs = list(factors), list(Qs)
        self.blocks: list[tuple[slice, tuple[int, int]]] = []
        start = 0
        for U, Q in zip(self.factors, self.Qs, strict=True):
            shape = (int(U.shape[0]), int(Q.shape[1]))
            self.blocks.append((slice(start, start + shape[0] * shape[1]), shape))
            start += shape[0] * shape[1]
        self.size = start
        self.weight = len(self.blocks)  # an evaluation counts once per mode

    def request(self, t: float, X: Any, start: bool = False) -> Field:
        self.ledger.info.n_right += self.weight
        return Field(self, t, X, None)

    def stack(self, Ks: list[Any]) -> Any:
        """The state ``[vec(K_1); ...; vec(K_d)]`` (a column) of the mode matrices ``K_i``."""
        if all(type(K) is np.ndarray for K in Ks):
            return np.concatenate([K.reshape(-1, 1) for K in Ks])
        xp = bk.namespace(*Ks)
        return xp.concat([xp.reshape(K, (-1, 1)) for K in Ks], axis=0)

    def part(self, X: Any, mode: int) -> Any:
        """``K_mode`` of the state ``X`` (a view for NumPy)."""
        b, shape = self.blocks[mode]
        if type(X) is np.ndarray:
            return X[b].reshape(shape)
        return bk.namespace(X).reshape(X[b, :], shape)

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        fields = [
            _mode_field(problem, self.ledger, self.factors, Q, i) for i, Q in enumerate(self.Qs)
        ]
        parts = [(f, b, shape) for f, (b, shape) in zip(fields, self.blocks, strict=True)]
        stack = self.stack

        def field(t: float, X: Any) -> Any:
            if type(X) is not np.ndarray:
                xp = bk.namespace(X)
                outs = [
                    check_product(
                        "problem.mode_field", f(t, xp.reshape(X[b, :], shape)), shape, X.dtype
                    )
                    for f, b, shape in parts
                ]
                return stack(outs)
            outs = []
            for f, b, shape in parts:
                out = f(t, X[b].reshape(shape))
                if type(out) is not np.ndarray or out.shape != shape or out.dtype != X.dtype:
                    out = check_product("problem.mode_field", out, shape, X.dtype)
                outs.append(out.reshape(-1, 1))
            return np.concatenate(outs)

        return field


class ModeSStep(TuckerSubstep):
    r"""``S' = -U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i``: the backward S-step of mode i."""

    counter = "n_project"
    field_name = "mode_s_field"

    def __init__(self, ledger: TuckerLedger, factors: list[Any], Q: Any, mode: int) -> None:
        super().__init__(ledger, sign=-1)  # backward: minus the projected field
        self.factors, self.Q, self.mode = list(factors), Q, mode

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        factors, Q, mode = self.factors, self.Q, self.mode
        projected = self.ledger.projected.get(problem, factors, list(range(len(factors))))
        kw = _shared_products(problem, self.ledger, factors, Q, mode, projected)
        return problem.mode_s_field(factors, Q, mode, **kw)


class CoreStep(TuckerSubstep):
    r"""``C' = F(t, C x_j U_j) x_j U_j^H``: the Galerkin core step in fixed bases.

    The substep's state is the mode-1 unfolding ``Mat_1(C)`` (a reshape of the core): a
    matrix, like the state of every other substep, so that the solvers update it in place.
    The problem's core field sees and returns cores of shape ``shape``.
    """

    counter = "n_project"
    field_name = "core_field"

    def __init__(self, ledger: TuckerLedger, factors: list[Any], shape: tuple[int, ...]) -> None:
        super().__init__(ledger)
        self.factors = list(factors)
        self.shape = tuple(int(r) for r in shape)

    def make_field(self, problem: Any) -> Callable[[float, Any], Any]:
        factors = self.factors
        projected = self.ledger.projected.get(problem, factors, list(range(len(factors))))
        if projected is None:
            core_field = problem.core_field(factors)
        else:
            core_field = problem.core_field(factors, projected=projected)
        shape = self.shape

        def field(t: float, X: Any) -> Any:
            numpy = type(X) is np.ndarray
            out = core_field(t, X.reshape(shape) if numpy else fold(X, 0, shape))
            if type(out) is not np.ndarray or out.shape != shape:
                out = check_product("problem.core_field", out, shape, X.dtype)
            return out.reshape(X.shape) if numpy and type(out) is np.ndarray else unfold(out, 0)

        return field


def core_step(
    substep: Any, led: TuckerLedger, bases: list[Any], t0: float, t1: float, C0: Any
) -> StepGenerator:
    """The Galerkin core step from ``C0`` over ``[t0, t1]`` in the fixed ``bases``: ``C1``."""
    shape = tuple(int(r) for r in C0.shape)
    C1 = yield from substep.solve(CoreStep(led, bases, shape), t0, t1, unfold(C0, 0))
    return fold(C1, 0, shape)


def _mode_field(
    problem: Any, ledger: TuckerLedger, factors: list[Any], Q: Any, mode: int
) -> Callable[[float, Any], Any]:
    """The problem's mode field, with the step's projected operators when it takes them."""
    others = [k for k in range(len(factors)) if k != mode]
    projected = ledger.projected.get(problem, factors, others)
    kw = _shared_products(problem, ledger, factors, Q, mode, projected)
    return problem.mode_field(factors, Q, mode, **kw)


def _shared_products(
    problem: Any,
    ledger: TuckerLedger,
    factors: list[Any],
    Q: Any,
    mode: int,
    projected: list[Any] | None,
) -> dict[str, Any]:
    """The keywords ``projected=`` and ``terms=`` of a mode field, for problems that take them."""
    kw: dict[str, Any] = {}
    if projected is not None:
        kw["projected"] = projected
    terms = ledger.terms.get(problem, factors, Q, mode, projected)
    if terms is not None:
        kw["terms"] = terms
    return kw


# --- the base class --------------------------------------------------------------------------


class TuckerIntegrator(StepMethod):
    """Base class of the Tucker integrators, a sibling of the matrix :class:`Integrator`.

    Subclasses implement ``step_requests(state, t, h)`` with ``state`` a
    :class:`TuckerState`, returning ``(TuckerState, TuckerStepInfo)``; their steps are
    answered by a :class:`~lowrank_integrators.tensor_problems.TensorODE`.
    """

    def needs_compatible_ranks(self) -> bool:
        """Whether every mode rank must be attainable: ``r_i <= prod_{j != i} r_j``."""
        return not self.rank_adaptive

    def init(self, problem: TensorODE, Y0: TuckerTensor, t0: float) -> TuckerState:
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
        if self.needs_compatible_ranks():
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
        return TuckerState(Y=Y0, t=float(t0))
