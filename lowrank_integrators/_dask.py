"""Factors on Dask: tall factors in row chunks, the small core and every rank decision on the host.

A state ``Y = U S V^H`` with ``U`` (m x r) and ``V`` (n x r) as row-chunked ``dask.array``\\ s
and ``S`` (r x r) as a NumPy array runs through every matrix integrator with the code the
NumPy state uses. This module holds what differs, reached through the hooks of
:mod:`lowrank_integrators._backend` (imported only when a Dask array is met: the core package
never imports Dask):

* **QR of tall factors**: the columns are gathered into one chunk (tall and skinny), the
  input is persisted once and factored by CholeskyQR2 over the row chunks, with host Gram
  matrices and Cholesky factors (Householder TSQR over the row chunks where CholeskyQR2
  cannot be trusted); ``Q`` is persisted, ``R`` is a NumPy array, and the columns of ``Q``
  are normalised as those of the NumPy QR (``Q_jj`` real and ``<= 0``), so that both give
  the same bases.
* **small arrays**: products such as ``U1^H U0`` or a problem's ``U^H F V`` stay lazy until
  a small factorisation (the SVD of a rank decision) or the end of the step needs them; they
  are then computed to NumPy arrays on the host, all projections of a Galerkin substep in one
  computation.
* **end of a step** (:func:`settle`): the new factors are persisted once, in the row chunks
  of the step's input, and the core and the finiteness of all three factors are computed in
  the same computation. The graph a step starts from is therefore the persisted chunks of the
  state: the work per step does not grow over a run.

The same code runs on the local threaded scheduler and on a ``dask.distributed`` cluster:
``dask.persist`` and ``dask.compute`` use whichever scheduler is active.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from ._qr import (
    _MAX_KAPPA2_U,
    _NEAR_ORTHONORMAL,
    _cholesky_upper,
    _inverse_upper,
    _kappa2,
    canonical_phases,
)
from .errors import NonFiniteError

__all__ = [
    "checked_factors",
    "core_to_host",
    "is_dask",
    "settle",
    "svd",
    "tall_qr",
    "tall_qr_augment",
    "tall_qr_blocks",
    "tall_qr_project",
]


def is_dask(x: Any) -> bool:
    """Whether ``x`` is a Dask array."""
    return isinstance(x, da.Array)


def core_to_host(x: Any) -> Any:
    """A small array as a NumPy array: a Dask array is computed, others are returned as given."""
    return np.asarray(x.compute()) if is_dask(x) else x


# --- construction ----------------------------------------------------------------------------


def checked_factors(U: Any, S: Any, V: Any) -> tuple[Any, Any, Any]:
    """Validate factors of which at least one is a Dask array; return them normalised.

    ``U`` and ``V`` must both be Dask arrays with known chunk sizes; their columns are
    gathered into one chunk (the row chunks are kept). ``S`` must be a NumPy array, or a Dask
    array, which is computed to the host. Finiteness and orthonormality of ``U`` and ``V`` are
    checked in one computation.

    Raises
    ------
    TypeError
        When only one of ``U`` and ``V`` is a Dask array, ``S`` is neither a NumPy nor a Dask
        array, or ``S`` is a Dask array and ``U``, ``V`` are not.
    ValueError
        When a factor has unknown chunk sizes, or as for NumPy factors (shapes, finiteness,
        orthonormality).
    """
    from .factors import _validate_factors, check_gram

    if not (is_dask(U) or is_dask(V)):
        raise TypeError(
            f"S is a Dask array but U and V are {type(U).__module__}.{type(U).__name__} and "
            f"{type(V).__module__}.{type(V).__name__}: give the core of in-memory factors as "
            "an array of their library (S.compute() for NumPy)"
        )
    for name, X in (("U", U), ("V", V)):
        if not is_dask(X):
            raise TypeError(
                f"{name} must be a Dask array when the other tall factor is one (both row-"
                f"chunked dask.array of shape (rows, r)), got {type(X).__module__}."
                f"{type(X).__name__}"
            )
        if any(math.isnan(c) for c in X.chunks[0]) or any(math.isnan(c) for c in X.chunks[-1]):
            raise ValueError(
                f"{name} has unknown chunk sizes {X.chunks}; call {name}.compute_chunk_sizes() "
                "first (the integrators need the row chunks to keep them)"
            )
    if is_dask(S):
        S = core_to_host(S)
    elif type(S) is not np.ndarray:
        raise TypeError(
            f"S must be a NumPy array (the r x r core stays on the host) when U and V are Dask "
            f"arrays, got {type(S).__module__}.{type(S).__name__}"
        )
    _validate_factors(U, S, V, contents=False)
    U, V = _one_column_chunk(U), _one_column_chunk(V)
    finite_u, finite_v, gram_u, gram_v = dask.compute(
        da.isfinite(U).all(), da.isfinite(V).all(), _inner(U, U), _inner(V, V)
    )
    if not np.all(np.isfinite(S)):
        raise ValueError("S contains non-finite entries")
    for name, finite, gram, X in (("U", finite_u, gram_u, U), ("V", finite_v, gram_v, V)):
        if not bool(finite):
            raise ValueError(f"{name} contains non-finite entries")
        check_gram(name, np.asarray(gram), X.dtype)
    return U, S, V


# --- QR ----------------------------------------------------------------------------------------


def tall_qr(x: Any) -> tuple[Any, Any]:
    """Thin QR ``x = Q R`` of a tall Dask array: ``Q`` a persisted Dask array, ``R`` on the host.

    CholeskyQR2 over the row chunks (Fukaya, Nakatsukasa, Yanagisawa, Yamamoto 2014;
    Yamamoto et al. 2015, ETNA 44), the algorithm of the NumPy path: ``x`` (its columns
    gathered into one chunk) is persisted once, so that the graph that produced it runs once;
    two passes form the ``k x k`` Gram matrices, which come to the host for their Cholesky
    factors; one more pass forms ``Q = x (R2 R1)^{-1}``, persisted. Where the first Gram matrix
    is too ill-conditioned for CholeskyQR2 (``kappa(x)^2 u > 10^-2`` by the estimate
    ``max_i G_ii / R_ii^2``) or a Cholesky factorisation breaks down, Dask's Householder TSQR
    (Demmel, Grigori, Hoemmen, Langou 2012, arXiv:0808.2664) factors the persisted ``x``
    instead. ``Q_jj`` is real and ``<= 0`` for every column ``j``, as for the NumPy QR of the
    library, so that ``Q`` does not depend on the signs of the columns of ``x``.

    Raises
    ------
    NonFiniteError
        When ``x`` holds NaN or infinity (checked in the computation of the first Gram matrix,
        before any factorisation).
    """
    m, k = int(x.shape[0]), int(x.shape[1])
    if k == 0 or m < 2 * k or len(x.chunks[0]) == 1:
        return _host_qr(x)
    (x,) = dask.persist(_one_column_chunk(x))
    gram, finite, top = dask.compute(_inner(x, x), da.isfinite(x).all(), x[:k, :])
    if not bool(finite):
        raise NonFiniteError(f"a matrix to be factorised by QR (shape {(m, k)})")
    eps = float(np.finfo(x.dtype).eps)
    R1 = _cholesky_upper(np.asarray(gram))
    if R1 is None or _kappa2(np.asarray(gram), R1) * eps > _MAX_KAPPA2_U:
        return _tsqr(x)
    W1 = _inverse_upper(R1)
    Q1 = _times(x, W1)
    gram2 = np.asarray(_inner(Q1, Q1).compute())
    R2 = _cholesky_upper(gram2)
    if R2 is None or np.linalg.norm(gram2 - np.eye(k)) > _NEAR_ORTHONORMAL:
        return _tsqr(x)
    W = W1 @ _inverse_upper(R2)
    d = canonical_phases(np.diagonal(np.asarray(top) @ W))
    W = W * d[None, :]
    (Q,) = dask.persist(_times(x, W))
    return Q, np.conj(d)[:, None] * (R2 @ R1)


def _tsqr(x: Any) -> tuple[Any, Any]:
    """Householder TSQR of a (persisted) tall Dask array, normalised as :func:`tall_qr`."""
    k = int(x.shape[1])
    Q, R = da.linalg.tsqr(x)
    Q, R, head = dask.persist(Q, R, Q[:k, :])
    R, head = dask.compute(R, head)
    d = canonical_phases(np.diagonal(np.asarray(head)))
    return Q * d[None, :], np.conj(d)[:, None] * np.asarray(R)


def tall_qr_project(x: Any, w: Any) -> tuple[Any, Any, Any]:
    """:func:`tall_qr` of ``x`` and ``Q^H w`` (lazy, small)."""
    Q, R = tall_qr(x)
    return Q, R, _inner(Q, w)


def tall_qr_blocks(blocks: Any) -> tuple[Any, Any]:
    """Thin QR of the column concatenation of tall Dask blocks (see :func:`tall_qr`)."""
    return tall_qr(da.concatenate([da.asarray(b) for b in blocks], axis=1))


def tall_qr_augment(U0: Any, X: Any) -> tuple[Any, Any]:
    """Thin QR of ``[U0, Z]``, ``Z = X - U0 (U0^H X)`` projected twice (as the NumPy version)."""
    Z = X
    if int(U0.shape[1]) > 0:
        for _ in range(2):
            Z = Z - U0 @ _inner(U0, Z)
    return tall_qr(da.concatenate([U0, Z], axis=1))


def svd(x: Any) -> tuple[Any, Any, Any]:
    """Reduced SVD of a Dask array on the host (NumPy results): the cores are small."""
    from . import _backend as bk

    return bk.svd(core_to_host(x))


# --- the end of a step -------------------------------------------------------------------------


def settle(Y: Any, like: Any) -> tuple[Any, bool]:
    """The new state ``Y`` persisted once, in the row chunks of ``like``, and its finiteness.

    Parameters
    ----------
    Y : LowRankMatrix
        The result of a step; ``U`` and ``V`` are Dask arrays (lazy or partly persisted), ``S``
        a NumPy or a (small, lazy) Dask array.
    like : LowRankMatrix
        The step's input, whose row chunks the new factors take.

    Returns
    -------
    (LowRankMatrix, bool)
        ``Y`` with persisted factors and a NumPy core, and whether all its entries are finite;
        both from one computation.
    """
    from .factors import LowRankMatrix

    U = _rows_like(_one_column_chunk(Y.U), like.U)
    V = _rows_like(_one_column_chunk(Y.V), like.V)
    S = Y.S
    flags = [da.isfinite(U).all(), da.isfinite(V).all()]
    if is_dask(S):
        U, V, S, *flags = dask.persist(U, V, S, *flags)
        S, *flags = dask.compute(S, *flags)
        S = np.asarray(S)
    else:
        U, V, *flags = dask.persist(U, V, *flags)
        flags = list(dask.compute(*flags))
    finite = all(bool(f) for f in flags) and bool(np.all(np.isfinite(S)))
    return LowRankMatrix(U, S, V, check=False), finite


# --- helpers -----------------------------------------------------------------------------------


def _one_column_chunk(x: Any) -> Any:
    return x if len(x.chunks[1]) == 1 else x.rechunk({1: -1})


def _rows_like(x: Any, like: Any) -> Any:
    """``x`` in the row chunks of ``like`` (unchanged when they agree)."""
    if not is_dask(like) or x.chunks[0] == like.chunks[0]:
        return x
    return x.rechunk({0: like.chunks[0]})


def _inner(a: Any, b: Any) -> Any:
    """``a^H b`` for tall Dask arrays (lazy)."""
    at = a.T
    return (at.conj() if np.iscomplexobj(np.empty(0, a.dtype)) else at) @ b


def _times(x: Any, W: np.ndarray) -> Any:
    """``x @ W`` for a tall Dask ``x`` and a small NumPy ``W``: one task per row chunk."""
    dtype = np.result_type(x.dtype, W.dtype)
    return x.map_blocks(
        _right_multiply,
        W=W.astype(dtype, copy=False),
        chunks=(x.chunks[0], (int(W.shape[1]),)),
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
    )


def _right_multiply(block: np.ndarray, W: np.ndarray) -> np.ndarray:
    return block @ W


def _host_qr(x: Any) -> tuple[Any, Any]:
    """QR of a Dask array that is not tall or has one row chunk: computed on the host."""
    from . import _backend as bk

    Q, R = bk.qr(core_to_host(x))
    return da.from_array(Q, chunks=(x.chunks[0], -1)), R
