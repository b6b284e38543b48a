r"""Sparse operators applied to row-chunked Dask arrays, chunk by chunk.

A tall factor ``X`` (``n x k``, ``k`` small) stored as a :mod:`dask.array` with row chunks
``X_0, X_1, ...`` is multiplied by a square sparse operator ``A`` (``n x n``) without
densifying ``A`` and without gathering ``X`` in one place: row block ``k`` of ``A X`` needs
only the rows of ``X`` that the nonzeros of ``A``'s row block ``k`` touch.

* **Banded** ``A`` (bandwidth ``w`` not larger than the smallest chunk): each chunk receives a
  halo of ``w`` rows from each neighbour (:func:`dask.array.overlap.overlap`, the machinery of
  ``map_overlap``) and one task per chunk multiplies the CSR row block of ``A``, restricted to
  the columns of the chunk and its halo.
* **General** CSR ``A``: for each row block, the rows of ``X`` its nonzeros need are gathered
  from the chunks that hold them (one small task per source chunk, run where that chunk
  lives), and one task per row block multiplies the row block of ``A`` with its columns
  renumbered to the gathered rows.

The row blocks of the operator are cut once per chunking of ``X`` and persisted on the
scheduler (on a ``dask.distributed`` cluster they are sent to the workers once), so that a
step's graph carries keys, not matrices. The result is lazy and has the row chunks of ``X``.

:class:`lowrank_integrators.SylvesterODE` uses these operators when the state's factors are
Dask arrays; user problems use :class:`ChunkedOperator` (or plain Dask operations) in their
own :class:`~lowrank_integrators.MatrixODE`.

Importing this module does not import Dask; its functions do.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

__all__ = ["ChunkedOperator", "is_dask_array"]


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a :class:`dask.array.Array` (without importing Dask)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


class ChunkedOperator:
    """A square sparse operator that multiplies row-chunked Dask arrays chunk by chunk.

    Parameters
    ----------
    op : scipy.sparse matrix or array, shape (n, n)
        Any SciPy sparse format; a CSR copy is kept (its row blocks are cut per chunking).
    strategy : {"auto", "banded", "gather"}, optional
        ``"banded"`` exchanges halos of the operator's bandwidth between neighbouring chunks;
        ``"gather"`` collects exactly the rows each row block needs. ``"auto"`` (default)
        takes ``"banded"`` when the bandwidth is at most the smallest row chunk and a tenth
        of the mean chunk, else ``"gather"``.

    Attributes
    ----------
    shape : tuple of int
        ``(n, n)``.
    dtype : numpy.dtype
        The operator's dtype.
    bandwidth : int
        ``max |i - j|`` over the nonzeros ``(i, j)`` (0 for a diagonal or empty operator).

    Notes
    -----
    ``op @ X`` for a Dask array ``X`` of shape ``(n, k)`` returns a lazy Dask array with the
    row chunks of ``X`` (one column chunk). Each task reads one chunk of ``X`` and its halo (or
    its gathered rows) and the operator's row block, nothing else.
    """

    def __init__(self, op: Any, strategy: str = "auto") -> None:
        import scipy.sparse as sp

        if not sp.issparse(op):
            raise TypeError(
                f"op must be a scipy.sparse matrix or array, got {type(op).__module__}."
                f"{type(op).__name__}"
            )
        if op.ndim != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"op must be square, got shape {tuple(op.shape)}")
        if strategy not in ("auto", "banded", "gather"):
            raise ValueError(f"strategy must be 'auto', 'banded' or 'gather', got {strategy!r}")
        csr = sp.csr_matrix(op)
        if not csr.has_canonical_format:  # sorted, no duplicates; never change the caller's
            csr = csr.copy()
            csr.sum_duplicates()
        self._csr = csr
        self.shape = (int(csr.shape[0]), int(csr.shape[1]))
        self.dtype = csr.dtype
        self.strategy = strategy
        self.bandwidth = _bandwidth(csr)
        # plans by row chunking: host row blocks and their persisted copies
        self._plans: dict[tuple[int, ...], _Plan] = {}
        # the key prefix of the persisted row blocks (the CSR copy above never changes)
        self._token = uuid.uuid4().hex

    @classmethod
    def of(cls, op: Any) -> ChunkedOperator:
        """``op`` itself when it is a :class:`ChunkedOperator`, else ``ChunkedOperator(op)``."""
        return op if isinstance(op, ChunkedOperator) else cls(op)

    def same_as(self, other: ChunkedOperator) -> bool:
        """Whether ``other`` holds the same matrix (shape, dtype and every nonzero)."""
        a, b = self._csr, other._csr
        return (
            a.shape == b.shape
            and a.dtype == b.dtype
            and a.nnz == b.nnz
            and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data, b.data)
        )

    def __matmul__(self, X: Any) -> Any:
        return self.matmul(X)

    def matmul(self, X: Any) -> Any:
        """``op @ X`` for a Dask array ``X`` of shape ``(n, k)`` (or ``(n,)``), lazily.

        Raises
        ------
        TypeError
            ``X`` is not a Dask array.
        ValueError
            ``X`` does not have ``n`` rows.
        """
        self._check_tall(X)
        if X.ndim == 1:
            return self.matmul(X[:, None])[:, 0]
        return self.stage(X)

    def stage(self, X: Any, M: Any = None, W: Any = None, C: Any = None) -> Any:
        """``op @ X + X @ M + W @ C`` in one task per row chunk, lazily.

        The right-hand side of a K- or L-substep of a Sylvester-type field: the operator
        product, the state times a small matrix and a low-rank source, formed chunk by chunk
        without tall temporaries between them.

        Parameters
        ----------
        X : dask.array.Array, shape (n, k)
            Row-chunked; the result has its row chunks.
        M : array, shape (k, k), optional
            A small NumPy or (single-chunk) Dask array.
        W, C : arrays, shapes (n, q) and (q, k), optional
            A tall Dask factor (rechunked to the rows of ``X`` if needed) and a small array;
            given together.
        """
        import dask.array as da
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph

        self._check_tall(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D for a stage, got shape {X.shape}")
        if (W is None) != (C is None):
            raise ValueError("W and C must be given together (the source W @ C)")
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
        chunks = tuple(int(c) for c in X.chunks[0])
        plan = self._plan(chunks)
        blocks = plan.blocks()
        dependencies, operands, layers = plan.operands(X)
        dtype = np.result_type(self.dtype, X.dtype, *(a.dtype for a in (M, W, C) if a is not None))
        M, m_deps = _small(M)
        C, c_deps = _small(C)
        if W is not None:
            if not is_dask_array(W):
                raise TypeError(f"W must be a dask.array.Array, got {type(W).__name__}")
            W = W.rechunk({0: chunks, 1: -1})
        name = "chunked-operator-stage-" + tokenize(
            X.name, [b.key for b in blocks], M, C, None if W is None else W.name
        )
        dsk: dict[Any, Any] = dict(layers)
        for k, operand in enumerate(operands):
            x = (X.name, k, 0) if M is not None else None
            w = (W.name, k, 0) if W is not None else None
            shape = (chunks[k], int(X.shape[1]))
            dsk[(name, k, 0)] = (_stage, blocks[k].key, operand, x, M, w, C, shape, dtype)
        deps = [X, *dependencies, *blocks, *m_deps, *c_deps, *([W] if W is not None else [])]
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
        return da.Array(graph, name, chunks=X.chunks, dtype=dtype)

    def _check_tall(self, X: Any) -> None:
        if not is_dask_array(X):
            raise TypeError(
                f"X must be a dask.array.Array, got {type(X).__module__}.{type(X).__name__}; "
                "apply the SciPy operator directly to host arrays"
            )
        if X.ndim not in (1, 2) or int(X.shape[0]) != self.shape[1]:
            raise ValueError(
                f"X must have shape ({self.shape[1]}, k) to match the operator, got {X.shape}"
            )

    def _plan(self, chunks: tuple[int, ...]) -> _Plan:
        plan = self._plans.get(chunks)
        if plan is None:
            banded = self.strategy == "banded" or (
                self.strategy == "auto"
                and self.bandwidth <= min(chunks)
                and 10 * self.bandwidth <= self.shape[0] / len(chunks)
            )
            if banded and self.bandwidth > min(chunks):
                raise ValueError(
                    f"strategy='banded' needs row chunks of at least the bandwidth "
                    f"{self.bandwidth} rows, got a chunk of {min(chunks)}"
                )
            name = f"chunked-operator-{self._token}-{len(self._plans)}"
            if banded:
                plan: _Plan = _BandedPlan(name, self._csr, chunks, self.bandwidth)
            else:
                plan = _GatherPlan(name, self._csr, chunks)
            self._plans[chunks] = plan
        return plan

    def __repr__(self) -> str:
        return (
            f"ChunkedOperator(shape={self.shape}, nnz={self._csr.nnz}, "
            f"bandwidth={self.bandwidth}, strategy={self.strategy!r})"
        )


def _bandwidth(csr: Any) -> int:
    if csr.nnz == 0:
        return 0
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return int(np.max(np.abs(csr.indices.astype(np.int64) - rows)))


def _offsets(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


class _Plan:
    """Row blocks of the operator for one row chunking, persisted on the current scheduler."""

    def __init__(self, name: str, blocks: list[Any]) -> None:
        self._name = name
        self._host = blocks
        self._persisted: list[Any] | None = None
        self._scheduler: Any = None

    def blocks(self) -> list[Any]:
        """The row blocks as Dask collections living on the current scheduler."""
        import dask
        from dask.base import get_scheduler

        scheduler = get_scheduler()
        if self._persisted is None or scheduler != self._scheduler:
            delayed = [
                dask.delayed(b, name=f"{self._name}-{k}", traverse=False)
                for k, b in enumerate(self._host)
            ]
            self._persisted = list(dask.persist(*delayed))
            self._scheduler = scheduler
        return self._persisted

    def operands(self, X: Any) -> tuple[list[Any], list[Any], dict[Any, Any]]:
        """What each chunk's task multiplies: (collections, operand per chunk, new tasks)."""
        raise NotImplementedError  # pragma: no cover - every plan defines it


