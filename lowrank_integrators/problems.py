r"""Matrix ODEs ``Y' = F(t, Y)`` in factored form.

The integrators never ask for ``F(t, Y)`` as an ``m x n`` matrix. A problem supplies three
products at a factored ``Y = U_Y S_Y V_Y^H``:

* ``apply_right(t, Y, V) = F(t, Y) @ V``        (m x k),
* ``apply_left(t, Y, U)  = F(t, Y)^H @ U``      (n x k),
* ``project(t, Y, U, V)  = U^H @ F(t, Y) @ V``  (k x l).

Inside substeps the integrators pass intermediate states such as ``K V0^H`` as
``LowRankMatrix(K, I, V0, check=False)``: the outer factors of the ``Y`` a problem receives
have full column rank but are **not necessarily orthonormal**. Problems must therefore use
``Y`` only through products (``Y.matmul``, ``Y.rmatmul_adjoint``, or ``Y.U``, ``Y.S``,
``Y.V`` as plain factors).

A problem whose right-hand side does not depend on the state (explicit data ``F = A'(t)``)
additionally offers exact increments ``int_{t0}^{t1} F dt`` applied to factors; substep
solvers then solve every substep exactly.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _backend as bk
from . import _fused
from ._checks import check_product, check_same_library
from ._projected import ProjectedOperators
from .factors import LowRankMatrix

__all__ = ["DataODE", "DenseODE", "MatrixODE", "SylvesterODE"]


class MatrixODE(ABC):
    """Base class of matrix ODEs given in factored form.

    Subclasses implement :meth:`apply_right` and :meth:`apply_left`; :meth:`project` defaults
    to ``U^H apply_right(t, Y, V)`` and should be overridden when a cheaper form exists.
    :meth:`evaluate_dense` forms ``F(t, Y)`` explicitly and exists for diagnostics of small
    problems only.
    """

    #: Whether ``F`` ignores the state, so that substeps have exact increments.
    has_increments: bool = False

    @abstractmethod
    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        """``F(t, Y) @ V`` for ``V`` of shape (n, k)."""

    @abstractmethod
    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        """``F(t, Y)^H @ U`` for ``U`` of shape (m, k)."""

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        """``U^H @ F(t, Y) @ V``."""
        return bk.adjoint(U) @ self.apply_right(t, Y, V)

    def step_scope(self) -> contextlib.AbstractContextManager[None]:
        """The context in which a driver answers the requests of one step.

        A problem may keep what depends only on the bases of the step (the projected
        operators of :class:`SylvesterODE`) until the scope ends. The default keeps nothing.
        """
        return contextlib.nullcontext()

    # The right-hand sides of the substeps. Bases passed here have orthonormal columns; a
    # problem may precompute whatever depends only on them (e.g. V^H B^T V for Sylvester
    # fields), which is what makes a factored step as cheap as a hand-written one. A returned
    # field may also offer ``fold(t, X, update)``: the stage with the solver's register updates
    # (lowrank_integrators.protocol.StageUpdate) done in the same pass, or None where it
    # cannot; the problem driver then answers RK4 stages that way (SylvesterODE with CSR
    # operators and numba). A field that sets ``affine = True`` promises f(t, X) = L(X) + c
    # with the same L and c at every t: RK4 then takes its arrangement for such fields
    # (lowrank_integrators.protocol.Affine), with two fewer tall products per substep.
    def k_field(self, V: Any) -> Callable[[float, Any], Any]:
        """``(t, K) -> F(t, K V^H) V``: the K-step field for a fixed orthonormal ``V``."""
        eye = bk.eye_like(V, int(V.shape[1]))
        return lambda t, K: self.apply_right(t, LowRankMatrix(K, eye, V, check=False), V)

    def l_field(self, U: Any) -> Callable[[float, Any], Any]:
        """``(t, L) -> F(t, U L^H)^H U``: the L-step field for a fixed orthonormal ``U``."""
        eye = bk.eye_like(U, int(U.shape[1]))
        return lambda t, L: self.apply_left(t, LowRankMatrix(U, eye, L, check=False), U)

    def s_field(self, U: Any, V: Any) -> Callable[[float, Any], Any]:
        """``(t, S) -> U^H F(t, U S V^H) V``: the Galerkin field for fixed orthonormal bases."""
        return lambda t, S: self.project(t, LowRankMatrix(U, S, V, check=False), U, V)

    def check_state(self, Y: LowRankMatrix, t: float) -> None:
        """Raise ``ValueError``/``TypeError`` when the problem cannot act on ``Y`` at ``t``.

        Integrators call it once, before the first step, so that a size or array-library
        mismatch is reported with the argument's name instead of failing inside a product.
        The default accepts every ``Y``.
        """
        return None

    def evaluate_dense(self, t: float, Y: LowRankMatrix) -> Any:
        """``F(t, Y)`` as a dense ``m x n`` matrix (small problems and diagnostics only)."""
        n = Y.shape[1]
        xp = bk.namespace(Y.S)
        eye = xp.eye(n, dtype=Y.dtype, device=bk.device(Y.S))
        return self.apply_right(t, Y, eye)

    # Exact increments for state-independent right-hand sides; None otherwise.
    def increment_right(self, t0: float, t1: float, V: Any) -> Any | None:
        """``(int_{t0}^{t1} F dt) @ V`` when ``F`` ignores the state, else ``None``."""
        return None

    def increment_left(self, t0: float, t1: float, U: Any) -> Any | None:
        """``(int_{t0}^{t1} F dt)^H @ U`` when ``F`` ignores the state, else ``None``."""
        return None

    def increment_project(self, t0: float, t1: float, U: Any, V: Any) -> Any | None:
        """``U^H (int_{t0}^{t1} F dt) V`` when ``F`` ignores the state, else ``None``."""
        return None


class DenseODE(MatrixODE):
    """A matrix ODE given by a function on dense matrices.

    **This problem densifies**: every product forms ``Y`` and ``F(t, Y)`` as ``m x n``
    arrays. Use it for small problems, prototypes and as a reference for factored problems.

    Parameters
    ----------
    f : callable
        ``f(t, Y_dense) -> F`` with ``F`` of the same shape as ``Y_dense``.
    """

    def __init__(self, f: Callable[[float, Any], Any]) -> None:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        self.f = f

    def evaluate_dense(self, t: float, Y: LowRankMatrix) -> Any:
        F = self.f(t, Y.to_dense())
        if not bk.is_array(F) or tuple(F.shape) != Y.shape:
            got = tuple(F.shape) if hasattr(F, "shape") else type(F).__name__
            raise ValueError(
                f"f(t, Y) must return an array of shape {Y.shape} (the shape of Y), got {got}"
            )
        return F

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        return self.evaluate_dense(t, Y) @ V

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        return bk.adjoint(self.evaluate_dense(t, Y)) @ U

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        return bk.adjoint(U) @ (self.evaluate_dense(t, Y) @ V)

    def __repr__(self) -> str:
        return f"DenseODE({getattr(self.f, '__name__', self.f)!r})"


def sylvester_core_field(Au: Any, Bv: Any | None, Cuv: Any | None) -> Callable[[float, Any], Any]:
    """The Galerkin field ``S -> Au S + S Bv + Cuv`` of a Sylvester problem in fixed bases.

    ``Au = U^H A U``, ``Bv = V^H B^T V`` (``None`` without ``B``) and ``Cuv = U^H C V``
    (``None`` without a source) are the small projected coefficients.
    """

    def field(t: float, S: Any) -> Any:
        out = Au @ S
        if Bv is not None:
            out = out + S @ Bv
        return out if Cuv is None else out + Cuv

    field.affine = True  # type: ignore[attr-defined]
    return field


class SylvesterODE(MatrixODE):
    r"""``F(t, Y) = A Y + Y B^T + C``, evaluated with tall-skinny products only.

    The factored products are

    * ``F V     = A (Y V) + Y (B^T V) + C V``,
    * ``F^H U   = Y^H (A^H U) + conj(B) (Y^H U) + C^H U``,
    * ``U^H F V = (A^H U)^H (Y V) + (U^H Y)(B^T V) + U^H C V``.

    The L-product needs the conjugate transposes ``A^H``, ``conj(B)`` and ``C^H``; a plain
    ``C U`` is wrong for non-Hermitian ``C``.

    On row-chunked Dask factors, SciPy sparse ``A`` and ``B`` act chunk by chunk (halo
    exchange for banded operators, gathered rows otherwise) and every product stays lazy; see
    :mod:`lowrank_integrators.dask_operators`.

    Parameters
    ----------
    A : operator, shape (m, m)
        Dense array, ``scipy.sparse`` matrix/array, ``LinearOperator`` or anything with ``@``
        (and ``.T``/``.conj()`` or ``.H``).
    B : operator, shape (n, n), optional
        Acts from the right as ``Y B^T``. ``None`` means zero.
    C : None, array (m, n) or LowRankMatrix, optional
        Constant source. A ``LowRankMatrix`` source keeps every product factored.
    """

    def __init__(self, A: Any, B: Any = None, C: Any = None) -> None:
        if A is None:
            raise TypeError("A must be an operator of shape (m, m), got None")
        self.A = A
        self.B = B
        self.C = C
        self._projected = ProjectedOperators()
        self.m = square_operator_size("A", A)
        self.n = square_operator_size("B", B) if B is not None else None
        self.A_H = bk.adjoint_operator(A)
        if B is not None:
            self.B_T = bk.transpose_operator(B)
            # conj(B) = (B^T)^H
            self.B_conj = bk.adjoint_operator(self.B_T)
        if C is not None:
            if isinstance(C, LowRankMatrix):
                cm, cn = C.shape
            elif bk.is_array(C) and C.ndim == 2:
                cm, cn = C.shape
            else:
                raise TypeError(
                    f"C must be None, a 2-D array or a LowRankMatrix, got {type(C).__name__}"
                )
            if cm != self.m or (self.n is not None and cn != self.n):
                raise ValueError(
                    f"C has shape {(cm, cn)}, expected ({self.m}, {self.n or 'n'}) to match A and B"
                )
            self.n = cn if self.n is None else self.n

    def _check(self, Y: LowRankMatrix) -> None:
        m, n = Y.shape
        if m != self.m or (self.n is not None and n != self.n):
            raise ValueError(
                f"Y has shape {(m, n)}, but the SylvesterODE acts on ({self.m}, {self.n or 'n'})"
            )

    def check_state(self, Y: LowRankMatrix, t: float) -> None:
        """The sizes of ``A``, ``B``, ``C`` match ``Y``, and they come from ``Y``'s library."""
        self._check(Y)
        if self._on_chunks(Y.U) is not None:  # SciPy sparse operators, applied chunk by chunk
            return
        check_same_library("A", self.A, Y.S)
        if self.B is not None:
            check_same_library("B", self.B, Y.S)
        if self.C is not None:
            check_same_library("C", self.C.S if isinstance(self.C, LowRankMatrix) else self.C, Y.S)

    def _on_chunks(self, *xs: Any) -> Any:
        """The products on row-chunked Dask factors when one of ``xs`` is a Dask array.

        See :mod:`lowrank_integrators.dask_operators`; ``None`` for every other library.
        """
        if not any(type(x).__module__.startswith("dask.") for x in xs):
            return None
        if "_dask" not in self.__dict__:
            from ._dask_sylvester import DaskSylvester

            self._dask = DaskSylvester(self)
        return self._dask

    def step_scope(self) -> contextlib.AbstractContextManager[None]:
        """Within one step, ``W^H A W`` and ``W^H B^T W`` are formed once per basis.

        The substep fields and products of one step share them (by the identity of the
        basis, held by weak references); nothing is kept once the step ends.
        """
        return self._projected.scope()

    def _projected_a(self, W: Any) -> Any:
        """``W^H A W`` (kept for the step)."""
        return self._projected.get(W, self.A, "A")

    def _projected_bt(self, W: Any) -> Any:
        """``W^H B^T W`` (kept for the step)."""
        return self._projected.get(W, self.B_T, "B^T")

    def _c_right(self, V: Any) -> Any:
        return self.C.matmul(V) if isinstance(self.C, LowRankMatrix) else self.C @ V

    def _c_project(self, U: Any, V: Any) -> Any:
        """``U^H C V``; a low-rank ``C`` stays factored (only small products)."""
        if isinstance(self.C, LowRankMatrix):
            Uc, Sc, Vc = self.C
            return bk.tall_inner(U, Uc) @ Sc @ bk.tall_inner(Vc, V)
        return bk.tall_inner(U, self.C @ V)

    def _c_left(self, U: Any) -> Any:
        if isinstance(self.C, LowRankMatrix):
            return self.C.rmatmul_adjoint(U)
        return bk.adjoint(self.C) @ U

    # Each product allocates one tall array, its result; the other terms are added into it
    # block by block (see the substep fields below for why).
    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        self._check(Y)
        if (chunked := self._on_chunks(Y.U, V)) is not None:
            return chunked.apply_right(t, Y, V)
        Uy, Sy, Vy = Y
        # the sandwich's transient tall product is released before the result is allocated
        Bv = None
        if self.B is not None:
            Bv = Sy @ (self._projected_bt(V) if Vy is V else bk.sandwich(Vy, self.B_T, V))
        out = bk.apply_to_product(self.A, Uy, Sy @ bk.tall_inner(Vy, V))
        if Bv is not None:
            bk.add_product(out, Uy, Bv)
        if self.C is not None:
            self._source(right=V)(out)
        return out

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        self._check(Y)
        if (chunked := self._on_chunks(Y.U, U)) is not None:
            return chunked.apply_left(t, Y, U)
        Uy, Sy, Vy = Y
        Sh = bk.adjoint(Sy)
        # the sandwich's transient tall product is released before the result is allocated
        Au = Sh @ (bk.adjoint(self._projected_a(U)) if Uy is U else bk.sandwich(Uy, self.A_H, U))
        if self.B is not None:
            out = bk.apply_to_product(self.B_conj, Vy, Sh @ bk.tall_inner(Uy, U))
            bk.add_product(out, Vy, Au)
        else:
            out = Vy @ Au
        if self.C is not None:
            self._source(left=U)(out)
        return out

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        self._check(Y)
        if (chunked := self._on_chunks(Y.U, U)) is not None:
            return chunked.project(t, Y, U, V)
        Uy, Sy, Vy = Y
        Au = self._projected_a(U) if U is Uy else bk.sandwich(U, self.A, Uy)
        out = Au @ (Sy @ bk.tall_inner(Vy, V))
        if self.B is not None:
            Bv = self._projected_bt(V) if V is Vy else bk.sandwich(Vy, self.B_T, V)
            out = out + bk.tall_inner(U, Uy) @ Sy @ Bv
        if self.C is not None:
            out = out + self._c_project(U, V)
        return out

    # With orthonormal substep bases every field is a small Sylvester equation whose r x r
    # coefficients are formed once per substep instead of once per stage. Each stage
    # allocates exactly one tall array (the operator product) and adds the thin products into
    # it block by block: at n ~ 1e6 a second tall temporary per stage would set the memory
    # of the whole step.
    def k_field(self, V: Any) -> Callable[[float, Any], Any]:
        if (chunked := self._on_chunks(V)) is not None:
            return chunked.k_field(V)
        Bv = self._projected_bt(V) if self.B is not None else None
        stage = self._fused_stage(self.A, Bv, right=V)
        if stage is not None:
            return _CompiledField(stage)
        add_source = self._source(right=V)
        # Arrays and sparse matrices return a fresh product, which the sums below may update
        # in place; a general operator (an identity LinearOperator returns K itself) may not.
        fresh = _returns_fresh(self.A)

        def field(t: float, K: Any) -> Any:
            out = self.A @ K
            if not fresh:
                out = bk.copy(out)
            if Bv is not None:
                bk.add_product(out, K, Bv)
            if add_source is not None:
                add_source(out)
            return out

        field.affine = True  # type: ignore[attr-defined]
        return field

    def l_field(self, U: Any) -> Callable[[float, Any], Any]:
        if (chunked := self._on_chunks(U)) is not None:
            return chunked.l_field(U)
        AhU = bk.adjoint(self._projected_a(U))
        stage = self._fused_stage(self.B_conj, AhU, left=U) if self.B is not None else None
        if stage is not None:
            return _CompiledField(stage)
        add_source = self._source(left=U)
        fresh = self.B is not None and _returns_fresh(self.B)

        def field(t: float, L: Any) -> Any:
            if self.B is None:
                out = L @ AhU
            else:
                out = self.B_conj @ L
                if not fresh:
                    out = bk.copy(out)
                bk.add_product(out, L, AhU)
            if add_source is not None:
                add_source(out)
            return out

        field.affine = True  # type: ignore[attr-defined]
        return field

    def _fused_stage(self, op: Any, M: Any, right: Any = None, left: Any = None) -> Any:
        """A one-pass stage ``X -> op X + X M + source`` for CSR operators, else ``None``.

        Used when ``op`` is a SciPy CSR matrix, the factors are NumPy arrays and the source is
        absent or of low rank (see :mod:`lowrank_integrators._fused`).
        """
        basis = right if right is not None else left
        if self.C is not None and not isinstance(self.C, LowRankMatrix):
            return None
        if not _fused.supports(op, basis):
            return None
        U = coef = None
        if self.C is not None:
            Uc, Sc, Vc = self.C
            if right is not None:
                U, coef = Uc, Sc @ bk.tall_inner(Vc, right)
            else:
                U, coef = Vc, bk.adjoint(Sc) @ bk.tall_inner(Uc, left)
        return _fused.CSRStage(op, M, U, coef)

    def _source(self, right: Any = None, left: Any = None) -> Callable[[Any], Any] | None:
        """A function adding ``C V`` (or ``C^H U``) of a substep into a stage in place.

        A low-rank source keeps only its small coefficient block and multiplies its tall
        factor block by block at each stage: no tall array held through the whole substep.
        """
        if self.C is None:
            return None
        if isinstance(self.C, LowRankMatrix):
            Uc, Sc, Vc = self.C
            if right is not None:
                coef = Sc @ bk.tall_inner(Vc, right)
                return lambda out: bk.add_product(out, Uc, coef)
            coef = bk.adjoint(Sc) @ bk.tall_inner(Uc, left)
            return lambda out: bk.add_product(out, Vc, coef)
        product = self._c_right(right) if right is not None else self._c_left(left)
        return lambda out: bk.add_scaled(out, 1.0, product)

    def s_field(self, U: Any, V: Any) -> Callable[[float, Any], Any]:
        if (chunked := self._on_chunks(U)) is not None:
            return chunked.s_field(U, V)
        Au = self._projected_a(U)
        Bv = self._projected_bt(V) if self.B is not None else None
        Cuv = self._c_project(U, V) if self.C is not None else None
        return sylvester_core_field(Au, Bv, Cuv)

    def evaluate_dense(self, t: float, Y: LowRankMatrix) -> Any:
        self._check(Y)
        Yd = Y.to_dense()
        out = self.A @ Yd
        if self.B is not None:
            out = out + bk.adjoint(self.B_conj @ bk.adjoint(Yd))
        if self.C is not None:
            out = out + (self.C.to_dense() if isinstance(self.C, LowRankMatrix) else self.C)
        return out

    def __repr__(self) -> str:
        has_b, has_c = self.B is not None, self.C is not None
        return f"SylvesterODE(m={self.m}, n={self.n}, B={has_b}, C={has_c})"


