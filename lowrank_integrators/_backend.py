"""The one backend-aware module.

Everything outside this file calls ``namespace(...)`` and then only functions of the
array API standard. Backend quirks (reduced QR and SVD spelling, conjugate transposes of
real arrays without a copy, moving a few numbers to the host for a rank decision,
recognising the linear-algebra errors of each library) are collected here so that the
integrators read like their algorithm boxes.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_dask_array
from array_api_compat import device as _array_device

from .errors import NonFiniteError

__all__ = [
    "add_product",
    "add_scaled",
    "adjoint",
    "adjoint_operator",
    "all_finite",
    "allows_inplace",
    "allows_item_assignment",
    "apply_to_product",
    "copy",
    "core_array",
    "device",
    "empty",
    "extend_basis",
    "eye_like",
    "is_array",
    "is_complex",
    "is_lazy",
    "is_linalg_error",
    "namespace",
    "namespace_of",
    "orth",
    "plus_product",
    "qr",
    "qr_augment",
    "qr_blocks",
    "qr_project",
    "real_dtype",
    "require_finite",
    "row_blocks",
    "sandwich",
    "single_block",
    "svd",
    "svd_on_host",
    "svd_reports_non_finite",
    "svd_to_host",
    "to_host",
    "transpose_operator",
]


def namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays`` (``None`` entries are skipped)."""
    present = [a for a in arrays if a is not None]
    # Plain NumPy arrays, by far the most frequent input, skip the generic dispatch.
    if present and all(type(a) is np.ndarray for a in present):
        return _NUMPY
    if present:
        kind = type(present[0])
        xp = _BY_TYPE.get(kind)
        if xp is not None and all(type(a) is kind for a in present):
            return xp
    try:
        xp = array_namespace(*present)
    except TypeError:
        # Dask factors with a small NumPy core: Dask takes NumPy operands in every operation.
        lazy = [a for a in present if is_dask_array(a)]
        if lazy and all(is_dask_array(a) or type(a) is np.ndarray for a in present):
            return array_namespace(lazy[0])
        raise
    kind = type(present[0])
    if (kind.__module__, kind.__name__) in _TYPED_NAMESPACES and all(
        type(a) is kind for a in present
    ):
        _BY_TYPE[kind] = xp
        if hasattr(kind, "mT"):
            _TRANSPOSABLE.add(kind)
    return xp


def namespace_of(x: Any) -> Any:
    """The namespace of one array: :func:`namespace` without the argument handling."""
    if type(x) is np.ndarray:
        return _NUMPY
    xp = _BY_TYPE.get(type(x))
    return xp if xp is not None else namespace(x)


#: The namespace ``array_namespace`` gives for NumPy arrays.
_NUMPY = array_namespace(np.empty(0))

#: Exact array types whose namespace follows from the type alone, by module and name:
#: ``namespace`` remembers it at the first call (the libraries are never imported here).
_TYPED_NAMESPACES = frozenset({("torch", "Tensor"), ("cupy", "ndarray")})

#: The namespaces remembered so far, by exact type.
_BY_TYPE: dict[type, Any] = {np.ndarray: _NUMPY}

#: The remembered types with a matrix transpose property ``mT``.
_TRANSPOSABLE: set[type] = set()

#: Whether a dtype of another library than NumPy is complex, by array type and dtype.
_COMPLEX: dict[tuple[type, Any], bool] = {}


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array of a library that array-api-compat recognises."""
    return type(x) in _BY_TYPE or is_array_api_obj(x)


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is a lazy (Dask) array: see :mod:`lowrank_integrators._dask`.

    Answered without importing Dask.
    """
    return type(x) not in _BY_TYPE and is_dask_array(x)


def core_array(x: Any) -> Any:
    """A small array (a core, a Gram matrix) where small factorisations can take it.

    A lazy (Dask) array is computed to a NumPy array on the host; any other array is returned
    as it is.
    """
    if type(x) not in _BY_TYPE and is_dask_array(x):
        from ._dask import core_to_host

        return core_to_host(x)
    return x


def is_complex(x: Any) -> bool:
    """Whether the array ``x`` has a complex floating dtype."""
    if type(x) is np.ndarray:
        return x.dtype.kind == "c"
    key = (type(x), x.dtype)  # dtypes of different libraries are never compared
    known = _COMPLEX.get(key)
    if known is None:
        known = _COMPLEX[key] = bool(namespace_of(x).isdtype(x.dtype, "complex floating"))
    return known


def real_dtype(xp: Any, dtype: Any) -> Any:
    """The real floating dtype of the same precision as ``dtype``."""
    if xp.isdtype(dtype, "complex floating"):
        return xp.float32 if dtype == xp.complex64 else xp.float64
    return dtype


def adjoint(x: Any) -> Any:
    """Conjugate transpose ``x^H`` of a (stack of) matrices.

    For real input this is a transpose view: no conjugation copy is made.
    """
    if type(x) is np.ndarray:
        # attribute and method calls: numpy.swapaxes and numpy.iscomplexobj are Python
        # wrappers, a microsecond each on every small product of a training step
        xt = x.T if x.ndim == 2 else x.swapaxes(-1, -2)
        return xt.conj() if x.dtype.kind == "c" else xt
    xp = namespace_of(x)
    xt = x.mT if type(x) in _TRANSPOSABLE else xp.matrix_transpose(x)
    return xp.conj(xt) if is_complex(x) else xt


