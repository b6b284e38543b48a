r"""Tensor ODEs ``Y' = F(t, Y)`` for Tucker tensors, in factored form.

The Tucker integrators ask a problem for one kind of product only: the projection of
``F(t, Y)`` onto given bases in all modes but (optionally) one,

``project(t, Y, bases, skip=None) = F(t, Y) x_{j != skip} bases[j]^H``.

* With ``skip=None`` this is the core Galerkin right-hand side
  ``F(t, C x_j U_j) x_j U_j^H`` (shape ``(r_1, ..., r_d)``).
* With ``skip=i`` it is the mode-i K-step product before the small contraction with
  ``Q_i``: ``Mat_i(F) V_i = Mat_i(F x_{j != i} U_j^H) Q_i`` (see :mod:`lowrank_integrators.tucker`
  for the convention), of shape ``r_1 x ... x n_i x ... x r_d``.

``Y`` is a :class:`~lowrank_integrators.TuckerTensor` whose factors have full column rank but
are **not necessarily orthonormal** (the K-step state ``Ten_i(K_i V_i^H)`` carries ``K_i`` in
mode i). A factored problem uses ``Y`` only through its core and factors; it never forms an
``n_1 x ... x n_d`` array.

The integrators call the products through two substep fields, built once per substep for
fixed orthonormal bases (the defaults go through :meth:`TensorODE.project`):

* ``mode_field(bases, Q, i)``: ``(t, K) -> Mat_i(F(t, Ten_i(K V_i^H))) V_i`` with
  ``V_i = (kron_{j != i} conj(bases[j])) Q``;
* ``mode_s_field(bases, Q, i)``: ``(t, S) -> U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i`` with
  ``U_i = bases[i]`` (the S-step of projector splitting, before its backward sign);
* ``core_field(bases)``: ``(t, C) -> F(t, C x_j bases[j]) x_j bases[j]^H``.

A problem may override them to precompute what depends on the bases only; for
:class:`TensorSylvesterODE` every field is then a small Sylvester equation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from . import _backend as bk
from ._checks import check_product
from .problems import square_operator_size
from .tucker import (
    TuckerTensor,
    fold,
    matrix_adjoint,
    mode_product,
    multi_mode_product,
    unfold,
)

__all__ = ["DenseTensorODE", "TensorODE", "TensorSylvesterODE"]


class TensorODE(ABC):
    """Base class of tensor ODEs given in factored form.

    Subclasses implement :meth:`project`; :meth:`mode_field` and :meth:`core_field` may be
    overridden to precompute what depends on the bases only. :meth:`evaluate_dense` forms
    ``F(t, Y)`` explicitly and exists for small problems and diagnostics only.

    Attributes
    ----------
    shape : tuple of (int or None)
        The tensor shape the problem acts on; ``None`` entries are not fixed by the problem.
    """

    #: Tensor problems have no exact increments (no explicit-data tensor problem yet).
    has_increments: bool = False
    shape: tuple[int | None, ...] = ()

    @abstractmethod
    def project(
        self, t: float, Y: TuckerTensor, bases: Sequence[Any], skip: int | None = None
    ) -> Any:
        """``F(t, Y) x_{j != skip} bases[j]^H``.

        Parameters
        ----------
        t : float
        Y : TuckerTensor
            The state; its factors need not be orthonormal.
        bases : sequence of d arrays, shapes (n_j, k_j)
            ``bases[skip]`` is not used.
        skip : int or None
            The mode left at full size ``n_skip``; ``None`` projects every mode.

        Returns
        -------
        array of shape ``(k_1, ..., n_skip, ..., k_d)``
        """

    def evaluate_dense(self, t: float, Y: TuckerTensor) -> Any:
        """``F(t, Y)`` as a dense ``n_1 x ... x n_d`` array (small problems only).

        The default projects onto identity bases: ``F x_j I = F``.
        """
        eyes = [bk.eye_like(Y.core, n) for n in Y.shape]
        return self.project(t, Y, eyes)

    def mode_field(self, bases: Sequence[Any], Q: Any, mode: int) -> Callable[[float, Any], Any]:
        """``(t, K) -> Mat_i(F(t, Ten_i(K V_i^H))) V_i``: the mode-i K-step field.

        ``V_i = (kron_{j != i} conj(bases[j])) Q`` with orthonormal ``bases[j]`` (``j != i``)
        and ``Q`` (``prod_{j != i} r_j x k``) with orthonormal columns; ``bases[mode]`` is not
        used. ``Ten_i(K V_i^H)`` is the Tucker tensor with core ``Ten_i(Q^H)`` and factor
        ``K`` in mode i, and ``Mat_i(Z) V_i = Mat_i(Z x_{j != i} bases[j]^H) Q``.
        """
        bases = list(bases)
        ranks = [int(B.shape[1]) for B in bases]
        core = fold(matrix_adjoint(Q), mode, ranks)

        def field(t: float, K: Any) -> Any:
            factors = list(bases)
            factors[mode] = K
            Y = TuckerTensor(core, factors, check=False)
            shape = tuple(int(K.shape[0]) if j == mode else r for j, r in enumerate(ranks))
            out = check_product(
                "problem.project", self.project(t, Y, bases, skip=mode), shape, K.dtype
            )
            return unfold(out, mode) @ Q

        return field

    def mode_s_field(self, bases: Sequence[Any], Q: Any, mode: int) -> Callable[[float, Any], Any]:
        """``(t, S) -> U_i^H Mat_i(F(t, Ten_i(U_i S V_i^H))) V_i``: the mode-i S-step field.

        ``U_i = bases[mode]`` (orthonormal); the default is ``U_i^H`` times
        :meth:`mode_field` at ``K = U_i S``.
        """
        mode_field = self.mode_field(bases, Q, mode)
        U = bases[mode]
        U_H = matrix_adjoint(U)

        def field(t: float, S: Any) -> Any:
            out = mode_field(t, U @ S)
            out = check_product("problem.mode_field", out, (U.shape[0], S.shape[1]), S.dtype)
            return U_H @ out

        return field

    def core_field(self, bases: Sequence[Any]) -> Callable[[float, Any], Any]:
        """``(t, C) -> F(t, C x_j bases[j]) x_j bases[j]^H``: the Galerkin core field."""
        bases = list(bases)

        def field(t: float, C: Any) -> Any:
            out = self.project(t, TuckerTensor(C, bases, check=False), bases)
            return check_product("problem.project", out, tuple(C.shape), C.dtype)

        return field

    def check_state(self, Y: TuckerTensor) -> None:
        """Raise ``ValueError`` when ``Y`` does not have the shape the problem acts on."""
        shape = Y.shape
        if self.shape and (
            len(shape) != len(self.shape)
            or any(n is not None and n != m for n, m in zip(self.shape, shape, strict=False))
        ):
            expected = tuple("n" if n is None else n for n in self.shape)
            raise ValueError(
                f"Y has shape {shape}, but {type(self).__name__} acts on tensors of shape "
                f"{expected}"
            )


class DenseTensorODE(TensorODE):
    """A tensor ODE given by a function on dense tensors.

    **This problem densifies**: every product forms ``Y`` and ``F(t, Y)`` as
    ``n_1 x ... x n_d`` arrays. Use it for small problems, prototypes and as a reference for
    factored problems.

    Parameters
    ----------
    f : callable
        ``f(t, Y_dense) -> F`` with ``F`` of the same shape as ``Y_dense``.
    """

    def __init__(self, f: Callable[[float, Any], Any]) -> None:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        self.f = f
        self.shape = ()

    def evaluate_dense(self, t: float, Y: TuckerTensor) -> Any:
        F = self.f(t, Y.to_dense())
        if not bk.is_array(F) or tuple(F.shape) != Y.shape:
            got = tuple(F.shape) if hasattr(F, "shape") else type(F).__name__
            raise ValueError(
                f"f(t, Y) must return an array of shape {Y.shape} (the shape of Y), got {got}"
            )
        return F

    def project(
        self, t: float, Y: TuckerTensor, bases: Sequence[Any], skip: int | None = None
    ) -> Any:
        _check_bases(bases, Y)
        F = self.evaluate_dense(t, Y)
        mats = [None if j == skip else matrix_adjoint(W) for j, W in enumerate(bases)]
        return multi_mode_product(F, mats)

    def __repr__(self) -> str:
        return f"DenseTensorODE({getattr(self.f, '__name__', self.f)!r})"


class TensorSylvesterODE(TensorODE):
    r"""``F(t, Y) = sum_k Y x_k A_k + C``, evaluated with mode products of the core only.

    For ``Y = G x_j U_j`` (factors not necessarily orthonormal) and bases ``W_j``,

    ``F(Y) x_{j != i} W_j^H = sum_k G x_{j != k, i} (W_j^H U_j) x_k (W_k^H A_k U_k) x_i (.)``
    ``+ C_core x_{j != i} (W_j^H Uc_j) x_i Uc_i``,

    where the mode-i matrix is ``U_i`` (or ``A_i U_i`` in the term ``k = i``). Every matrix is
    ``n_j x r_j`` or smaller; the largest array formed is ``n_i x prod_{j != i} r_j``. No
    ``n_1 x ... x n_d`` array is ever allocated.

    Parameters
    ----------
    operators : sequence of d operators or None
        ``A_k`` of shape ``(n_k, n_k)``: dense arrays, ``scipy.sparse`` matrices or arrays,
        ``LinearOperator`` or anything supporting ``A @ X``; ``None`` for no term in mode k.
        A multiple of the identity ``c Y`` is written as ``c I`` in one of the modes.
    C : TuckerTensor, optional
        Constant source in Tucker format (its factors need not be orthonormal).

    Examples
    --------
    The V8 field ``F(Y) = Y + sum_k Y x_k W_k`` with skew-symmetric ``W_k``:

    >>> import numpy as np
    >>> import lowrank_integrators as lri
    >>> rng = np.random.default_rng(1)
    >>> W = [(R - R.T) / 2 for R in rng.random((3, 8, 8))]
    >>> problem = lri.TensorSylvesterODE([np.eye(8) + W[0], W[1], W[2]])
    >>> problem.shape
    (8, 8, 8)
    """

    def __init__(self, operators: Sequence[Any], C: TuckerTensor | None = None) -> None:
        if not isinstance(operators, (list, tuple)) or len(operators) < 2:
            raise TypeError(
                "operators must be a list or tuple of d >= 2 square operators (or None), got "
                f"{type(operators).__name__}"
                + (f" of length {len(operators)}" if isinstance(operators, (list, tuple)) else "")
            )
        if all(A is None for A in operators) and C is None:
            raise ValueError("operators are all None and there is no source C: F would be zero")
        shape: list[int | None] = []
        for k, A in enumerate(operators):
            shape.append(None if A is None else square_operator_size(f"operators[{k}]", A))
        if C is not None:
            if not isinstance(C, TuckerTensor):
                raise TypeError(
                    f"C must be a TuckerTensor (the source in Tucker format), got "
                    f"{type(C).__name__}"
                )
            if C.ndim != len(operators):
                raise ValueError(f"C has order {C.ndim} but {len(operators)} operators were given")
            for k, (n, m) in enumerate(zip(shape, C.shape, strict=True)):
                if n is not None and n != m:
                    raise ValueError(
                        f"C has size {m} in mode {k} but operators[{k}] has shape ({n}, {n})"
                    )
            shape = list(C.shape)
        self.operators = tuple(operators)
        self.C = C
        self.shape = tuple(shape)

    def project(
        self, t: float, Y: TuckerTensor, bases: Sequence[Any], skip: int | None = None
    ) -> Any:
        self.check_state(Y)
        _check_bases(bases, Y)
        G, U = Y
        small = [U[j] if j == skip else matrix_adjoint(bases[j]) @ U[j] for j in range(Y.ndim)]
        out = None
        for k, A in enumerate(self.operators):
            if A is None:
                continue
            AU = A @ U[k]
            mats = list(small)
            mats[k] = AU if k == skip else matrix_adjoint(bases[k]) @ AU
            term = multi_mode_product(G, mats)
            out = term if out is None else out + term
        if self.C is not None:
            Gc, Uc = self.C
            mats = [Uc[j] if j == skip else matrix_adjoint(bases[j]) @ Uc[j] for j in range(Y.ndim)]
            term = multi_mode_product(Gc, mats)
            out = term if out is None else out + term
        return out

    # With orthonormal bases U_j every field is a small Sylvester equation:
    #   mode i:  K' = A_i K + K D_i + E_i,  D_i = sum_{k != i} Mat_i(Ten_i(Q^H) x_k B_k) Q,
    #   core:    C' = sum_k C x_k B_k + C_c,
    # with B_k = U_k^H A_k U_k; Mat_i(Ten_i(Q^H)) Q = Q^H Q = I removes the core of the i-term.
    def projected_operators(
        self, bases: Sequence[Any], modes: Sequence[int] | None = None
    ) -> list[Any]:
        """``[U_k^H A_k U_k for each mode k]`` (``None`` where ``A_k`` is ``None``).

        One step of a Tucker integrator needs these for the old bases (every mode field) and
        for the new ones (the core field): formed here once per set of bases and handed to
        :meth:`mode_field` and :meth:`core_field` as ``projected=``, that is ``2d`` operator
        products per step instead of ``d (d - 1) + d``.

        Parameters
        ----------
        bases : sequence of d arrays, shapes (n_k, r_k)
        modes : sequence of int, optional
            Form the products of these modes only (``None`` in the other entries); default
            every mode.
        """
        bases = list(bases)
        d = len(self.operators)
        if len(bases) != d:
            raise ValueError(f"expected {d} bases, got {len(bases)}")
        wanted = range(d) if modes is None else set(modes)
        if modes is not None and not wanted <= set(range(d)):
            raise ValueError(f"modes must be mode indices in 0..{d - 1}, got {list(modes)}")
        return [
            None if A is None or k not in wanted else self._projected_operator(k, bases[k])
            for k, A in enumerate(self.operators)
        ]

    def mode_terms(
        self, bases: Sequence[Any], Q: Any, mode: int, projected: Sequence[Any] | None = None
    ) -> tuple[Any, Any]:
        """``(D, E)`` of the mode-i field ``K -> A_i K + K D + E`` (``None`` for no term).

        They depend on ``Q`` and the bases of the other modes only, so the K-step and the
        S-step of one mode (projector splitting: before and after ``bases[mode]`` is
        updated) share them: a step forms them once and hands them to :meth:`mode_field` and
        :meth:`mode_s_field` as ``terms=``. ``projected``: :meth:`projected_operators` of
        ``bases`` (the modes other than ``mode`` are used).
        """
        bases = list(bases)
        d = len(bases)
        ranks = [int(B.shape[1]) for B in bases]
        G = fold(matrix_adjoint(Q), mode, ranks)
        D = None
        for k, A in enumerate(self.operators):
            if A is None or k == mode:
                continue
            B_k = projected[k] if projected is not None else self._projected_operator(k, bases[k])
            term = unfold(mode_product(G, B_k, k), mode) @ Q
            D = term if D is None else D + term
        E = None
        if self.C is not None:
            Gc, Uc = self.C
            mats = [None if j == mode else matrix_adjoint(bases[j]) @ Uc[j] for j in range(d)]
            E = Uc[mode] @ (unfold(multi_mode_product(Gc, mats), mode) @ Q)
        return D, E

    def mode_field(
        self,
        bases: Sequence[Any],
        Q: Any,
        mode: int,
        projected: Sequence[Any] | None = None,
        terms: tuple[Any, Any] | None = None,
    ) -> Callable[[float, Any], Any]:
        """The mode-i K-step field.

        ``projected``: :meth:`projected_operators` of ``bases``; ``terms``: :meth:`mode_terms`
        of the same ``bases``, ``Q`` and ``mode`` (formed here when not given).
        """
        D, E = self.mode_terms(bases, Q, mode, projected) if terms is None else terms
        return _affine_field(self.operators[mode], D, E)

    def mode_s_field(
        self,
        bases: Sequence[Any],
        Q: Any,
        mode: int,
        projected: Sequence[Any] | None = None,
        terms: tuple[Any, Any] | None = None,
    ) -> Callable[[float, Any], Any]:
        """The mode-i S-step field ``S -> B_i S + S D + U_i^H E`` (``B_i = U_i^H A_i U_i``).

        ``U_i^H`` times the mode field at ``K = U_i S``, with every product on ``r x r``
        matrices; ``projected``: :meth:`projected_operators` of ``bases`` (mode ``i``
        included); ``terms``: :meth:`mode_terms` of the same ``bases``, ``Q`` and ``mode``.
        """
        D, E = self.mode_terms(bases, Q, mode, projected) if terms is None else terms
        B_i = None
        if self.operators[mode] is not None:
            B_i = projected[mode] if projected is not None else None
            if B_i is None:
                B_i = self._projected_operator(mode, bases[mode])
        E_s = None if E is None else matrix_adjoint(bases[mode]) @ E
        return _affine_field(B_i, D, E_s)

    def core_field(
        self, bases: Sequence[Any], projected: Sequence[Any] | None = None
    ) -> Callable[[float, Any], Any]:
        """The Galerkin core field; ``projected``: :meth:`projected_operators` of ``bases``."""
        bases = list(bases)
        d = len(bases)
        if projected is not None:
            B = list(projected)
        else:
            B = [
                None if A is None else self._projected_operator(k, bases[k])
                for k, A in enumerate(self.operators)
            ]
        Cp = None
        if self.C is not None:
            Gc, Uc = self.C
            Cp = multi_mode_product(Gc, [matrix_adjoint(bases[j]) @ Uc[j] for j in range(d)])

        def field(t: float, C: Any) -> Any:
            out = None
            for k, Bk in enumerate(B):
                if Bk is None:
                    continue
                term = mode_product(C, Bk, k)
                out = term if out is None else out + term
            if Cp is not None:
                out = Cp if out is None else out + Cp
            return out

        return field

    def _projected_operator(self, k: int, U: Any) -> Any:
        """``U^H A_k U``."""
        return matrix_adjoint(U) @ (self.operators[k] @ U)

    def evaluate_dense(self, t: float, Y: TuckerTensor) -> Any:
        self.check_state(Y)
        Yd = Y.to_dense()
        shape = Y.shape
        out = None
        for k, A in enumerate(self.operators):
            if A is None:
                continue
            term = fold(A @ unfold(Yd, k), k, shape)
            out = term if out is None else out + term
        if self.C is not None:
            out = self.C.to_dense() if out is None else out + self.C.to_dense()
        return out

    def __repr__(self) -> str:
        return f"TensorSylvesterODE(shape={self.shape}, C={self.C is not None})"


def _affine_field(L: Any, D: Any, E: Any) -> Callable[[float, Any], Any]:
    """The field ``X -> L X + X D + E`` of the Sylvester mode steps (``None`` terms absent)."""

    def field(t: float, X: Any) -> Any:
        out = None if L is None else L @ X
        if D is not None:
            out = X @ D if out is None else out + X @ D
        if E is not None:
            out = E if out is None else out + E
        return out

    return field


def _check_bases(bases: Sequence[Any], Y: TuckerTensor) -> None:
    if not isinstance(bases, (list, tuple)) or len(bases) != Y.ndim:
        raise ValueError(f"bases must be a sequence of {Y.ndim} matrices, one per mode")