class DataODE(MatrixODE):
    r"""Explicit time-dependent data: ``F(t, Y) = A'(t)`` for a given ``A(t)``.

    The substeps are solved exactly through increments ``Delta A = A(t1) - A(t0)``; no
    derivative is needed. Projector splitting and BUG reproduce ``A(t_n)`` to round-off
    when ``A(t)`` has rank r and ``Y0 = A(t0)`` (Lubich-Oseledets 2014, arXiv:1301.1058;
    Ceruti-Lubich 2022, arXiv:2010.02022).

    Parameters
    ----------
    A : callable
        ``A(t)`` returning a dense array or a :class:`LowRankMatrix` (kept factored).
    derivative : callable, optional
        ``A'(t)`` (dense or ``LowRankMatrix``). Only needed for ``apply_*`` at a single time
        (diagnostics); the integrators use increments.
    """

    has_increments = True

    def __init__(self, A: Callable[[float], Any], derivative: Callable[[float], Any] | None = None):
        if not callable(A):
            raise TypeError(f"A must be callable t -> matrix, got {type(A).__name__}")
        if derivative is not None and not callable(derivative):
            raise TypeError(f"derivative must be callable, got {type(derivative).__name__}")
        self.A = A
        self.derivative = derivative
        self._cache: OrderedDict[float, Any] = OrderedDict()
        # One lock for the cache: problems are shared by threads (training workers, user code).
        self._lock = threading.Lock()
        self._shape: tuple[int, int] | None = None

    def data(self, t: float) -> Any:
        """``A(t)``, memoised for the few most recent times (one step asks for each twice).

        Safe to call from several threads at once. Raises ``ValueError`` when ``A(t)`` is not
        a 2-D array or a ``LowRankMatrix``, or when its shape differs from that of the first
        ``A(t)``.
        """
        key = float(t)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = self.A(t)  # outside the lock: A may be slow, and two threads may race here
        if not isinstance(value, LowRankMatrix) and not (bk.is_array(value) and value.ndim == 2):
            raise ValueError(
                f"A(t) must return a 2-D array or a LowRankMatrix, got {type(value).__name__} "
                f"at t = {t!r}"
            )
        shape = tuple(int(d) for d in value.shape)
        with self._lock:
            if self._shape is None:
                self._shape = shape  # type: ignore[assignment]
            elif shape != self._shape:
                raise ValueError(
                    f"A(t) returned shape {shape} at t = {t!r}, but {self._shape} before"
                )
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return value

    def check_state(self, Y: LowRankMatrix, t: float) -> None:
        """``A(t)`` has the shape of ``Y``, its library, and a dtype that casts into ``Y``'s."""
        value = self.data(t)
        if tuple(int(d) for d in value.shape) != Y.shape:
            raise ValueError(
                f"A(t) has shape {tuple(value.shape)} at t = {t!r}, but Y0 has shape {Y.shape}"
            )
        arr = value.S if isinstance(value, LowRankMatrix) else value
        check_same_library("A(t)", arr, Y.S)
        check_product("A(t)", arr, tuple(arr.shape), Y.dtype)

    @staticmethod
    def _right(X: Any, V: Any) -> Any:
        return X.matmul(V) if isinstance(X, LowRankMatrix) else X @ V

    @staticmethod
    def _left(X: Any, U: Any) -> Any:
        return X.rmatmul_adjoint(U) if isinstance(X, LowRankMatrix) else bk.adjoint(X) @ U

    def _derivative(self, t: float) -> Any:
        if self.derivative is None:
            raise NotImplementedError(
                "DataODE was built without derivative=, so F(t, Y) = A'(t) is only available "
                "through increments; pass derivative=callable to evaluate it at one time"
            )
        return self.derivative(t)

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        return self._right(self._derivative(t), V)

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        return self._left(self._derivative(t), U)

    def increment_right(self, t0: float, t1: float, V: Any) -> Any:
        return self._right(self.data(t1), V) - self._right(self.data(t0), V)

    def increment_left(self, t0: float, t1: float, U: Any) -> Any:
        return self._left(self.data(t1), U) - self._left(self.data(t0), U)

    def increment_project(self, t0: float, t1: float, U: Any, V: Any) -> Any:
        return bk.adjoint(U) @ self.increment_right(t0, t1, V)

    def __repr__(self) -> str:
        return f"DataODE({getattr(self.A, '__name__', self.A)!r})"


