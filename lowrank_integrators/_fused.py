r"""One-pass stage evaluations of Sylvester fields with CSR operators.

A K-stage of ``F = A Y + Y B^T + C`` (``C`` of low rank) evaluates

``out = A K + K Bv + Uc coef``

with ``Bv = V^H B^T V`` and ``coef = Sc Vc^H V`` fixed over the substep (the L-stage has the
same form). Written as three operations, ``out`` goes through memory three times. Here the
rows of ``out`` are processed block by block: the thin product ``K[b] Bv`` is written by BLAS
into a cache-sized block of ``out`` and the source ``Uc[b] coef`` into a small buffer, and the
source and the sparse rows of ``A`` are added to that block while it is still in cache, so
that ``out`` is written once.

The whole stage is one call compiled with numba (the optional extra ``fast``); the RK4
register updates that follow a stage (:func:`rk4_update`) and the projected operators
``W^H A V`` (:func:`sandwich`) are compiled the same way. A stage request that carries its RK4
register updates (:class:`~lowrank_integrators.protocol.StageUpdate`) is answered by
:meth:`CSRStage.fold` in one pass: each block of rows of the stage is computed into a
cache-sized buffer and added into the accumulator and the next stage at once, so the stage
itself is never written to memory, and the registers get the same entries as from the stage
followed by :func:`rk4_update`.

:func:`bias_relu` and :func:`relu_gradient` are the elementwise steps of a hidden layer of the
NumPy network (:class:`~lowrank_integrators.training.MLP`), each one compiled pass;
:func:`all_finite` tests arrays for finiteness in one compiled pass (the training client's
test of its new factors and parameters).

Without numba, :func:`supports` answers False and the fields use their NumPy path
(operator product, then the thin terms added block by block); both give the same result to
round-off. numba is imported only when a kernel is first asked for: by a field with a CSR
operator, by a hidden layer of the NumPy network, or by the training client's finiteness test.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import _backend as bk
from .protocol import Updated

__all__ = [
    "CSRStage",
    "all_finite",
    "apply_then",
    "beside",
    "bias_relu",
    "clear_spare",
    "numba_available",
    "offer_spare",
    "relu_gradient",
    "rk4_update",
    "sandwich",
    "start_asking",
    "supports",
    "take_back_spare",
    "take_spare",
    "was_asked",
]

#: Elements of a block of rows of a stage: small enough for the block of ``X M`` that BLAS
#: writes to stay in the L2 cache while the sparse rows and the source are added to it.
_BLOCK_ELEMENTS = 1 << 14
_NUMBA: bool | None = None
#: Set to False to use the NumPy path of the fields even where numba is installed.
use_numba = True


def numba_available() -> bool:
    """Whether numba can be imported (checked once)."""
    global _NUMBA
    if _NUMBA is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _NUMBA = False
        else:
            _NUMBA = True
    return _NUMBA


def supports(op: Any, like: Any) -> bool:
    """Whether stages with operator ``op`` on arrays like ``like`` can be fused here.

    ``op`` must be a SciPy CSR matrix or array and ``like`` a NumPy array whose dtype holds
    the products (a real operator with complex factors is fine), and numba must be importable
    (and :data:`use_numba` true).
    """
    if not (use_numba and numba_available()):
        return False
    if type(like) is not np.ndarray or like.ndim != 2:
        return False
    if not type(op).__module__.startswith("scipy.sparse._"):
        return False
    if getattr(op, "format", None) != "csr" or not hasattr(op, "indptr"):
        return False
    return np.can_cast(op.dtype, like.dtype, casting="safe")


class CSRStage:
    """``X -> A X + X M + U coef`` in one pass over ``X``'s rows (numba).

    Parameters
    ----------
    A : scipy.sparse CSR matrix, shape (n, n)
    M : array, shape (k, k), optional
        Right factor of the thin term ``X M`` (``None``: no such term).
    U : array, shape (n, q), optional
        Tall factor of the source ``U coef``.
    coef : array, shape (q, k), optional
        Small factor of the source.
    """

    def __init__(self, A: Any, M: Any = None, U: Any = None, coef: Any = None) -> None:
        self.A = A
        self.M = M
        self.U = U
        self.coef = coef
        self._cache: dict[Any, tuple[Any, Any, Any, Any]] = {}
        small = [a for a in (M, coef) if a is not None]
        #: The dtype of the operator and the small factors: a stage is computed in the
        #: result type of this and the stage's dtype.
        self._dtype = np.result_type(A.dtype, *small)
        self._compile(np.result_type(self._dtype, *([] if U is None else [U])))

    def _compile(self, dtype: Any) -> None:
        """Compile the kernels for ``dtype`` now (on empty arrays), not inside a stage."""
        empty, one = np.zeros((0, 1), dtype), np.zeros((1, 1), dtype)
        indptr, indices = np.zeros(1, self.A.indptr.dtype), np.zeros(0, self.A.indices.dtype)
        data = np.zeros(0, dtype)
        _kernels().stage(indptr, indices, data, empty, one, True, empty, one, empty, 1, one)
        zero = dtype.type(0)
        _kernels().folded_stage(
            indptr, indices, data, empty, one, True, empty, one, one, one, empty, empty,
            empty, empty, one, True, one, zero, zero, 0,
        )  # fmt: skip

    def __call__(self, X: Any) -> Any:
        """``A X + X M + U coef`` as a new C-ordered array."""
        X = np.ascontiguousarray(X)
        dtype = np.result_type(X.dtype, self._dtype)
        X = X.astype(dtype, copy=False)
        out = take_spare(X.shape, dtype)
        if out is None:
            out = np.empty(X.shape, dtype=dtype)
        data, M, U, coef = self._operands(dtype, X.shape)
        rows = max(1, _BLOCK_ELEMENTS // max(1, out.shape[1]))
        source = np.empty((min(rows, X.shape[0]), X.shape[1]), dtype)
        has_m = self.M is not None
        _kernels().stage(
            self.A.indptr, self.A.indices, data, X, M, has_m, U, coef, out, rows, source
        )
        return out

    def fold(self, X: Any, update: Any) -> Updated | None:
        """The stage at ``X`` with the register updates of ``update`` done in its pass.

        ``update`` is a :class:`~lowrank_integrators.protocol.StageUpdate`. Each block of
        rows of the stage is computed into a cache-sized buffer and folded into the
        accumulator and the next stage at once: the stage is never written as a tall array.
        The entries are those of :meth:`__call__` followed by the solver's updates (an update
        without an accumulator writes the next stage only). Returns
        ``None`` (the caller evaluates the stage and updates the registers itself) when the
        arrays are not C-ordered NumPy arrays of one dtype that holds the products, or when a
        register overlaps ``X``.
        """
        if type(X) is not np.ndarray or X.ndim != 2:
            return None
        (n, k), dtype = X.shape, X.dtype
        if not _c_array(X, dtype, n, k) or np.result_type(dtype, self._dtype) != dtype:
            return None
        acc, x0 = update.acc, update.x0
        keeps_sum = update.c is not None  # else only the next stage: x0 + a F
        if acc is not None and not (
            _c_array(acc, dtype, n, k) and acc.flags.writeable and _apart(acc, X)
        ):
            return None
        factored = type(x0) is not np.ndarray
        if factored:
            left, right = getattr(x0, "left", None), getattr(x0, "right", None)
            if not (
                _c_array(left, dtype, n)
                and type(right) is np.ndarray
                and right.dtype == dtype
                and right.shape == (left.shape[1], k)
            ):
                return None
            right = np.ascontiguousarray(right)  # S0^H of an L-step is a transposed view
            x0 = X[:0]
        elif not _c_array(x0, dtype, n, k):
            return None
        else:
            left, right = X[:0], X[:0, :0]
        shape = (n, k)
        if acc is None and keeps_sum:
            acc = _fresh(shape, dtype, X)
        nxt = None
        if update.a is not None:
            nxt = _fresh(shape, dtype, X, *(() if acc is None else (acc,)))
        data, M, U, coef = self._operands(dtype, shape)
        rows = max(1, _BLOCK_ELEMENTS // max(1, shape[1]))
        source = np.empty((min(rows, shape[0]), shape[1]), dtype)
        block = np.empty_like(source)
        start = np.empty_like(source) if factored else source[:0]
        c = dtype.type(0 if update.c is None else update.c)
        a = dtype.type(0 if update.a is None else update.a)
        if not keeps_sum:
            mode = 3
        else:
            mode = 0 if update.first else 1 if nxt is not None else 2
        _kernels().folded_stage(
            self.A.indptr, self.A.indices, data, X, M, self.M is not None, U, coef, source,
            block, X[:0] if acc is None else acc, X[:0] if nxt is None else nxt, x0, left,
            right, factored, start, c, a, mode,
        )  # fmt: skip
        return Updated(nxt, acc)

    def _operands(self, dtype: Any, shape: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
        """The operator's values and the factors in ``dtype``, row-major (converted once)."""
        key = (np.dtype(dtype), shape)
        cached = self._cache.get(key)
        if cached is None:
            n, k = shape
            data = self.A.data.astype(dtype, copy=False)
            if self.M is None:
                M = np.zeros((k, k), dtype)
            else:
                M = np.ascontiguousarray(self.M, dtype=dtype)
            if self.U is None:
                U, coef = np.zeros((n, 0), dtype), np.zeros((0, k), dtype)
            else:
                U = np.ascontiguousarray(self.U, dtype=dtype)
                coef = np.ascontiguousarray(self.coef, dtype=dtype)
            cached = self._cache[key] = (data, M, U, coef)
        return cached


