r"""Tucker tensors ``Y = C x_1 U_1 x_2 U_2 ... x_d U_d`` and the multilinear algebra they need.

Conventions (used by every tensor module of the package)
---------------------------------------------------------
* **Mode product.** ``(X x_i A)`` contracts the second axis of the matrix ``A`` (m x n_i) with
  axis ``i`` of ``X``; the result has size ``m`` along axis ``i``. It is computed with
  ``tensordot`` followed by ``permute_dims`` (array API standard).
* **Matricization (NumPy C-order).** ``Mat_i(X)`` moves axis ``i`` to the front and reshapes
  to ``n_i x prod_{j != i} n_j``, keeping the other axes in increasing order. ``Ten_i`` is its
  inverse for a given shape. With this convention

  ``Mat_i(C x_1 U_1 ... x_d U_d) = U_i Mat_i(C) (U_1 (x) .. U_{i-1} (x) U_{i+1} .. (x) U_d)^T``

  with the Kronecker factors in **increasing** order. (Kolda-Bader's Fortran-order unfolding
  reverses that order.)
* **Mode-i matrix form.** The thin QR ``Mat_i(C)^H = Q_i S_i^H`` gives ``Mat_i(C) = S_i Q_i^H``
  and, with ``V_i = (conj(U_1) (x) ... (x) conj(U_d))_{j != i} Q_i`` (orthonormal columns when the
  ``U_j`` are orthonormal),

  ``Mat_i(Y) = U_i S_i V_i^H``.

  The ``conj`` comes from the plain transpose in the unfolding formula; it is a no-op for real
  data. The integrators never form ``V_i``: a product ``Mat_i(Z) V_i`` equals
  ``Mat_i(Z x_{j != i} U_j^H) Q_i``, a product with mode products only.

References
----------
Lubich, C., Vandereycken, B., Walach, A. (2018). Time integration of rank-constrained Tucker
tensors. SIAM J. Numer. Anal. 56, 1273-1290 (the mode-i matrix form).
De Lathauwer, L., De Moor, B., Vandewalle, J. (2000). A multilinear singular value
decomposition. SIAM J. Matrix Anal. Appl. 21, 1253-1278 (HOSVD).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _backend as bk
from ._checks import check_factor_dtype
from .factors import LowRankMatrix, check_orthonormal
from .truncation import Tolerance

__all__ = [
    "TuckerTensor",
    "fold",
    "mode_product",
    "multi_mode_product",
    "unfold",
]


# --- multilinear algebra ---------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _front_to(i: int, d: int) -> tuple[int, ...]:
    # The permutation that moves axis 0 of a d-way array to position i.
    return (*range(1, i + 1), 0, *range(i + 1, d))


@functools.lru_cache(maxsize=256)
def _to_front(i: int, d: int) -> tuple[int, ...]:
    # The permutation that moves axis i of a d-way array to the front (the others in order).
    return (i, *range(i), *range(i + 1, d))


def unfold(X: Any, mode: int) -> Any:
    """``Mat_mode(X)``: axis ``mode`` to the front, the rest in increasing order (C-order).

    Parameters
    ----------
    X : array, shape (n_1, ..., n_d)
    mode : int
        ``0 <= mode < d``.

    Returns
    -------
    array, shape (n_mode, prod_{j != mode} n_j)
    """
    if type(X) is np.ndarray:  # NumPy: no namespace lookup, cached permutations
        shape = X.shape
        d = len(shape)
        if type(mode) is not int or not 0 <= mode < d:
            _check_mode(mode, d)
        n = shape[mode]
        rest = X.size // n if n else math.prod(shape[:mode] + shape[mode + 1 :])
        if mode == 0:
            return X.reshape(n, rest)
        return X.transpose(_to_front(mode, d)).reshape(n, rest)
    xp = bk.namespace(X)
    d = X.ndim
    _check_mode(mode, d)
    perm = (mode, *(j for j in range(d) if j != mode))
    n = int(X.shape[mode])
    rest = math.prod(int(X.shape[j]) for j in range(d) if j != mode)
    return xp.reshape(xp.permute_dims(X, perm), (n, rest))


def fold(M: Any, mode: int, shape: Sequence[int]) -> Any:
    """``Ten_mode(M)``: the inverse of :func:`unfold` for a tensor of the given ``shape``.

    ``shape[mode]`` may differ from the shape of the original tensor: it is taken from
    ``M.shape[0]``.
    """
    d = len(shape)
    if type(M) is np.ndarray and type(mode) is int and 0 <= mode < d and M.ndim == 2:
        others = (*shape[:mode], *shape[mode + 1 :])
        if M.shape[1] == math.prod(others):  # NumPy: no namespace lookup, no conversions
            X = M.reshape((M.shape[0], *others))
            return X if mode == 0 else X.transpose(_front_to(mode, d))
    xp = None if type(M) is np.ndarray else bk.namespace(M)
    _check_mode(mode, d)
    others = tuple(int(shape[j]) for j in range(d) if j != mode)
    if M.ndim != 2 or int(M.shape[1]) != math.prod(others):
        raise ValueError(
            f"cannot fold an array of shape {tuple(M.shape)} along mode {mode} into shape "
            f"{tuple(shape)}: expected (n, {math.prod(others)})"
        )
    if xp is None:
        return M.reshape((int(M.shape[0]), *others)).transpose(_front_to(mode, d))
    X = xp.reshape(M, (int(M.shape[0]), *others))
    return xp.permute_dims(X, _front_to(mode, d))


def mode_product(X: Any, A: Any, mode: int) -> Any:
    """``X x_mode A``: contract the second axis of ``A`` (m x n_mode) with axis ``mode`` of X."""
    if type(X) is np.ndarray and type(A) is np.ndarray and X.dtype == A.dtype:
        shape = X.shape
        d = len(shape)
        if type(mode) is not int or not 0 <= mode < d:
            _check_mode(mode, d)
        n = shape[mode]
        if A.ndim != 2 or A.shape[1] != n:
            _mode_product_shape_error(X, A, mode)
        # One GEMM on the C-ordered layout, no transposed copies: the axes before ``mode``
        # are a batch (a stack of GEMMs for an inner mode), those after it the columns.
        before = shape[:mode]
        after = shape[mode + 1 :]
        out_shape = (*before, A.shape[0], *after)
        if not before:
            return np.matmul(A, X.reshape(n, math.prod(after))).reshape(out_shape)
        if not after:
            return np.matmul(X.reshape(math.prod(before), n), A.T).reshape(out_shape)
        stacked = X.reshape(math.prod(before), n, math.prod(after))
        return np.matmul(A, stacked).reshape(out_shape)
    xp = bk.namespace(X, A)
    d = X.ndim
    _check_mode(mode, d)
    if A.ndim != 2 or int(A.shape[1]) != int(X.shape[mode]):
        _mode_product_shape_error(X, A, mode)
    out = xp.tensordot(A, X, axes=((1,), (mode,)))
    return xp.permute_dims(out, _front_to(mode, d))


def _mode_product_shape_error(X: Any, A: Any, mode: int) -> None:
    raise ValueError(
        f"mode-{mode} product needs a matrix with {int(X.shape[mode])} columns, got shape "
        f"{tuple(A.shape)}"
    )


def multi_mode_product(X: Any, matrices: Sequence[Any | None]) -> Any:
    """``X x_1 A_1 ... x_d A_d``, skipping ``None`` entries.

    Modes whose matrix shrinks the tensor are contracted first, so that projections
    ``Z x_j W_j^H`` never build intermediates larger than their input.
    """
    if len(matrices) != X.ndim:
        raise ValueError(
            f"need {X.ndim} matrices (or None) for a {X.ndim}-way array, got {len(matrices)}"
        )
    modes = [i for i, A in enumerate(matrices) if A is not None]
    if len(modes) > 1:
        modes.sort(key=lambda i: int(matrices[i].shape[0]) / max(1, int(matrices[i].shape[1])))
    for i in modes:
        X = mode_product(X, matrices[i], i)
    return X


def matrix_adjoint(A: Any) -> Any:
    """``A^H`` of a matrix: a transposed view for a real NumPy matrix, else :func:`adjoint`."""
    if type(A) is np.ndarray and A.ndim == 2 and A.dtype.kind == "f":
        return A.T
    return bk.adjoint(A)


def conj(X: Any) -> Any:
    """Complex conjugate; the identity (no copy) for real arrays."""
    return bk.namespace(X).conj(X) if bk.is_complex(X) else X


def _check_mode(mode: Any, d: int) -> None:
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)):
        raise TypeError(f"mode must be an int, got {type(mode).__name__}")
    if not 0 <= mode < d:
        raise ValueError(f"mode must satisfy 0 <= mode < {d}, got {mode}")


# --- the container ---------------------------------------------------------------------------


class TuckerTensor:
    r"""A tensor in Tucker format ``Y = C x_1 U_1 x_2 ⋯ x_d U_d``.

    Parameters
    ----------
    core : array, shape (r_1, ..., r_d)
        The core tensor ``C`` (``d >= 2``).
    factors : sequence of d arrays, shapes (n_i, r_i)
        Factor matrices with orthonormal columns.
    check : bool, default True
        Validate order, shapes, dtypes, finiteness and orthonormality of the factors (the
        tolerance scales with the dtype's machine epsilon). Integrators pass ``False`` for
        intermediate states such as ``Ten_i(K_i V_i^H)`` whose mode-i factor is not
        orthonormal.

    Notes
    -----
    A ``TuckerTensor`` unpacks like ``(core, factors)``, with ``factors`` a tuple. It never
    densifies implicitly: use :meth:`to_dense`. The matricization convention is described
    in the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_integrators as lri
    >>> rng = np.random.default_rng(0)
    >>> X = np.einsum("i,j,k->ijk", *rng.standard_normal((3, 6)))
    >>> Y = lri.TuckerTensor.from_dense(X, ranks=1)
    >>> Y.shape, Y.ranks
    ((6, 6, 6), (1, 1, 1))
    >>> core, factors = Y
    >>> bool(np.allclose(Y.to_dense(), X))
    True
    """

    __slots__ = ("core", "factors")

    def __init__(self, core: Any, factors: Sequence[Any], *, check: bool = True) -> None:
        if not isinstance(factors, (list, tuple)):
            raise TypeError(
                f"factors must be a list or tuple of matrices, got {type(factors).__name__}"
            )
        factors = tuple(factors)
        if check:
            _validate(core, factors)
        self.core = core
        self.factors = factors

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        X: Any,
        ranks: int | Sequence[int] | None = None,
        *,
        tol: float | None = None,
    ) -> TuckerTensor:
        r"""Truncated higher-order SVD (HOSVD) of a dense tensor.

        ``U_i`` holds the leading left singular vectors of ``Mat_i(X)`` and
        ``C = X x_1 U_1^H ... x_d U_d^H``.

        Parameters
        ----------
        X : array, shape (n_1, ..., n_d), d >= 2
        ranks : int or sequence of d ints, optional
            Multilinear ranks (an int means the same rank in every mode).
        tol : float, optional
            Keep in each mode the fewest singular values whose discarded Frobenius tail is
            ``<= tol / sqrt(d)``; the HOSVD error is then at most ``tol``
            (``||X - Y||^2 <= sum_i tail_i^2``). Exactly one of ``ranks`` and ``tol``.
        """
        if not bk.is_array(X) or getattr(X, "ndim", 0) < 2:
            raise TypeError(f"X must be an array with at least 2 axes, got {type(X).__name__}")
        if (ranks is None) == (tol is None):
            raise ValueError("give exactly one of ranks= and tol=")
        bk.namespace(X)
        check_factor_dtype("X", X)
        if not bk.all_finite(X):
            raise ValueError("X contains non-finite entries")
        d = X.ndim
        shape = tuple(int(n) for n in X.shape)
        if ranks is not None:
            target = _normalise_ranks(ranks, shape)
        else:
            if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
                raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        factors = []
        for i in range(d):
            P, sigma, _ = bk.svd(unfold(X, i))
            if ranks is not None:
                r = target[i]
                if r > int(sigma.shape[0]):
                    raise ValueError(
                        f"rank {r} of mode {i} exceeds the rank bound {int(sigma.shape[0])} of "
                        f"the mode-{i} unfolding"
                    )
            else:
                r = Tolerance(float(tol) / math.sqrt(d)).select_rank(bk.to_host(sigma), h=1.0)
            factors.append(P[:, :r])
        core = multi_mode_product(X, [bk.adjoint(U) for U in factors])
        return cls(core, factors, check=False)

    # --- properties --------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """The order ``d``."""
        return int(self.core.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``."""
        return tuple(int(U.shape[0]) for U in self.factors)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Multilinear representation ranks ``(r_1, ..., r_d)`` (the core's shape)."""
        return tuple(int(r) for r in self.core.shape)

    @property
    def dtype(self) -> Any:
        """The dtype of the core."""
        return self.core.dtype

    def __iter__(self) -> Iterator[Any]:
        return iter((self.core, self.factors))

    def __repr__(self) -> str:
        return f"TuckerTensor(shape={self.shape}, ranks={self.ranks}, dtype={self.dtype})"

    # --- evaluation --------------------------------------------------------------------
    def to_dense(self) -> Any:
        """Form ``C x_1 U_1 ... x_d U_d`` explicitly (``prod n_i`` memory)."""
        return multi_mode_product(self.core, list(self.factors))

    def norm(self) -> float:
        """Frobenius norm; equals ``||C||_F`` when the factors are orthonormal."""
        xp = bk.namespace(self.core)
        return float(xp.linalg.vector_norm(self.core))

    def singular_values(self) -> tuple[np.ndarray, ...]:
        """Per mode, the singular values of ``Mat_i(C)`` on the host.

        With orthonormal factors these are the singular values of ``Mat_i(Y)``.
        """
        xp = bk.namespace(self.core)
        return tuple(bk.to_host(xp.linalg.svdvals(unfold(self.core, i))) for i in range(self.ndim))

    def matricize(self, mode: int) -> LowRankMatrix:
        r"""The mode-``mode`` matrix form ``Mat_i(Y) = U_i S_i V_i^H`` as a :class:`LowRankMatrix`.

        Forms ``V_i = (conj(U_j), j != i in increasing order, Kronecker) Q_i`` explicitly, of
        shape ``prod_{j != i} n_j x r_i``: for small tensors, tests and diagnostics. The
        integrators only use products with ``V_i`` through mode products.
        """
        _check_mode(mode, self.ndim)
        xp = bk.namespace(self.core)
        Q, R = bk.qr(bk.adjoint(unfold(self.core, mode)))
        S = bk.adjoint(R)
        # V_i[:, c] is vec(Ten(Q[:, c]) x_{j != i} conj(U_j)) in C-order: no kron needed.
        others = [j for j in range(self.ndim) if j != mode]
        k = int(Q.shape[1])
        G = xp.reshape(xp.matrix_transpose(Q), (k, *(self.ranks[j] for j in others)))
        mats = [None] + [conj(self.factors[j]) for j in others]
        G = multi_mode_product(G, mats)
        V = xp.matrix_transpose(xp.reshape(G, (k, -1)))
        return LowRankMatrix(self.factors[mode], S, V, check=False)


def _normalise_ranks(ranks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    d = len(shape)
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = (int(ranks),) * d
    if not isinstance(ranks, (list, tuple)) or len(ranks) != d:
        raise ValueError(f"ranks must be an int or a sequence of {d} ints, got {ranks!r}")
    out = []
    for i, (r, n) in enumerate(zip(ranks, shape, strict=True)):
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise TypeError(f"ranks[{i}] must be an int, got {type(r).__name__}")
        if not 1 <= r <= n:
            raise ValueError(f"ranks[{i}] must satisfy 1 <= r <= n_{i} = {n}, got {r}")
        out.append(int(r))
    return tuple(out)


def _validate(core: Any, factors: tuple[Any, ...]) -> None:
    if not bk.is_array(core):
        raise TypeError(f"core must be an array, got {type(core).__name__}")
    d = core.ndim
    if d < 2:
        raise ValueError(f"core must have at least 2 axes, got shape {tuple(core.shape)}")
    if len(factors) != d:
        raise ValueError(
            f"factors has {len(factors)} matrices but the core has order {d}: one factor per "
            "mode is needed"
        )
    for i, U in enumerate(factors):
        if not bk.is_array(U):
            raise TypeError(f"factors[{i}] must be an array, got {type(U).__name__}")
        if U.ndim != 2:
            raise ValueError(f"factors[{i}] must be 2-D, got shape {tuple(U.shape)}")
    try:
        bk.namespace(core, *factors)
    except TypeError as exc:
        raise TypeError(f"core and factors must come from one array library: {exc}") from None
    check_factor_dtype("core", core)
    for i, U in enumerate(factors):
        n, r = (int(s) for s in U.shape)
        if r != int(core.shape[i]):
            raise ValueError(
                f"factors[{i}] has {r} columns but the core has size {int(core.shape[i])} "
                f"along axis {i}"
            )
        if r < 1:
            raise ValueError(f"the rank of mode {i} must be at least 1")
        if r > n:
            raise ValueError(
                f"the rank r_{i} = {r} exceeds the dimension n_{i} = {n} (factors[{i}] has "
                f"shape {(n, r)}); a mode's rank can be at most its dimension"
            )
        if U.dtype != core.dtype:
            raise TypeError(
                f"factors[{i}] has dtype {U.dtype} but the core has {core.dtype}; use one dtype"
            )
    for name, X in (("core", core), *((f"factors[{i}]", U) for i, U in enumerate(factors))):
        if not bk.all_finite(X):
            raise ValueError(f"{name} contains non-finite entries")
    for i, U in enumerate(factors):
        check_orthonormal(f"factors[{i}]", U)
