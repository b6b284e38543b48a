"""Factors on Dask: tall factors in row chunks, the small core and every rank decision on the host.

A state ``Y = U S V^H`` with ``U`` (m x r) and ``V`` (n x r) as row-chunked ``dask.array``\\ s
and ``S`` (r x r) as a NumPy array runs through every matrix integrator with the code the
NumPy state uses. This module holds what differs, reached through the hooks of
:mod:`lowrank_integrators._backend` (imported only when a Dask array is met: the core package
never imports Dask):

* **QR of tall factors**: the columns are gathered into one chunk (tall and skinny) and
  factored by Dask's TSQR (Demmel, Grigori, Hoemmen, Langou 2012, arXiv:0808.2664), one task
  per row chunk plus a small reduction. ``Q`` is persisted together with ``R`` and a
  finiteness flag of the input (one computation); ``R`` and the flag come to the host, and
  the columns of ``Q`` are normalised as those of the NumPy QR (``Q_jj`` real and
  ``<= 0``), so that both give the same bases.
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
    """Thin QR ``x = Q R`` of a tall Dask array: ``Q`` a (persisted) Dask array, ``R`` on the host.

    TSQR over the row chunks of ``x`` (its columns gathered into one chunk). ``Q_jj`` is real
    and ``<= 0`` for every column ``j``, as for the NumPy QR of the library, so that ``Q``
    does not depend on the signs of the columns of ``x``.

    Raises
    ------
    NonFiniteError
        When ``x`` holds NaN or infinity (found in the computation that factors it; the
        factors are discarded).
    """
    m, k = int(x.shape[0]), int(x.shape[1])
    if k == 0 or m < 2 * k or len(x.chunks[0]) == 1:
        return _host_qr(x)
    x = _one_column_chunk(x)
    Q, R = da.linalg.tsqr(x)
    finite = da.isfinite(x).all()
    Q, R, finite, head = dask.persist(Q, R, finite, Q[:k, :])
    R, finite, head = dask.compute(R, finite, head)
    if not bool(finite):
        raise NonFiniteError(f"a matrix to be factorised by QR (shape {(m, k)})")
    d = _canonical_phases(np.diagonal(np.asarray(head)))
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


def _host_qr(x: Any) -> tuple[Any, Any]:
    """QR of a Dask array that is not tall or has one row chunk: computed on the host."""
    from . import _backend as bk

    Q, R = bk.qr(core_to_host(x))
    return da.from_array(Q, chunks=(x.chunks[0], -1)), R


def _canonical_phases(diag: np.ndarray) -> np.ndarray:
    """Unit factors ``d`` with ``diag * d`` real and ``<= 0`` (1 where ``diag`` is 0)."""
    mag = np.abs(diag)
    if np.iscomplexobj(diag):
        safe = np.where(mag > 0, mag, 1.0)
        return np.where(mag > 0, -np.conj(diag) / safe, 1.0).astype(diag.dtype)
    return np.where(diag > 0, -1.0, 1.0).astype(diag.dtype)