def _c_array(x: Any, dtype: Any, rows: int, cols: int = -1) -> bool:
    """Whether ``x`` is a C-ordered NumPy array of ``dtype`` and shape ``(rows, cols)``
    (``cols`` -1: any)."""
    return (
        type(x) is np.ndarray
        and x.ndim == 2
        and x.dtype == dtype
        and x.flags.c_contiguous
        and x.shape[0] == rows
        and (cols < 0 or x.shape[1] == cols)
    )


def _apart(x: Any, *others: Any) -> bool:
    """Whether ``x`` overlaps none of ``others`` in memory."""
    return not any(np.may_share_memory(x, y) for y in others)


def _fresh(shape: tuple[int, ...], dtype: Any, *apart: Any) -> Any:
    """The spare array if it fits and overlaps none of ``apart``, else a new one."""
    out = take_spare(shape, dtype)
    if out is not None and not _apart(out, *apart):
        offer_spare(out)
        out = None
    return np.empty(shape, dtype=dtype) if out is None else out


def _kernels() -> Any:
    """The compiled kernels (:mod:`lowrank_integrators._fused_kernels`, which imports numba),
    loaded on first use."""
    global _KERNELS
    if _KERNELS is None:
        from . import _fused_kernels

        _KERNELS = _fused_kernels
    return _KERNELS


