"""The low-rank state ``Y = U S V^H``."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _backend as bk
from ._checks import check_factor_dtype

__all__ = ["LowRankMatrix", "check_orthonormal", "orthonormality_tolerance"]


def orthonormality_tolerance(xp: Any, dtype: Any, k: int) -> float:
    """Tolerance on ``||X^H X - I||_max`` for ``k`` columns in ``dtype``.

    Scaled by the machine epsilon of the dtype: roughly ``sqrt(eps)``, with a floor that
    leaves room for factors that went through a few products in single precision.
    """
    eps = float(xp.finfo(bk.real_dtype(xp, dtype)).eps)
    return max(100.0 * k * eps, 4.0 * eps**0.5)


class LowRankMatrix:
    r"""A matrix in factored form ``Y = U S V^H``.

    Parameters
    ----------
    U : array, shape (m, r)
        Left factor with orthonormal columns.
    S : array, shape (r, r)
        Core; in general not diagonal (it is diagonal right after an SVD truncation).
    V : array, shape (n, r)
        Right factor with orthonormal columns. ``V`` itself is stored, not ``V^H``.
    check : bool, default True
        Validate shapes, dtypes, finiteness and orthonormality of ``U`` and ``V`` (the
        tolerance scales with the dtype's machine epsilon). Integrators pass ``False`` for
        the intermediate products ``K V^H`` and ``U L^H`` of their substeps, whose outer
        factors are not orthonormal.

    Notes
    -----
    A ``LowRankMatrix`` unpacks like ``(U, S, V)``. It never densifies implicitly: use
    :meth:`to_dense`.

    ``U`` and ``V`` may be row-chunked ``dask.array`` s (tall factors beyond one machine's
    memory) with a NumPy core ``S``: the small ``r x r`` work and every rank decision then
    happen on the host, and the integrators return Dask factors in the row chunks of the
    input. A Dask core is computed to the host when the factors are checked; columns split
    into several chunks are gathered into one.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_integrators as lri
    >>> A = np.outer(np.arange(1.0, 5.0), np.ones(3))
    >>> Y = lri.LowRankMatrix.from_dense(A, rank=1)
    >>> Y.shape, Y.rank
    ((4, 3), 1)
    >>> bool(np.allclose(Y.to_dense(), A))
    True
    """

    __slots__ = ("S", "U", "V")

    def __init__(self, U: Any, S: Any, V: Any, *, check: bool = True) -> None:
        if check:
            if bk.is_lazy(U) or bk.is_lazy(V) or bk.is_lazy(S):
                from ._dask import checked_factors

                U, S, V = checked_factors(U, S, V)
            else:
                _validate_factors(U, S, V)
        self.U = U
        self.S = S
        self.V = V

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls, A: Any, rank: int | None = None, *, tol: float | None = None
    ) -> LowRankMatrix:
        """Truncated SVD of a dense matrix.

        Parameters
        ----------
        A : array, shape (m, n)
        rank : int, optional
            Keep this many singular values.
        tol : float, optional
            Keep the smallest number of singular values whose discarded Frobenius tail is
            ``<= tol``. Exactly one of ``rank`` and ``tol`` must be given.
        """
        if not bk.is_array(A) or getattr(A, "ndim", None) != 2:
            raise TypeError(f"A must be a 2-D array, got {type(A).__name__}")
        if (rank is None) == (tol is None):
            raise ValueError("give exactly one of rank= and tol=")
        m, n = A.shape
        xp = bk.namespace(A)
        check_factor_dtype("A", A)
        if not bk.all_finite(A):
            raise ValueError("A contains non-finite entries")
        P, sigma, Qh = bk.svd(A)
        if rank is not None:
            _check_rank(rank, m, n)
            r = int(rank)
        else:
            from .truncation import Tolerance

            r = Tolerance(float(tol)).select_rank(bk.to_host(sigma), h=1.0)
        U = P[:, :r]
        V = bk.adjoint(Qh[:r, :])
        S = xp.astype(_diag(xp, sigma[:r]), A.dtype)
        return cls(U, S, V, check=False)

    # --- properties --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``."""
        return (int(self.U.shape[0]), int(self.V.shape[0]))

    @property
    def rank(self) -> int:
        """The number of columns ``r`` of ``U`` (the representation rank)."""
        return int(self.S.shape[0])

    @property
    def dtype(self) -> Any:
        """The dtype of the factors."""
        return self.S.dtype

    def __iter__(self) -> Iterator[Any]:
        return iter((self.U, self.S, self.V))

    def __repr__(self) -> str:
        m, n = self.shape
        return f"LowRankMatrix(shape=({m}, {n}), rank={self.rank}, dtype={self.dtype})"

    # --- arithmetic that stays factored ---------------------------------------------------
    def to_dense(self) -> Any:
        """Form ``U S V^H`` explicitly (``m x n`` memory)."""
        return (self.U @ self.S) @ bk.adjoint(self.V)

    def matmul(self, X: Any) -> Any:
        """``Y @ X`` for a tall-skinny ``X`` of shape (n, k), without forming ``Y``."""
        return self.U @ (self.S @ (bk.adjoint(self.V) @ X))

    def rmatmul_adjoint(self, X: Any) -> Any:
        """``Y^H @ X`` for ``X`` of shape (m, k), without forming ``Y``."""
        return self.V @ (bk.adjoint(self.S) @ (bk.adjoint(self.U) @ X))

    def norm(self) -> float:
        """Frobenius norm; equals ``||S||_F`` when ``U`` and ``V`` are orthonormal."""
        S = bk.core_array(self.S)
        xp = bk.namespace(S)
        return float(xp.linalg.matrix_norm(S))

    def singular_values(self) -> Any:
        """Singular values of ``Y`` (those of ``S``; ``U``, ``V`` orthonormal), on the host."""
        S = bk.core_array(self.S)
        xp = bk.namespace(S)
        return bk.to_host(xp.linalg.svdvals(S))


def _diag(xp: Any, v: Any) -> Any:
    # The array API has no diag constructor; scale the identity's columns instead.
    return xp.eye(int(v.shape[0]), dtype=v.dtype, device=bk.device(v)) * v[None, :]


def _check_rank(rank: Any, m: int, n: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if rank < 1 or rank > min(m, n):
        raise ValueError(f"rank must satisfy 1 <= rank <= min(m, n) = {min(m, n)}, got {rank}")


def _validate_factors(U: Any, S: Any, V: Any, *, contents: bool = True) -> None:
    """Shapes, library and dtypes of ``(U, S, V)``; with ``contents`` also finiteness and
    orthonormality (which read every entry)."""
    for name, X in (("U", U), ("S", S), ("V", V)):
        if not bk.is_array(X):
            raise TypeError(f"{name} must be an array, got {type(X).__name__}")
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(X.shape)}")
    try:
        bk.namespace(U, S, V)
    except TypeError as exc:
        raise TypeError(f"U, S and V must come from one array library: {exc}") from None
    m, r = U.shape
    n, rv = V.shape
    if r != rv or tuple(S.shape) != (r, r):
        raise ValueError(
            f"shape mismatch: U is {tuple(U.shape)}, S is {tuple(S.shape)}, V is "
            f"{tuple(V.shape)}; expected U (m, r), S (r, r), V (n, r)"
        )
    if r < 1:
        raise ValueError("the rank r (columns of U and V) must be at least 1")
    if r > min(m, n):
        raise ValueError(f"rank r = {r} exceeds min(m, n) = {min(m, n)}")
    for name, X in (("U", U), ("S", S), ("V", V)):
        check_factor_dtype(name, X)
    if not (U.dtype == S.dtype == V.dtype):
        raise TypeError(f"U, S and V must share one dtype, got {U.dtype}, {S.dtype}, {V.dtype}")
    if not contents:
        return
    for name, X in (("U", U), ("S", S), ("V", V)):
        if not bk.all_finite(X):
            raise ValueError(f"{name} contains non-finite entries")
    check_orthonormal("U", U)
    check_orthonormal("V", V)


def check_orthonormal(name: str, X: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``X`` has orthonormal columns (to a
    tolerance scaled by the machine epsilon of its dtype)."""
    xp = bk.namespace(X)
    k = int(X.shape[1])
    defect = float(xp.max(xp.abs(bk.adjoint(X) @ X - bk.eye_like(X, k))))
    _check_defect(name, defect, xp, X.dtype, k)


def check_gram(name: str, gram: Any, dtype: Any) -> None:
    """As :func:`check_orthonormal`, given the Gram matrix ``X^H X`` (a NumPy array) of ``X``."""
    k = int(gram.shape[0])
    defect = float(np.max(np.abs(gram - np.eye(k)))) if k else 0.0
    _check_defect(name, defect, bk.namespace(gram), dtype, k)


def _check_defect(name: str, defect: float, xp: Any, dtype: Any, k: int) -> None:
    tol = orthonormality_tolerance(xp, dtype, k)
    if defect > tol:
        raise ValueError(
            f"{name} must have orthonormal columns: max|X^H X - I| = {defect:.2e} exceeds "
            f"the tolerance {tol:.1e} for {dtype}"
        )