def allows_inplace(x: Any) -> bool:
    """Whether work arrays like ``x`` may be updated in place (slice assignment, ``+=``).

    True for NumPy, CuPy and PyTorch arrays (writeable ones); False for libraries whose
    arrays are immutable or lazy (JAX, Dask) and for array-api-strict, which stands for the
    portable subset: code that reuses workspace asks this and otherwise updates functionally.
    See also :func:`allows_item_assignment`.
    """
    if type(x) is np.ndarray:
        return bool(x.flags.writeable)
    if type(x) in _BY_TYPE:  # an exact torch.Tensor or cupy.ndarray seen before
        return True
    from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

    if not (is_numpy_array(x) or is_cupy_array(x) or is_torch_array(x)):
        return False
    if is_numpy_array(x):
        return bool(x.flags.writeable)
    return True


def allows_item_assignment(x: Any) -> bool:
    """Whether ``x[b] = ...`` and ``x[b] += ...`` may update a work array like ``x``.

    False for lazy or immutable arrays (Dask, JAX): there the row-blocked updates of
    :func:`add_product`, :func:`add_scaled` and the substep stages form the new array as one
    expression and return it (callers use the return value). True for every other array,
    array-api-strict included (item assignment is part of the standard).
    """
    if type(x) in _BY_TYPE:  # NumPy, or an exact torch.Tensor or cupy.ndarray seen before
        return True
    from array_api_compat import is_jax_array

    return not (is_dask_array(x) or is_jax_array(x))


def eye_like(x: Any, n: int) -> Any:
    """The ``n x n`` identity with the dtype and device of ``x``."""
    if type(x) is np.ndarray:
        return np.eye(n, dtype=x.dtype)
    xp = namespace_of(x)
    return xp.eye(n, dtype=x.dtype, device=device(x))


def qr(x: Any, *, overwrite: bool = False) -> tuple[Any, Any]:
    """Reduced (thin) QR factorisation ``x = Q R`` with ``min(rows, cols)`` columns in Q.

    CholeskyQR2 with shifted CholeskyQR3 and Householder fallbacks (see
    :mod:`lowrank_integrators._qr`): GEMM-rate passes on the row-major array, no
    Fortran-ordered copy. ``Q_jj`` is real and <= 0, so that ``Q`` does not depend on the
    signs of the columns of ``x``. ``x`` is not modified unless ``overwrite`` (a NumPy ``x``
    no one else holds may then become ``Q``: one tall array less).

    Raises :class:`~lowrank_integrators.errors.NonFiniteError` before any factorisation when
    ``x`` holds NaN or infinity.
    """
    if is_dask_array(x):
        from ._dask import tall_qr as dask_qr

        return dask_qr(x)
    from ._qr import tall_qr

    # NumPy: the check is read off the Gram matrix of the factorisation (no extra pass)
    return tall_qr(x, overwrite_x=overwrite, check="a matrix to be factorised by QR")


def qr_project(x: Any, w: Any, *, overwrite: bool = False) -> tuple[Any, Any, Any]:
    """Thin QR ``x = Q R`` as :func:`qr`, and ``Q^H w`` formed in the last pass over ``Q``.

    For a new basis ``U1 = Q`` and the old one ``w = U0`` this is ``M = U1^H U0`` without a
    separate product over the tall factors.
    """
    if is_dask_array(x):
        from ._dask import tall_qr_project as dask_qr_project

        return dask_qr_project(x, w)
    from ._qr import tall_qr_project

    return tall_qr_project(x, w, overwrite_x=overwrite, check="a matrix to be factorised by QR")


def qr_blocks(blocks: Sequence[Any]) -> tuple[Any, Any]:
    """Thin QR of the column concatenation ``[B1, B2, ...]``; the blocks are not modified.

    The blocks are copied once into a row-major array that the factorisation then overwrites
    with Q: for the augmented bases of the rank-adaptive integrators at n ~ 1e6 the
    concatenation is the only tall array the factorisation adds.

    Raises :class:`~lowrank_integrators.errors.NonFiniteError` before any factorisation when
    a block holds NaN or infinity.
    """
    from ._qr import tall_qr

    if not blocks:
        raise ValueError("qr_blocks needs at least one block")
    if any(is_dask_array(b) for b in blocks):
        from ._dask import tall_qr_blocks

        return tall_qr_blocks(blocks)
    name = "a block of a matrix to be factorised by QR"
    if all(type(b) is np.ndarray for b in blocks):
        m = int(blocks[0].shape[0])
        width = sum(int(b.shape[1]) for b in blocks)
        work = np.empty((m, width), np.result_type(*blocks))
        j = 0
        for b in blocks:
            work[:, j : j + b.shape[1]] = b
            j += int(b.shape[1])
        # non-finite blocks are found on the factorisation's Gram matrix (no extra pass)
        return tall_qr(work, overwrite_x=True, check=name)
    for b in blocks:
        require_finite(b, name)
    xp = array_namespace(*blocks)
    return tall_qr(xp.concat(list(blocks), axis=1), overwrite_x=True)