_KERNELS: Any = None


def rk4_update(
    acc: Any, stage: Any, k: Any, x0: Any, c: float, a: float, first: bool, rows: int
) -> bool:
    """The RK4 register updates in one pass, if numba is there (else False).

    ``acc = x0 + c k`` (``first``) or ``acc += c k``, and ``stage = x0 + a k``, entry by
    entry (``stage`` may be ``k``, and ``acc`` may be ``x0``: each entry is read before it is
    overwritten). ``x0`` is an array or a pair ``(left, right)`` of factors of the start value,
    whose product is formed by BLAS block by block of ``rows`` rows into a small buffer that
    is still in cache when the registers are updated. The entrywise operations are those of
    the NumPy path: with an array ``x0`` the results agree bit for bit.
    """
    if not (use_numba and numba_available()):
        return False
    dtype = k.dtype
    if isinstance(x0, tuple):  # the small factor may have any layout (S0^H for an L-step)
        x0 = (x0[0], np.ascontiguousarray(x0[1]))
    arrays = [acc, stage, k, *(x0 if isinstance(x0, tuple) else (x0,))]
    if dtype.kind not in "fc" or any(
        type(x) is not np.ndarray or x.dtype != dtype or not x.flags.c_contiguous for x in arrays
    ):
        return False
    c, a = dtype.type(c), dtype.type(a)
    if isinstance(x0, tuple):
        left, right = x0
        buf = np.empty((min(rows, k.shape[0]), k.shape[1]), dtype)
        _kernels().register_update(acc, stage, k, k[:0], left, right, True, c, a, first, buf)
    else:
        _kernels().register_update(acc, stage, k, x0, k[:0], k[:0, :0], False, c, a, first, k[:0])
    return True