class _BandedPlan(_Plan):
    """Halo exchange: chunk ``k`` and ``w`` rows of each neighbour, times its row block."""

    def __init__(self, name: str, csr: Any, chunks: tuple[int, ...], w: int) -> None:
        off = _offsets(chunks)
        n, last = int(off[-1]), len(chunks) - 1
        blocks = []
        for k in range(len(chunks)):
            # the columns the overlapped chunk holds: its rows plus the halo that
            # dask.array.overlap adds on inner boundaries only (boundary="none")
            lo = int(off[k]) - (w if k > 0 else 0)
            hi = int(off[k + 1]) + (w if k < last else 0)
            blocks.append(csr[int(off[k]) : int(off[k + 1]), max(lo, 0) : min(hi, n)])
        super().__init__(name, blocks)
        self.halo = w

    def operands(self, X: Any) -> tuple[list[Any], list[Any], dict[Any, Any]]:
        import dask.array as da

        # the halo exchange of map_overlap: each chunk with w rows of each neighbour
        Xo = da.overlap.overlap(X, depth={0: self.halo, 1: 0}, boundary="none")
        return [Xo], [(Xo.name, k, 0) for k in range(Xo.numblocks[0])], {}


class _GatherPlan(_Plan):
    """Row block ``k`` times the rows of ``X`` its nonzeros touch, gathered chunk by chunk."""

    def __init__(self, name: str, csr: Any, chunks: tuple[int, ...]) -> None:
        import scipy.sparse as sp

        off = _offsets(chunks)
        blocks, self.sources = [], []
        for k in range(len(chunks)):
            rows = csr[int(off[k]) : int(off[k + 1])]
            cols = np.unique(rows.indices)
            # gathered rows come in increasing order, chunk after chunk
            renumbered = np.searchsorted(cols, rows.indices).astype(rows.indices.dtype)
            blocks.append(
                sp.csr_matrix(
                    (rows.data, renumbered, rows.indptr), shape=(rows.shape[0], cols.size)
                )
            )
            owner = np.searchsorted(off, cols, side="right") - 1
            self.sources.append(
                [(int(j), cols[owner == j] - off[j]) for j in np.unique(owner).tolist()]
            )
        super().__init__(name, blocks)

    def operands(self, X: Any) -> tuple[list[Any], list[Any], dict[Any, Any]]:
        from dask.base import tokenize

        gather = "chunked-csr-gather-" + tokenize(X.name, self._name)
        tasks: dict[Any, Any] = {}
        operands = []
        for k, sources in enumerate(self.sources):
            parts = []
            for j, local in sources:
                tasks[(gather, k, j)] = (_take_rows, (X.name, j, 0), local)
                parts.append((gather, k, j))
            operands.append(parts)
        return [], operands, tasks


def _small(M: Any) -> tuple[Any, list[Any]]:
    """A small array as a task argument: a NumPy array, or the key of a one-chunk Dask array."""
    if M is None:
        return None, []
    if is_dask_array(M):
        M = M.rechunk(-1)
        return (M.name,) + (0,) * M.ndim, [M]
    return np.asarray(M), []


def _stage(
    block: Any, operand: Any, x: Any, M: Any, w: Any, C: Any, shape: tuple, dtype: Any
) -> np.ndarray:
    """``block @ operand + x @ M + w @ C`` for one row chunk (``operand``: array or parts)."""
    if isinstance(operand, list):
        if operand:
            operand = operand[0] if len(operand) == 1 else np.concatenate(operand, axis=0)
            out = np.asarray(block @ operand, dtype=dtype)
        else:  # a row block without nonzeros
            out = np.zeros(shape, dtype=dtype)
    else:
        out = np.asarray(block @ operand, dtype=dtype)
    if M is not None:
        out += x @ M
    if C is not None:
        out += w @ C
    return out


def _take_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return x[rows]