def qr_increment(U0: Any, K1: Any, S0: Any) -> tuple[Any, Any]:
    """Thin QR ``[U0, K1 - U0 S0] = Q R'``: the ``Q`` of ``[U0, K1]`` from its increment.

    ``span`` of the first ``r + j`` columns is that of ``[U0, K1]`` for every ``j`` (the
    columns of ``U0 S0`` lie in ``span(U0)``), so that ``Q`` is the Q factor of ``[U0, K1]``
    and ``R = R' [[I, S0], [0, I]]``: the diagonal blocks of ``R'`` are those of ``R``. For a
    K-step ``K1 = U0 S0 + h F V0 + ...`` the increment is the small part that carries the new
    directions: ``[U0, K1]`` has a condition number near ``||S0|| / (h ||F||)`` where
    ``[U0, K1 - U0 S0]`` has one independent of ``h``, so the Cholesky QR needs fewer passes
    (in single precision often two instead of Householder), and the new directions carry
    rounding errors relative to the increment instead of to ``K1``. ``K1`` is not modified:
    the blocks are copied once into the array the factorisation overwrites, as in
    :func:`qr_blocks`, and ``U0 S0`` is subtracted there by row blocks (no tall temporary).

    Returns ``(Q, R')``.
    """
    if is_dask_array(U0) or is_dask_array(K1):
        from ._dask import tall_qr_blocks

        return tall_qr_blocks([U0, K1 - U0 @ S0])
    from ._qr import tall_qr

    name = "a block of a matrix to be factorised by QR"
    if all(type(b) is np.ndarray for b in (U0, K1, S0)):
        m, r, k = int(U0.shape[0]), int(U0.shape[1]), int(K1.shape[1])
        work = np.empty((m, r + k), np.result_type(U0, K1, S0))
        S0 = S0.astype(work.dtype, copy=False)
        # one pass: each block of rows of U0 is copied and multiplied while it is in cache,
        # and the block of the increment is written once
        for b in row_blocks(work):
            u = U0[b]
            work[b, :r] = u
            np.subtract(K1[b], u @ S0, out=work[b, r:])
        # non-finite blocks are found on the factorisation's Gram matrix (no extra pass)
        return tall_qr(work, overwrite_x=True, check=name)
    require_finite(U0, name)
    require_finite(K1, name)
    xp = array_namespace(U0, K1)
    return tall_qr(xp.concat([U0, plus_product(K1, U0, S0, alpha=-1.0)], axis=1), overwrite_x=True)


def qr_augment(U0: Any, X: Any) -> tuple[Any, Any]:
    """Thin QR of ``[U0, Z]`` with ``Z = X - U0 (U0^H X)`` (projected twice) for orthonormal ``U0``.

    ``span([U0, Z]) = span([U0, X])``. Orthogonalising the new columns against ``U0`` first
    (block Gram-Schmidt, repeated once for orthogonality to working precision) leaves the
    Cholesky QR a well-conditioned Gram matrix where ``X`` lies close to ``span(U0)`` (a
    K-step ``U0 S0 + h F V0``), which would otherwise send it to the Householder fallback.
    As in :func:`qr_blocks`, the blocks are copied once into a row-major array that the
    projection and the factorisation then overwrite: the only tall array added.
    """
    if is_dask_array(U0) or is_dask_array(X):
        from ._dask import tall_qr_augment

        return tall_qr_augment(U0, X)
    from ._qr import tall_qr

    require_finite(U0, "an orthonormal basis to be augmented")
    require_finite(X, "a block of a matrix to be factorised by QR")
    r = int(U0.shape[1])
    if all(type(b) is np.ndarray for b in (U0, X)):
        m, k = int(X.shape[0]), int(X.shape[1])
        work = np.empty((m, r + k), np.result_type(U0, X))
        work[:, :r] = U0
        Z = work[:, r:]
        Z[...] = X
        if r > 0 and k > 0:
            for _ in range(2):
                C = _inner(U0, Z)
                for b in row_blocks(Z):
                    Z[b] -= U0[b] @ C
        return tall_qr(work, overwrite_x=True)
    xp = namespace(U0, X)
    Z = X
    if r > 0:
        U0h = adjoint(U0)
        for _ in range(2):
            Z = Z - U0 @ (U0h @ Z)
    return tall_qr(xp.concat([U0, Z], axis=1), overwrite_x=True)


def extend_basis(U0: Any, X: Any) -> Any:
    """Orthonormal ``Q`` with ``[U0, Q]`` orthonormal and ``span(X)`` inside ``span([U0, Q])``.

    ``min(k, m - r)`` columns for ``X`` of shape (m, k) and ``U0`` of shape (m, r); see
    :func:`lowrank_integrators._qr.extend_basis` (rank-deficient ``X`` included).
    """
    from ._qr import extend_basis as _extend

    require_finite(X, "a matrix to be orthonormalised against a basis")
    return _extend(U0, X)


def orth(x: Any) -> Any:
    """Orthonormal basis of the column space of ``x``: the Q factor of a thin QR."""
    return qr(x)[0]


#: LAPACK ``gesdd`` and its optimal work size by (dtype character, rows, cols), looked up once.
_GESDD: dict[tuple[str, int, int], tuple[Any, int]] = {}