def apply_then(A: Any, X: Any, W: Any) -> Any | None:
    """``(A X) W`` for a real CSR ``A``, real row-major ``X`` and a small ``W`` (numba), else
    None.

    The rows of ``A X`` are formed block by block into a small buffer (in cache) and
    multiplied by ``W`` at once into the result: one tall array is written, once, and the
    operator's rows are not sliced into new sparse matrices. Returns ``None`` (the caller
    takes its NumPy path) without numba, for complex or mixed dtypes, for an operator that is
    not CSR, or for arrays that are not C-ordered.
    """
    if not (use_numba and numba_available()):
        return None
    if not (type(X) is np.ndarray and type(W) is np.ndarray and X.ndim == W.ndim == 2):
        return None
    dtype = X.dtype
    if dtype.kind != "f" or W.dtype != dtype or getattr(A, "dtype", None) != dtype:
        return None
    if getattr(A, "format", None) != "csr" or not hasattr(A, "indptr"):
        return None
    if not X.flags.c_contiguous or A.shape[1] != X.shape[0] or X.shape[1] != W.shape[0]:
        return None
    k = max(1, int(X.shape[1]))
    rows = max(1, _SANDWICH_BLOCK_ELEMENTS // k, 2 * k)
    buf = np.empty((min(rows, int(A.shape[0])), X.shape[1]), dtype)
    out = np.empty((int(A.shape[0]), int(W.shape[1])), dtype)
    empty = np.zeros((int(X.shape[0]), 0), dtype), np.zeros((0, int(X.shape[1])), dtype)
    _kernels().apply_then(A.indptr, A.indices, A.data, X, np.ascontiguousarray(W), *empty, buf, out)
    return out


def sandwich(W: Any, A: Any, V: Any, transposed: bool = False) -> Any | None:
    """``W^H (A V)`` for a real CSR ``A`` and real row-major ``W``, ``V`` (numba), else None.

    ``transposed``: ``A`` is a CSC matrix and the product is taken with its transpose, whose
    CSR arrays are those of ``A`` (no transposed matrix is built).

    The rows of ``A V`` are formed block by block into a small buffer (a few kB, in cache)
    and multiplied into the ``k x k`` result by BLAS at once: no tall temporary, and the
    operator's rows are not sliced into new sparse matrices. Returns ``None`` (the caller
    takes its NumPy path) without numba, for complex or mixed dtypes, or for arrays that are
    not C-ordered.
    """
    if not (use_numba and numba_available()):
        return None
    if not (type(W) is np.ndarray and type(V) is np.ndarray and W.ndim == V.ndim == 2):
        return None
    dtype = V.dtype
    if dtype.kind != "f" or W.dtype != dtype or A.dtype != dtype:
        return None
    if not (W.flags.c_contiguous and V.flags.c_contiguous) or W.shape[0] != V.shape[0]:
        return None
    k = max(1, int(V.shape[1]))
    # at least 2k rows: for wide bases (k >= 128) the product of a block with W's rows is
    # otherwise too short for BLAS (measured 15 % slower at k = 128 with k/2 rows)
    rows = max(1, _SANDWICH_BLOCK_ELEMENTS // k, 2 * k)
    buf = np.empty((min(rows, V.shape[0]), V.shape[1]), dtype)
    out = np.zeros((W.shape[1], V.shape[1]), dtype)
    part = np.empty_like(out)
    if (A.format != "csc") if transposed else (A.format != "csr"):
        return None
    _kernels().sandwich_rows(A.indptr, A.indices, A.data, W, V, buf, part, out)
    return out


def beside(left: Any, d: Any, right: Any, out: Any = None) -> Any | None:
    """``[left * d, right]`` (``d`` scales the columns of ``left``), row by row (numba), else
    None.

    Each row of the result is written once, whole: filled as two column blocks (by NumPy), its
    cache lines are fetched and written twice, which took twice as long on tall arrays
    (2^20 x (16 + 16), one thread). The entries are the same. ``out``, when given, is the
    array written: C-ordered, of the result's shape and dtype, overlapping neither ``left``
    nor ``right``. Returns ``None`` (the caller fills the two blocks itself) without numba, or
    unless ``left``, ``right`` and ``d`` are C-ordered NumPy arrays of one floating dtype with
    ``left`` and ``right`` of equal rows.
    """
    if not (use_numba and numba_available()):
        return None
    arrays = (left, d, right)
    if any(type(a) is not np.ndarray or not a.flags.c_contiguous for a in arrays):
        return None
    dtype = left.dtype
    if dtype.kind not in "fc" or right.dtype != dtype or d.dtype != dtype:
        return None
    if left.ndim != 2 or right.ndim != 2 or d.shape != (left.shape[1],):
        return None
    if left.shape[0] != right.shape[0]:
        return None
    shape = (left.shape[0], left.shape[1] + right.shape[1])
    if out is None:
        out = np.empty(shape, dtype)
    elif not (
        type(out) is np.ndarray
        and out.shape == shape
        and out.dtype == dtype
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"out must be a writeable C-ordered array of shape {shape} and dtype {dtype}"
        )
    _kernels().beside_rows(left, d, right, out)
    return out


def beside_over(left: np.ndarray, d: np.ndarray, right: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``[left * d, right]`` written into ``out``, whose storage ends with ``left``'s.

    For a basis that grows in the storage of the basis it extends: ``left`` (``n x p``,
    C-ordered) holds the last ``n p`` entries of the C-ordered ``n x (p + q)`` array ``out``.
    Written in ascending rows, each row of ``out`` ends at or before the start of the next row
    of ``left`` (row ``i`` of ``out`` ends at entry ``(p + q)(i + 1)``, row ``i + 1`` of
    ``left`` starts at ``q n + p (i + 1)``), so each row of ``left`` is read before anything
    is written over it; ``left`` is garbage afterwards. ``right`` must not overlap ``out``.
    Compiled (numba) where it can be, else by blocks of rows, each block of ``left`` read
    into a small temporary first.

    Raises
    ------
    TypeError
        If an argument is not a NumPy array.
    ValueError
        If the arrays are not laid out so.
    """
    if any(type(a) is not np.ndarray for a in (left, d, right, out)):
        raise TypeError("beside_over takes NumPy arrays")
    if left.ndim != 2 or right.ndim != 2:
        raise ValueError("beside_over: left and right must be 2-D")
    n, p = (int(s) for s in left.shape)
    q = int(right.shape[1])
    if not (
        right.shape == (n, q)
        and out.shape == (n, p + q)
        and d.shape == (p,)
        and left.dtype == right.dtype == out.dtype
        and left.flags.c_contiguous
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(
            f"beside_over: expected C-ordered left (n, p), right (n, q) and out (n, p + q) "
            f"of one dtype, got {left.shape}, {right.shape}, {out.shape}"
        )
    start = out.__array_interface__["data"][0]
    if left.__array_interface__["data"][0] != start + q * n * out.itemsize:
        raise ValueError("beside_over: left must hold the last n p entries of out's storage")
    if np.may_share_memory(right, out):
        raise ValueError("beside_over: right must not overlap out")
    if n == 0:
        return out
    if use_numba and numba_available() and out.dtype.kind in "fc" and d.dtype == out.dtype:
        _kernels().beside_over_rows(left, d, right, out)
        return out
    rows = max(1, _OVER_BLOCK_ENTRIES // max(1, p + q))
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        block = left[lo:hi] * d  # read before the rows of out that cover it are written
        out[lo:hi, :p] = block
        out[lo:hi, p:] = right[lo:hi]
    return out


#: Entries of ``out`` that :func:`beside_over` writes per block of rows without numba.
_OVER_BLOCK_ENTRIES = 1 << 15


def _same_float_rows(x: Any, y: Any, vector: bool) -> bool:
    """Whether ``x`` is a C-ordered 2-D float32/float64 NumPy array and ``y`` a C-ordered one of
    its dtype: its row vector (``vector``) or an array of its shape."""
    if type(x) is not np.ndarray or type(y) is not np.ndarray or x.ndim != 2:
        return False
    if x.dtype.char not in "fd" or y.dtype != x.dtype:
        return False
    if not (x.flags.c_contiguous and y.flags.c_contiguous and x.flags.writeable):
        return False
    return y.shape == ((x.shape[1],) if vector else x.shape)


def all_finite(*arrays: Any) -> bool:
    """Whether every entry of every array is finite, tested by a compiled pass where it can be.

    The compiled test (numba) takes C-ordered float32 and float64 NumPy arrays in one pass
    without temporaries, where NumPy forms the boolean array of ``isfinite`` and reduces it
    (on the factors of a training step at width 16, 0.3-0.45 microseconds per array against
    1.3-1.8). Other arrays, and all arrays without numba, go to
    :func:`lowrank_integrators._backend.all_finite`. The answer is the same.
    """
    for a in arrays:
        if type(a) is np.ndarray and a.dtype.char in "fd" and a.flags.c_contiguous:
            if use_numba and numba_available():
                if not _kernels().all_finite(a):
                    return False
                continue
        if not bk.all_finite(a):
            return False
    return True


def bias_relu(z: Any, b: Any) -> bool:
    """``z = maximum(z + b, 0)`` in place in one pass (numba); ``False`` where not done.

    The forward step of a hidden layer of :class:`~lowrank_integrators.training.MLP`: NumPy
    takes two passes over ``z`` (the sum, then the maximum), about four times as long on a
    batch of 256 x 2048 (one thread). The entries are NumPy's (``NaN`` kept). Declines (the
    caller takes its NumPy path) without numba, or unless ``z`` is a writeable C-ordered 2-D
    float32 or float64 array and ``b`` a vector of its dtype with one entry per column.
    """
    if not (use_numba and numba_available()) or not _same_float_rows(z, b, vector=True):
        return False
    _kernels().bias_relu(z, b)
    return True


def relu_gradient(g: Any, a: Any) -> bool:
    """``g *= (a > 0)`` in place in one pass (numba); ``False`` where not done.

    The backward step through a ReLU whose output is ``a``: NumPy forms the mask as a
    temporary first (1.5 times as long on a batch of 256 x 2048, one thread). The entries are
    those of NumPy's product with the mask. Declines (the caller takes its NumPy path) without
    numba, or unless ``g`` is a writeable C-ordered 2-D float32 or float64 array and ``a`` one
    of its shape and dtype.
    """
    if not (use_numba and numba_available()) or not _same_float_rows(g, a, vector=False):
        return False
    _kernels().relu_gradient(g, a)
    return True


#: Elements of the block of ``A V`` in :func:`sandwich` (larger blocks measured slower).
_SANDWICH_BLOCK_ELEMENTS = 1 << 13

# --- one spare work array per thread ----------------------------------------------------------


class _Spare(threading.local):
    buffer: Any = None
    asked: bool = False


_SPARE = _Spare()


def offer_spare(buffer: Any) -> None:
    """Leave a dead work array (no other reference to it exists) for the next stage's result.

    One array per thread; it replaces the one left before. The caller drops its reference.
    """
    _SPARE.buffer = buffer


def take_spare(shape: tuple[int, ...], dtype: Any) -> Any:
    """The spare array if it has ``shape`` and ``dtype`` (it is then no longer spare), else None.

    Records that a spare was asked for (see :func:`was_asked`).
    """
    _SPARE.asked = True
    buffer = _SPARE.buffer
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
        return None
    if not buffer.flags.c_contiguous:  # pragma: no cover - only C-ordered arrays are offered
        return None
    _SPARE.buffer = None
    return buffer


def start_asking() -> None:
    """Forget whether a spare was asked for (before a field evaluation)."""
    _SPARE.asked = False


def was_asked() -> bool:
    """Whether :func:`take_spare` was called since :func:`start_asking`: a field that asks
    for a spare once asks at every evaluation, so only then is offering one worth it (an
    offered spare that no one takes is one more array alive)."""
    return _SPARE.asked


def take_back_spare() -> Any:
    """The spare array if no one took it (it is then no longer spare), else None."""
    buffer, _SPARE.buffer = _SPARE.buffer, None
    return buffer


def clear_spare() -> None:
    """Release the spare array, if any."""
    _SPARE.buffer = None