class _CompiledField:
    """A substep field ``(t, X) -> stage(X)`` evaluated by a compiled one-pass stage.

    Besides the field's value it offers :meth:`fold`, which a problem driver uses to answer a
    stage request carrying Runge-Kutta register updates
    (:class:`~lowrank_integrators.protocol.StageUpdate`) in the same pass.
    """

    __slots__ = ("stage",)

    #: ``X -> A X + X M + U coef`` is affine and the same at every time (see
    #: :class:`~lowrank_integrators.protocol.Affine`).
    affine = True

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def __call__(self, t: float, X: Any) -> Any:
        return self.stage(X)

    def fold(self, t: float, X: Any, update: Any) -> Any:
        """The stage at ``X`` with ``update`` folded in, or ``None`` where it cannot be."""
        return self.stage.fold(X, update)


def _returns_fresh(op: Any) -> bool:
    """Whether ``op @ X`` is a new array for an array ``X`` (arrays and scipy.sparse)."""
    return bk.is_array(op) or _is_sparse(op)


def _is_sparse(op: Any) -> bool:
    module = type(op).__module__
    return module.startswith(("scipy.sparse._", "cupyx.scipy.sparse")) and hasattr(op, "nnz")


def square_operator_size(name: str, op: Any) -> int:
    """Side length of a square operator, or a TypeError/ValueError naming the argument."""
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            f"{name} must be a 2-D operator with a .shape (array, sparse matrix or "
            f"LinearOperator), got {type(op).__name__}"
        )
    if shape[0] != shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(shape)}")
    if not hasattr(op, "__matmul__"):
        raise TypeError(f"{name} must support the @ operator")
    return int(shape[0])