def _gesdd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduced SVD of a finite NumPy matrix by LAPACK's divide-and-conquer ``gesdd``, called
    directly.

    ``numpy.linalg.svd`` and ``scipy.linalg.svd`` call the same routine through wrappers that
    query the work size and check their input on every call: on the cores of a training
    step (8 x 8 to 64 x 64) that costs 7-120 microseconds of their 10-400 (one BLAS thread).
    """
    m, n = int(x.shape[0]), int(x.shape[1])
    key = (x.dtype.char, m, n)
    entry = _GESDD.get(key)
    if entry is None:
        from scipy.linalg import lapack

        gesdd, gesdd_lwork = lapack.get_lapack_funcs(("gesdd", "gesdd_lwork"), (x,))
        work, info = gesdd_lwork(m, n, compute_uv=1, full_matrices=0)
        if info != 0:  # pragma: no cover - the query reports only illegal arguments
            raise np.linalg.LinAlgError(f"LAPACK gesdd work size query failed with info={info}")
        # the size comes back as a floating-point number, rounded in single precision:
        # a little more is always accepted
        lwork = int(float(np.real(work)) * (1 + 1e-6)) + 1
        entry = _GESDD[key] = (gesdd, lwork)
    gesdd, lwork = entry
    u, s, vt, info = gesdd(x, compute_uv=1, full_matrices=0, lwork=lwork, overwrite_a=0)
    if info != 0:
        raise np.linalg.LinAlgError(
            "SVD did not converge" if info > 0 else f"LAPACK gesdd: illegal argument {-info}"
        )
    return u, s, vt


def svd(x: Any) -> tuple[Any, Any, Any]:
    """Reduced SVD ``x = P diag(sigma) Q^H``; returns ``(P, sigma, Q^H)`` as LAPACK does.

    Raises :class:`~lowrank_integrators.errors.NonFiniteError` when ``x`` holds NaN or
    infinity: LAPACK's SVD of such a matrix may never return. A (small) Dask array is
    computed to the host first: the results are NumPy arrays. Small matrices on an
    accelerator are factorised on the host, the factors returned on their device
    (:func:`svd_on_host`).
    """
    if type(x) is not np.ndarray:
        x = core_array(x)
        if svd_on_host(x):
            return _host_svd(x)[:3]
    require_finite(x, "a matrix to be factorised by SVD")
    if type(x) is np.ndarray:
        if x.ndim == 2 and min(x.shape) > 0 and x.dtype.char in "fdFD":
            return _gesdd(x)  # finiteness checked above
        return np.linalg.svd(x, full_matrices=False)
    xp = array_namespace(x)
    return xp.linalg.svd(x, full_matrices=False)


#: The largest side of a matrix on an accelerator whose SVD runs on the host (see
#: :func:`svd_on_host`). LAPACK's ``gesdd`` on one core took 1.2, 5.7, 36 and 308 ms for
#: graded float32 matrices of 128, 256, 512 and 1024 a side; the default driver of an H200
#: 4.2 and 13 ms at 128 and 256, where it converged, and grew more slowly.
HOST_SVD_MAX = 512

#: Whether PyTorch tensors in host memory take the host route too. Off: there PyTorch's SVD
#: is LAPACK's already. On only in tests, which have no accelerator to exercise the route.
_HOST_SVD_ON_CPU = False

_HOST_SVD_DTYPES = frozenset({"float32", "float64", "complex64", "complex128"})


def svd_on_host(x: Any, shape: tuple[int, int] | None = None) -> bool:
    """Whether the SVD of ``x`` runs on the host: a CuPy array, or a PyTorch tensor on an
    accelerator and outside autograd's graph, of float32/64 or complex64/128 and at most
    :data:`HOST_SVD_MAX` a side. ``shape``, when given, is that of the matrix to factorise
    instead of ``x``'s own (an unfolding of a tensor ``x``).

    These are the cores of the integrators (``2r x 2r``, ``4r x 4r``), whose singular values
    are read back for the rank decision anyway: their SVD costs one copy to the host (the
    same wait as reading the singular values) and LAPACK's ``gesdd`` there. The GPU's
    solvers are slow on such small matrices, and one of them does not converge on some of
    them: on an NVIDIA H200 (PyTorch 2.11, CUDA 13) ``torch.linalg.svd`` of the 128 x 128
    float32 cores of a DLRT step reported no convergence of the Jacobi driver and took
    1.2 s per call in its fallback; the host route took 1.4-1.7 ms at that size there,
    copies included.
    """
    module = type(x).__module__
    if module.startswith("torch"):
        if not (_HOST_SVD_ON_CPU or x.device.type != "cpu") or x.requires_grad:
            return False  # a tensor in autograd's graph keeps PyTorch's differentiable SVD
        dtype = str(x.dtype).removeprefix("torch.")
    elif module.startswith("cupy"):
        dtype = str(x.dtype)
    else:
        return False
    sides = tuple(int(d) for d in (x.shape if shape is None else shape))
    return (
        dtype in _HOST_SVD_DTYPES
        and len(sides) == 2
        and 0 < min(sides)
        and max(sides) <= HOST_SVD_MAX
    )


def _host_svd(x: Any) -> tuple[Any, Any, Any, np.ndarray]:
    """``(P, sigma, Q^H)`` of :func:`svd_on_host` arrays, on ``x``'s device, and ``sigma`` on
    the host; :class:`~lowrank_integrators.errors.NonFiniteError` for non-finite ``x``."""
    host = to_host(x)  # the one wait for the device
    require_finite(host, "a matrix to be factorised by SVD")
    u, sigma, vh = _gesdd(host)
    xp, dev = namespace_of(x), device(x)
    return (
        xp.asarray(u, device=dev),
        xp.asarray(sigma, device=dev),
        xp.asarray(vh, device=dev),
        sigma,
    )


def svd_reports_non_finite(x: Any) -> bool:
    """Whether :func:`svd_to_host` may take ``x``: a PyTorch tensor, or a matrix of
    :func:`svd_on_host`.

    PyTorch's SVD returns (or raises) for input holding NaN or infinity, so that the check
    can follow the factorisation on the singular values the caller reads back anyway. A
    matrix factorised on the host is checked there, and its singular values are at hand.
    """
    return (type(x).__module__ == "torch" and type(x) in _BY_TYPE) or svd_on_host(x)


def svd_to_host(x: Any) -> tuple[Any, Any, Any, np.ndarray]:
    """:func:`svd` and the singular values on the host, reading back one array.

    For the arrays of :func:`svd_reports_non_finite`: the factorisation runs first and
    non-finite input is reported from its failure or its singular values (raises
    :class:`~lowrank_integrators.errors.NonFiniteError` as :func:`svd` does). Matrices of
    :func:`svd_on_host` are read back instead, checked and factorised there.
    """
    if svd_on_host(x):
        return _host_svd(x)
    xp = namespace_of(x)
    try:
        P, sigma, Qh = xp.linalg.svd(x, full_matrices=False)
    except Exception as exc:  # each library raises its own error type
        if not is_linalg_error(exc):
            raise
        require_finite(x, "a matrix to be factorised by SVD", now=True)
        raise
    sig_host = to_host(sigma)
    if not np.logical_and.reduce(np.isfinite(sig_host), axis=None):
        require_finite(x, "a matrix to be factorised by SVD", now=True)
    return P, sigma, Qh, sig_host


def to_host(x: Any) -> np.ndarray:
    """Copy a (small) array to a NumPy array on the host.

    This is the only place numbers leave the device; the integrators use it for the rank
    decision and for the diagnostics recorded per step.
    """
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("torch"):
        if x.device.type == "cpu" and not x.requires_grad:
            return x.numpy()
        return x.detach().cpu().numpy()
    if mod.startswith("dask"):
        return np.asarray(x.compute())
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        # array-api-strict refuses implicit conversion; go through DLPack.
        xp = array_namespace(x)
        return np.from_dlpack(xp.asarray(x, copy=True))


def all_finite(*arrays: Any) -> bool:
    """Whether every entry of every array is finite (one host sync per array).

    A PyTorch tensor is first summed: a finite sum proves every entry finite (a NaN or an
    infinity makes the sum NaN or infinite), and a sum is far cheaper there than the
    entrywise ``isfinite``; only a non-finite sum (rare: a non-finite entry, or an overflow)
    is settled entry by entry.
    """
    for a in arrays:
        if type(a) is np.ndarray:  # the common case, without the namespace lookup
            if not np.logical_and.reduce(np.isfinite(a), axis=None):
                return False
            continue
        xp = namespace_of(a)
        if type(a).__module__.startswith("torch") and a.numel() > 0:
            if bool(xp.isfinite(xp.sum(a))):
                continue
        if not bool(xp.all(xp.isfinite(a))):
            return False
    return True


#: Whether tests on tensors on an accelerator stay there (see :func:`defers_checks`); off, every
#: test is read back as it is made.
_DEFER = True
#: Whether they stay there for tensors in host memory too. Off: on a CPU a number is read back
#: without a wait, and the few extra operations of deferred tests cost more than the reads
#: (the LeNet5 optimizer step measured 9 % slower with them).
_DEFER_ON_CPU = False


def defers_checks(x: Any) -> bool:
    """Whether tests on ``x`` (of the QR, of new bases, of finiteness) stay on its device to be
    read back together: a floating PyTorch tensor (whose ``cholesky_ex`` reports a breakdown
    without raising) on an accelerator, where each number read back makes the host wait for
    the device."""
    if not (_DEFER and type(x).__module__.startswith("torch")):
        return False
    torch = sys.modules["torch"]
    if x.dtype not in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        return False
    return _DEFER_ON_CPU or x.device.type != "cpu"


#: The finiteness tests of the innermost :func:`deferred_finite_checks` block, if any.
_PENDING_CHECKS: contextvars.ContextVar[list[tuple[Any, str]] | None] = contextvars.ContextVar(
    "lowrank_integrators_pending_checks", default=None
)


@contextlib.contextmanager
def deferred_finite_checks() -> Iterator[None]:
    """A block whose :func:`require_finite` tests on tensors of :func:`defers_checks` stay on
    their device: they are read back together when the block ends, and the first that failed
    raises :class:`~lowrank_integrators.errors.NonFiniteError` (also where the block raised
    another error first, which non-finite input can cause).
    """
    checks: list[tuple[Any, str]] = []
    token = _PENDING_CHECKS.set(checks)
    try:
        yield
    except Exception:
        _PENDING_CHECKS.reset(token)
        token = None
        _raise_first_failed(checks)
        raise
    finally:
        if token is not None:
            _PENDING_CHECKS.reset(token)
    _raise_first_failed(checks)


def _raise_first_failed(checks: list[tuple[Any, str]]) -> None:
    if not checks:
        return
    torch = sys.modules["torch"]
    by_device: dict[Any, list[int]] = {}
    for i, (ok, _) in enumerate(checks):
        by_device.setdefault(ok.device, []).append(i)
    passed = [True] * len(checks)
    for where in by_device.values():  # one wait per device
        for i, ok in zip(where, to_host(torch.stack([checks[i][0] for i in where])), strict=True):
            passed[i] = bool(ok)
    for ok, (_, message) in zip(passed, checks, strict=True):
        if not ok:
            raise NonFiniteError(message)


def require_finite(x: Any, what: str, *, now: bool = False) -> None:
    """Raise :class:`~lowrank_integrators.errors.NonFiniteError` unless ``x`` is finite.

    ``what`` names the array in the message (its shape is added). NumPy arrays are checked
    row block by row block, so that no boolean array of the size of a tall ``x`` is formed.
    Inside :func:`deferred_finite_checks`, tensors of :func:`defers_checks` are tested on
    their device and the test is read when the block ends, unless ``now``: for a caller whose
    next step depends on the outcome (one that has found a failure and names its cause).
    """
    pending = None if now else _PENDING_CHECKS.get()
    if pending is not None and defers_checks(x):
        torch = sys.modules["torch"]
        shape = tuple(int(d) for d in x.shape)
        pending.append((torch.isfinite(x).all(), f"{what} (shape {shape})"))
        return
    if isinstance(x, np.ndarray) and x.ndim == 2:
        if x.size <= _BLOCK_ELEMENTS_NUMPY:  # one block: no slices
            finite = bool(np.logical_and.reduce(np.isfinite(x), axis=None))
        else:
            finite = all(np.isfinite(x[b, :]).all() for b in row_blocks(x))
    else:
        finite = all_finite(x)
    if not finite:
        raise NonFiniteError(f"{what} (shape {tuple(int(d) for d in x.shape)})")


def is_linalg_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a linear-algebra failure (no convergence, NaN input) of any backend."""
    if isinstance(exc, np.linalg.LinAlgError):
        return True
    name = type(exc).__name__
    return name in {"LinAlgError", "_LinAlgError"}


def adjoint_operator(op: Any) -> Any:
    """The adjoint ``op^H`` of a square operator usable with ``@``.

    Arrays of any array-API library, ``scipy.sparse`` matrices and arrays, and
    ``scipy.sparse.linalg.LinearOperator`` (or anything with ``.H`` or ``.conj()`` and ``.T``)
    are supported.
    """
    if is_array_api_obj(op):
        return adjoint(op)
    dtype = getattr(op, "dtype", None)
    if dtype is not None and hasattr(op, "T"):
        try:
            real = not np.issubdtype(np.dtype(dtype), np.complexfloating)
        except TypeError:
            real = False
        if real:
            # ``conj()`` of a real scipy.sparse matrix is a full copy of its data; the
            # transpose alone is a view.
            return op.T
    if hasattr(op, "conj") and hasattr(op, "T"):
        return op.conj().T
    if hasattr(op, "H"):
        return op.H
    raise TypeError(
        f"cannot form the adjoint of an operator of type {type(op).__name__}: expected an "
        "array, a scipy.sparse matrix, or an object with .H or .conj() and .T"
    )


def transpose_operator(op: Any) -> Any:
    """The plain transpose ``op^T`` of a square operator usable with ``@``."""
    if is_array_api_obj(op):
        return array_namespace(op).matrix_transpose(op)
    if hasattr(op, "T"):
        return op.T
    raise TypeError(
        f"cannot transpose an operator of type {type(op).__name__}: expected an array, a "
        "scipy.sparse matrix, or an object with .T"
    )


def device(x: Any) -> Any:
    """The device an array lives on."""
    if type(x) in _BY_TYPE and type(x) is not np.ndarray:
        return x.device  # torch.Tensor, cupy.ndarray
    return _array_device(x)


def device_key(x: Any) -> Any:
    """A hashable token of the device ``x`` lives on, for caches keyed by device.

    CuPy's ``Device`` defines equality but no hash; it is keyed by its ordinal.
    """
    dev = device(x)
    try:
        hash(dev)
    except TypeError:
        return (type(dev).__module__, type(dev).__name__, getattr(dev, "id", None))
    return dev


# --- row-blocked updates of tall arrays ---------------------------------------------------
#
# The substep solvers and the structured fields update tall arrays (n x r with n ~ 1e6) in
# place. Written as ``out += X @ M`` such an update first forms ``X @ M`` as a temporary of the
# size of ``out``: at n = 2^20 that is one more tall array alive at the step's peak. Done row
# block by row block, the temporaries are a few MB. On NumPy the blocks are cache-sized (no
# loss in speed, often a gain); on other libraries (GPU) they are large, so that the number
# of kernel launches stays small.

_BLOCK_ELEMENTS_NUMPY = 1 << 18
_BLOCK_ELEMENTS_OTHER = 1 << 24


def row_blocks(x: Any) -> list[slice]:
    """Row slices covering the 2-D array ``x`` in blocks of bounded size."""
    rows, cols = int(x.shape[0]), int(x.shape[1])
    budget = _BLOCK_ELEMENTS_NUMPY if isinstance(x, np.ndarray) else _BLOCK_ELEMENTS_OTHER
    step = max(1, budget // max(1, cols))
    return [slice(i, min(i + step, rows)) for i in range(0, max(rows, 1), step)]


def single_block(x: Any) -> bool:
    """Whether ``x`` is a NumPy array that :func:`row_blocks` covers in one block."""
    return type(x) is np.ndarray and x.size <= _BLOCK_ELEMENTS_NUMPY


def add_product(out: Any, X: Any, M: Any, alpha: float | None = None) -> Any:
    """``out += alpha * (X @ M)`` in place, without a temporary of the size of ``out``.

    ``X`` is tall (rows of ``out``), ``M`` small; ``out`` must be an array this code owns.
    Where ``out`` cannot be updated in place (:func:`allows_item_assignment`), the sum is a
    new array: use the return value.
    """
    if not allows_item_assignment(out):
        prod = X @ M
        return out + (prod if alpha is None else alpha * prod)
    if _gemm_into(out, X, M, 1.0 if alpha is None else alpha):
        return out
    for b in row_blocks(out):
        block = X[b, :] @ M
        if alpha is not None:
            block *= alpha
        out[b, :] += block
    return out


def _gemm_into(out: Any, X: Any, M: Any, alpha: float) -> bool:
    """``out += alpha * (X @ M)`` by one BLAS ``gemm`` in place; False where it does not apply.

    For real C-ordered NumPy ``out`` and ``X`` of one dtype: the row-major ``out`` is the
    column-major ``out^T``, which ``gemm`` updates as ``out^T += alpha M^T X^T`` (``beta = 1``)
    in one pass over the tall arrays, with neither a temporary nor row blocks.
    """
    if not (type(out) is np.ndarray and type(X) is np.ndarray and type(M) is np.ndarray):
        return False
    dtype = out.dtype
    if dtype.char not in "fd" or X.dtype != dtype or M.dtype != dtype or out.ndim != 2:
        return False
    if not (out.flags.c_contiguous and out.flags.writeable and X.flags.c_contiguous):
        return False
    if np.may_share_memory(out, X):  # BLAS would read X while it writes out
        return False
    if 0 in out.shape or X.shape[1] == 0:
        return True
    gemm = _GEMM.get(dtype.char)
    if gemm is None:
        from scipy.linalg import blas

        gemm = _GEMM.setdefault(dtype.char, blas.get_blas_funcs("gemm", dtype=dtype))
    res = gemm(alpha, M, X.T, beta=1.0, c=out.T, trans_a=1, overwrite_c=1)
    if not np.shares_memory(res, out):  # pragma: no cover - SciPy copied the output
        out[...] = res.T
    return True


#: BLAS ``gemm`` by NumPy dtype character, looked up once.
_GEMM: dict[str, Any] = {}


def add_scaled(out: Any, alpha: float, k: Any) -> Any:
    """``out += alpha * k`` in place, without a temporary of the size of ``out``.

    Where ``out`` cannot be updated in place (:func:`allows_item_assignment`), the sum is a
    new array: use the return value.
    """
    if not allows_item_assignment(out):
        return out + alpha * k
    if len(out.shape) != 2:
        out += alpha * k
        return out
    for b in row_blocks(out):
        out[b, :] += alpha * k[b, :]
    return out


def plus_product(C: Any, A: Any, B: Any, *, beta: float = 1.0, alpha: float = 1.0) -> Any:
    """``beta C + alpha (A @ B)`` as a new array (``C``, ``A``, ``B`` are not modified).

    For 2-D PyTorch tensors of one dtype (outside autograd) this is one ``torch.addmm``: the
    product is accumulated onto the scaled ``C`` in the same kernel, where the separate
    operations would cost three calls and two temporaries (which dominate at the sizes of a
    training step's factors). Other arrays take the separate operations.
    """
    if (
        type(C).__module__ == "torch"
        and type(C) is type(A) is type(B)
        and len(C.shape) == len(A.shape) == len(B.shape) == 2
        and C.dtype == A.dtype == B.dtype
        and not (C.requires_grad or A.requires_grad or B.requires_grad)
    ):
        return sys.modules["torch"].addmm(C, A, B, beta=beta, alpha=alpha)
    prod = A @ B
    C = C if beta == 1.0 else beta * C
    if alpha == -1.0:
        return C - prod
    return C + (prod if alpha == 1.0 else alpha * prod)


def empty(like: Any) -> Any:
    """A new uninitialised array with the shape, dtype and device of ``like`` (C order)."""
    if type(like) is np.ndarray:
        return np.empty(like.shape, dtype=like.dtype)
    xp = namespace_of(like)
    return xp.empty(tuple(like.shape), dtype=like.dtype, device=device(like))


def copy(x: Any) -> Any:
    """A copy of ``x`` this code owns and may update in place (C order for NumPy)."""
    if isinstance(x, np.ndarray):
        return np.array(x, order="C", copy=True)
    xp = array_namespace(x)
    return xp.asarray(x, copy=True)


def sandwich(W: Any, op: Any, V: Any) -> Any:
    """``W^H (op @ V)`` for tall ``W``, ``V``, without a tall temporary and without copies of V.

    For a real SciPy CSR (or CSC) operator on tall NumPy arrays the product is accumulated
    block by block of rows, ``W[b]^H (op[b, :] @ V)``: the operator reads the whole row-major
    ``V`` (no copy of column slices) and only a block of the product exists at a time. A CSC
    operator is the transpose of a CSR one, ``W^H C^T V = (V^H C W)^H`` for real ``C``. Any
    other operator is applied once to the whole of ``V`` (one transient tall array).
    """
    if type(V) is np.ndarray and type(W) is np.ndarray and V.ndim == 2:
        fmt = getattr(op, "format", None) if _returns_fresh(op) else None
        real = fmt in ("csr", "csc") and not np.iscomplexobj(op.dtype.type(0))
        blocks = row_blocks(V)
        if real:
            from . import _fused

            if fmt == "csr":
                fused = _fused.sandwich(W, op, V)
            else:  # W^H C V = (V^H C^T W)^H, C^T the CSR matrix of C's arrays
                fused = _fused.sandwich(V, op, W, transposed=True)
            if fused is not None:
                return fused if fmt == "csr" else adjoint(fused)
        if real and len(blocks) > 1:
            if fmt == "csr":
                return _sandwich_csr_rows(W, op, V)
            return adjoint(_sandwich_csr_rows(V, op.T, W))
    return tall_inner(W, op @ V)


def _sandwich_csr_rows(W: np.ndarray, csr: Any, V: np.ndarray) -> np.ndarray:
    out = None
    for b in row_blocks(V):
        part = tall_inner(W[b, :], csr[b.start : b.stop] @ V)
        out = part if out is None else out + part
    return out


#: Elements of a block of rows of the wider operand in :func:`tall_inner`.
_INNER_BLOCK_ELEMENTS = 1 << 14


def tall_times(X: Any, M: Any, out: Any = None) -> Any:
    """``X @ M`` for a tall ``X`` and a small ``M``, by blocks of rows (NumPy).

    Each block of the result is written by BLAS while it stays in cache; on tall arrays this
    ran 1.1-1.35x faster than one product (2^20 x 16 or 32 times 16 columns, one thread), which
    streams the whole of ``X`` through a kernel made for square matrices. ``out`` (NumPy,
    C-ordered, the result's shape and dtype) receives the product; other libraries get one
    product.
    """
    if type(X) is np.ndarray and type(M) is np.ndarray and X.ndim == 2 and M.ndim == 2:
        rows = max(1, _TIMES_BLOCK_ELEMENTS // max(1, int(M.shape[1])))
        n = int(X.shape[0])
        if out is None:
            if n <= 2 * rows:
                return X @ M
            out = np.empty((n, int(M.shape[1])), dtype=np.result_type(X, M))
        matmul = np.matmul
        for lo in range(0, n, rows):
            matmul(X[lo : lo + rows], M, out=out[lo : lo + rows])
        return out
    if out is not None:
        raise TypeError(f"out is for NumPy arrays, got {type(X).__name__}")
    return X @ M


#: Elements of a block of rows of the result of :func:`tall_times` (128 kB in float64).
_TIMES_BLOCK_ELEMENTS = 1 << 14


def tall_inner(a: Any, b: Any) -> Any:
    """``a^H b`` for tall ``a`` and ``b`` (rows of equal number), summed by blocks of rows.

    A product of two tall-skinny arrays is a reduction over their rows, which BLAS runs far
    below its peak; on blocks of rows whose product stays in cache it ran 1.3-1.6x faster
    (65536 x 32 and 2^20 x 16, one thread). Other libraries, and NumPy arrays of a few blocks,
    get one product. No conjugated copy of ``a`` is made.
    """
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2:
        rows = max(1, _INNER_BLOCK_ELEMENTS // max(1, int(a.shape[1]), int(b.shape[1])))
        n = int(a.shape[0])
        if n > 2 * rows:
            out = _inner(a[:rows], b[:rows])
            if a.dtype.kind == "c":
                for lo in range(rows, n, rows):
                    out += _inner(a[lo : lo + rows], b[lo : lo + rows])
            else:  # the loop runs thousands of times at n ~ 1e6: no calls but the product
                matmul = np.matmul
                for lo in range(rows, n, rows):
                    out += matmul(a[lo : lo + rows].T, b[lo : lo + rows])
            return out
    return _inner(a, b)


def _inner(a: Any, b: Any) -> Any:
    """``a^H b`` for tall ``a`` and ``b`` without a conjugated copy of ``a`` (NumPy)."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype.kind == "c":
        from ._qr import _inner as inner

        return inner(a, b)
    return adjoint(a) @ b


def apply_to_product(op: Any, X: Any, W: Any) -> Any:
    """``op @ (X @ W)`` for tall ``X`` and small ``W``, holding one tall array.

    For a square ``W`` (the usual case: a rank-r state and r directions) this is
    ``(op @ X) @ W`` with the second product done in place block by block of rows: one
    operator pass over the whole row-major ``X`` and one tall allocation, the result.
    Otherwise ``X @ W`` is formed a few columns at a time (contiguous blocks, so that a sparse
    operator needs no copy of its input) and ``op`` applied to each. A lazy ``X`` (Dask), which
    allows no item assignment, gets the plain product.
    """
    rows, cols = int(X.shape[0]), int(W.shape[1])
    square = int(W.shape[0]) == cols and X.dtype == W.dtype
    if square and type(X) is np.ndarray and getattr(op, "format", None) == "csr":
        from . import _fused

        fused = _fused.apply_then(op, X, W)  # one pass, numba (the extra ``fast``)
        if fused is not None:
            return fused
    if square and allows_inplace(X) and _returns_fresh(op):
        out = op @ X
        for b in row_blocks(out):
            out[b, :] = out[b, :] @ W
        return out
    step = _column_step(X, rows, cols)
    if step >= cols or not allows_item_assignment(X):
        return op @ (X @ W)
    first = op @ (X @ W[:, :step])
    xp = array_namespace(first)
    out = xp.empty((int(first.shape[0]), cols), dtype=first.dtype, device=_array_device(first))
    out[:, :step] = first
    del first
    for j in range(step, cols, step):
        b = slice(j, min(j + step, cols))
        out[:, b] = op @ (X @ W[:, b])
    return out


def _returns_fresh(op: Any) -> bool:
    """Whether ``op @ X`` is a new array (arrays and SciPy/CuPy sparse matrices)."""
    if is_array_api_obj(op):
        return True
    module = type(op).__module__
    return module.startswith(("scipy.sparse._", "cupyx.scipy.sparse")) and hasattr(op, "nnz")


def _column_step(x: Any, rows: int, cols: int) -> int:
    """Columns per block for an operator applied to ``cols`` tall columns of ``rows`` entries.

    Within the element budget, but in at most four blocks: an operator (a sparse matrix)
    applied to a block of columns is read once per block, and many narrow blocks cost more
    time than the memory they save is worth. The temporaries (the block of ``X @ W`` or the
    copy the operator makes, and its product) stay within the budget or a quarter of the
    result's width each.
    """
    budget = _BLOCK_ELEMENTS_NUMPY if isinstance(x, np.ndarray) else _BLOCK_ELEMENTS_OTHER
    return max(1, budget // max(1, rows), -(-cols // 4))
