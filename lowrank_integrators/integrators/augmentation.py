r"""The block the rank-adaptive integrators share: augment -> Galerkin -> truncate -> release.

Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247 (augmented bases, Galerkin step
in them, truncation).

The augmented BUG, the midpoint BUG, abc-PSI and the parallel BUG each build bases ``U_hat``
(``m x k``) and ``V_hat`` (``n x l``) that contain the old ones, compute a core ``S_hat`` in
them (a Galerkin substep, a QR, or an assembled block matrix) and truncate
``U_hat S_hat V_hat^H``.

Memory invariant: at ``n ~ 1e6`` the number of tall arrays alive at the end of a step decides
whether it fits. :class:`AugmentedBases` owns the two bases; the step keeps no other reference
to them, and :meth:`AugmentedBases.form` releases ``U_hat`` once ``U_hat P`` exists and
before ``V_hat Q`` is formed. ``tests/test_memory.py`` counts the tall arrays of every method.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _backend as bk
from .. import _fused
from .._qr import canonical_phases, nearly_orthonormal_q, tall_q, tall_q_deferred, unit_scalars
from ..errors import NonFiniteError
from ..factors import LowRankMatrix
from ..protocol import StepGenerator
from ..substeps import (
    TALL_ENTRIES,
    FactoredStart,
    SubstepSolver,
    Workspace,
    carved,
    owned_result,
)
from ..truncation import TruncationRule
from .base import FactorisationLedger, KStep, Ledger, LStep, Parallel, SStep

__all__ = [
    "AugmentedBases",
    "KeptStorage",
    "RegisterHandover",
    "augment",
    "augment_projected",
    "embed_core",
    "project_out",
]


def augment(
    led: FactorisationLedger,
    X: Any,
    U0: Any,
    *,
    overwrite: bool = False,
    out: Callable[[int, int, Any], Any] | None = None,
) -> tuple[Any, Any]:
    """``U_hat = [U0 D, Q]`` orthonormal with ``range(X)`` inside, and ``D``'s diagonal.

    ``Q`` orthonormalises ``Z``, the part of ``X`` outside ``span(U0)``:
    :func:`augment_projected` of ``Z = project_out(U0, X)``, which factorises the ``k`` new
    columns alone and falls back to one thin QR of ``[U0, Z]`` only where ``Z`` is at the
    level of rounding. ``U_hat^H U0 = [D^H; 0]`` holds by construction, ``D`` diagonal with
    unimodular entries, so that the Galerkin start needs no product over tall arrays (see
    :func:`embed_core`). Lazy arrays take the one QR of ``[U0, Z]`` over their row chunks at
    once (projecting first would evaluate ``X`` twice; see
    :func:`~lowrank_integrators._backend.qr_augment`). ``X`` is not modified unless
    ``overwrite`` is true: then a NumPy ``X`` holds ``Z`` and ``Q`` in turn (no tall array
    besides ``U_hat`` is allocated) and is garbage afterwards; pass it for a result no one
    else holds (:func:`~lowrank_integrators.substeps.owned_result`). ``out``: see
    :func:`augment_projected`.

    Returns
    -------
    U_hat : array, shape (m, min(m, r + k))
    m : array, shape (r,)
        The diagonal of ``U_hat^H U0 = [diag(m); 0]`` (entries of modulus one).
    """
    xp = bk.namespace(U0, X)
    if type(X) is not np.ndarray and bk.is_lazy(X):
        return _augment_by_one_qr(led, X, U0, xp)
    return augment_projected(led, project_out(U0, X, overwrite=overwrite), U0, out=out)


def project_out(U0: Any, X: Any, *, check: bool = True, overwrite: bool = False) -> Any:
    """``Z = X - U0 (U0^H X)``, projected twice (``X`` is not modified unless ``overwrite``).

    Block classical Gram-Schmidt with reorthogonalisation: for orthonormal ``U0`` the columns
    of ``Z`` are orthogonal to ``U0`` to working precision relative to their own size, and
    ``span([U0, Z]) = span([U0, X])``. NumPy arrays are updated in place (no tall temporary
    besides ``Z``); with ``overwrite=True`` a C-ordered NumPy ``X`` of the result's dtype
    becomes ``Z`` itself (no new tall array; the caller drops ``X``).

    Raises :class:`~lowrank_integrators.errors.NonFiniteError` when ``X`` or ``U0`` holds NaN
    or infinity (checked on the small products of the projection, which they reach). With
    ``check=False`` arrays of other libraries than NumPy are not checked here (a value read
    back to the host): for a caller that passes ``Z`` to :func:`augment_projected`, which
    reads a product of it back and reports a non-finite one.
    """
    if int(U0.shape[1]) == 0:
        _require_finite_products(X, U0, X)
        return bk.copy(X)
    if type(U0) is np.ndarray and type(X) is np.ndarray:
        return _project_out_numpy(U0, X, overwrite)
    U0h = bk.adjoint(U0)
    Z = bk.plus_product(X, U0, U0h @ X, alpha=-1.0)
    C = U0h @ Z
    if check:  # as on NumPy: non-finite entries and overflows reach the second products
        _require_finite_products(C, U0, Z)
    return bk.plus_product(Z, U0, C, alpha=-1.0)


def _project_out_numpy(U0: np.ndarray, X: np.ndarray, overwrite: bool) -> np.ndarray:
    """:func:`project_out` of NumPy arrays, in place in ``Z``.

    Non-finite entries of ``X`` or ``U0`` and overflows reach the second products
    ``U0^H Z`` (a NaN or an infinity of ``U0^H X`` spreads into ``Z`` in the rows where ``U0``
    does not vanish, which the second products sum): they are checked there, once.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # reported below, not warned
        C = bk.tall_inner(U0, X)  # by blocks of rows: a tall reduction
        if overwrite and X.flags.c_contiguous and X.dtype == np.result_type(U0, X):
            Z = X
        else:
            Z = np.array(X, dtype=np.result_type(U0, X), order="C")
        C = _subtract_and_project(Z, U0, C)
    _require_finite_products(C, U0, Z)
    return _subtract_products(Z, U0, C, True)


def _subtract_and_project(Z: np.ndarray, U0: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``Z -= U0 C`` in place, then ``U0^H Z``: one pass over ``Z`` and ``U0`` by row blocks.

    Each block of ``Z`` is updated and multiplied while it and its block of ``U0`` are in the
    cache (blocks of ``_FUSED_BLOCK_BYTES``): the reorthogonalisation's second product does not
    read the two tall arrays again. Measured 25-40 % faster than the two whole-array products
    at ``n = 2^16 .. 2^20`` and ``r + k = 32 .. 64`` columns, 13 % at 128 (one BLAS thread);
    larger blocks fall out of the L2 cache and lose the gain. Small arrays take the
    whole-array products.
    """
    if Z.size <= _SMALL:
        _subtract_products(Z, U0, C, True)
        return (U0.T if U0.dtype.kind != "c" else U0.conj().T) @ Z
    r, k = int(U0.shape[1]), int(Z.shape[1])
    rows = max(64, _FUSED_BLOCK_BYTES // (Z.itemsize * (r + k)))
    out = np.zeros((r, k), dtype=np.result_type(U0, Z))
    C = np.asarray(C, dtype=out.dtype)
    conj = U0.dtype.kind == "c"
    for start in range(0, int(Z.shape[0]), rows):
        z = Z[start : start + rows]
        u = U0[start : start + rows]
        z -= u @ C
        out += (u.conj().T if conj else u.T) @ z
    return out


def augment_projected(
    led: FactorisationLedger,
    Z: Any,
    U0: Any,
    *,
    release: Callable[[np.ndarray], None] | None = None,
    out: Callable[[int, int, Any], Any] | None = None,
) -> tuple[Any, Any]:
    """``U_hat = [U0 D, Q]`` for ``Z`` from :func:`project_out` (``Z`` is overwritten).

    The result of :func:`augment` for ``Z = project_out(U0, X)``, by a QR of the new columns
    alone.

    ``Z`` is orthonormalised by the robust thin QR (CholeskyQR2, shifted CholeskyQR3,
    Householder; see :mod:`lowrank_integrators._qr`) in its own storage, and
    ``U_hat = [U0, Q]`` (``D = I``). One product ``U0^H Q`` checks that the new columns are
    orthogonal to ``U0`` to working precision; where they are not (``Z`` near the level of
    rounding, such as ``X = 0`` or ``X`` inside ``span(U0)``), ``Q`` is projected once more
    and factored again (``k`` columns), and only where that still fails, one thin QR of
    ``[U0, Q]`` follows (see :func:`~lowrank_integrators._backend.qr_augment`), whose leading
    block is ``U0 D`` up to rounding, ``D`` diagonal with unimodular entries, and is replaced
    by ``U0 D`` itself. Either way ``U_hat^H U0 = [D^H; 0]`` holds by construction and the
    Galerkin start needs no product over tall arrays (see :func:`embed_core`). One QR is
    counted. A ``Z`` holding NaN or infinity raises
    :class:`~lowrank_integrators.errors.NonFiniteError` (found on ``U0^H Q``, whose largest
    entry the check reads back); for real arrays of other libraries than NumPy that take the
    one-QR path nothing is read back, and the NaN reaches ``U_hat``: the rank-adaptive steps
    report it at the SVD of their core, before they return.

    ``release``, when given, receives the NumPy array ``Q`` of the new columns once ``U_hat``
    holds a copy of them, no longer referenced here: its storage may serve as a work array of
    the same shape (the tall arrays of a step at ``n ~ 1e6`` cost page faults when fresh).
    ``out``, when given, is asked ``out(rows, columns, dtype)`` for the storage of a NumPy
    ``U_hat`` built from ``U0`` and ``Q``: a writeable C-ordered array of that shape and dtype
    that does not overlap ``Q`` (such as one a step keeps between its steps), or ``None`` for
    a new array. It either does not overlap ``U0`` either, or ``U0`` holds the last entries of
    its storage: ``U_hat`` then grows over ``U0`` (see
    :func:`~lowrank_integrators._fused.beside_over`), whose entries are garbage afterwards.

    Returns
    -------
    U_hat : array, shape (m, min(m, r + k))
    m : array, shape (r,)
        The diagonal of ``U_hat^H U0 = [diag(m); 0]`` (entries of modulus one).
    """
    rows, r, k = int(U0.shape[0]), int(U0.shape[1]), int(Z.shape[1])
    numpy = type(U0) is np.ndarray and type(Z) is np.ndarray and U0.dtype == Z.dtype
    xp = np if numpy else bk.namespace(U0, Z)
    if r == 0 or k == 0 or r + k > rows:
        return _augment_by_one_qr(led, Z, U0, xp, in_step=True)
    if numpy:
        Q = tall_q(Z, overwrite_x=True)  # in the storage of Z
        eps, C, size = _cross(U0, Q, numpy, xp)
    else:
        # the QR's test (where it has one left) is read with max |U0^H Q|: one wait for the
        # device; Z is kept for the rare case that fails it
        Q, ok = tall_q_deferred(Z)
        eps, C, size, passed = _cross(U0, Q, numpy, xp, ok)
        if not passed:
            Q = tall_q(Z)
            eps, C, size = _cross(U0, Q, numpy, xp)
    Z = None
    if int(Q.shape[1]) != k:
        return _augment_by_one_qr(led, Q, U0, xp, in_step=True)
    # Orthogonality of the new columns to U0. The QR's rounding, amplified by the condition
    # of Z, leaves U0^H Q = C of size eps kappa(Z); one more projection Q - U0 C leaves
    # ||U0^H Q|| ~ eps ||C|| and ||Q^H Q - I|| ~ ||C||^2, both at working precision when
    # ||C||^2 is. Larger C (Z near the level of rounding, where the QR's trailing columns are
    # directions of its rounding): the projected Q - U0 C keeps singular values
    # sqrt(1 - sigma_i(C)^2), so one more QR of these k columns makes them orthonormal and
    # orthogonal to U0 to about eps ||C|| / sqrt(1 - ||C||^2). Only where that still fails
    # (a column of Q nearly inside span(U0)), the one-QR path of r + k columns.
    if not size <= _CROSS_TOLERANCE * eps:
        if not math.isfinite(size):
            if not numpy:
                _require_finite_products(C, U0, Q)  # names a non-finite input
            return _augment_by_one_qr(led, Q, U0, xp, in_step=True, inner=C)
        Q = _subtract_products(Q, U0, C, numpy)
        if not size * size * k <= _CROSS_TOLERANCE * eps:
            # Q - U0 C is orthonormal up to ||C||^2 and orthogonal to U0 up to rounding: one
            # Cholesky pass makes it orthonormal and keeps it orthogonal to U0 (the rounding of
            # the projection, relative to ||Q|| = 1, times R^{-1} ~ I), as the single projection
            # above does when ||C||^2 is at the level of rounding.
            # (a cheap pre-test on max |C_ij|; the pass checks ||Q^H Q - I||_F <= 1/2 itself)
            refined = nearly_orthonormal_q(Q, overwrite_x=True) if size * size * k <= 0.25 else None
            if refined is not None:
                Q = refined
            else:
                Q = tall_q(Q, overwrite_x=True)
                if int(Q.shape[1]) != k:
                    return _augment_by_one_qr(led, Q, U0, xp, in_step=True)
                _, C, size = _cross(U0, Q, numpy, xp)
                if not size * size * k <= _CROSS_TOLERANCE * eps:
                    return _augment_by_one_qr(led, Q, U0, xp, in_step=True, inner=C)
                if not size <= _CROSS_TOLERANCE * eps:
                    Q = _subtract_products(Q, U0, C, numpy)
    led.info.n_qr += 1
    # The leading block U0 D with the QR's sign convention ((U0 D)_jj real and <= 0): the
    # augmented basis, like the new columns, does not depend on the signs of the columns of U0.
    d = canonical_phases(U0.diagonal() if numpy else xp.linalg.diagonal(U0))  # r <= rows
    if numpy:
        target = out(rows, r + k, U0.dtype) if out is not None else None
        over = target is not None and np.may_share_memory(target, U0)
        if over:  # U0 is the end of target's storage, read as target is written
            U_hat = _fused.beside_over(U0, d.astype(U0.dtype, copy=False), Q, target)
        else:
            U_hat = _fused.beside(U0, d, Q, target) if Q.size > _SMALL else None
        if U_hat is None:
            U_hat = np.empty((rows, r + k), dtype=U0.dtype) if target is None else target
            np.multiply(U0, d, out=U_hat[:, :r])
            U_hat[:, r:] = Q
        target = None
        if release is not None:
            release(Q)
        Q = None
        if d.dtype.kind == "c":
            return U_hat, d.conj()
        if not over:  # U0 no longer holds its entries
            _remember_leading(U_hat, U0, d)
        return U_hat, d
    return _beside_other(U0, Q, d, xp)


def _beside_other(U0: Any, Q: Any, d: Any, xp: Any) -> tuple[Any, Any]:
    """``([U0 d, Q], m)`` for arrays of other libraries than NumPy (``m = conj(d)``)."""
    U_hat = xp.concat([U0 * d, Q], axis=1)
    if bk.is_complex(d):
        return U_hat, xp.conj(d)
    _remember_leading(U_hat, U0, d)
    return U_hat, d


def augment_projected_deferred(
    led: FactorisationLedger, Z: Any, U0: Any
) -> tuple[Any, Any, Any] | None:
    """:func:`augment_projected` with its tests left on the device: ``(U_hat, m, good)``.

    For PyTorch tensors on an accelerator, where every number read back makes the host wait
    for the device (see :func:`~lowrank_integrators._qr.tall_q_deferred`): the QR, the
    product ``C = U0^H Q`` and the second projection ``Q - U0 C`` where
    :func:`augment_projected` takes it (applied with ``C`` times zero where it does not, which
    leaves ``Q`` as it is) run without reading anything back. ``good``, a 0-d boolean tensor,
    is true exactly where :func:`augment_projected` returns this basis: the QR's tests passed
    and ``Q - U0 C`` needs no further pass (``||C||^2 k`` at the level of rounding). The
    caller reads it with the numbers it reads anyway (the rank-adaptive BUG: with the singular
    values of its core) and takes :func:`augment_projected` on ``Z`` (kept intact) where it is
    false. ``None`` for other input: the caller takes :func:`augment_projected` at once.
    """
    rows, r, k = int(U0.shape[0]), int(U0.shape[1]), int(Z.shape[1])
    if (
        not bk.defers_checks(Z)
        or type(U0) is not type(Z)
        or U0.dtype != Z.dtype
        or r == 0
        or k == 0
        or r + k > rows
    ):
        return None
    xp = bk.namespace(U0, Z)
    Q, ok = tall_q_deferred(Z)
    if int(Q.shape[1]) != k:  # pragma: no cover - k <= rows columns come back
        return None
    eps, C, size = _cross_unread(U0, Q, xp)
    far = xp.astype(size > _CROSS_TOLERANCE * eps, C.dtype)
    Q = _subtract_products(Q, U0, C * far, False)
    good = size * size * k <= _CROSS_TOLERANCE * eps
    if ok is not None:
        good = good & ok
    led.info.n_qr += 1
    d = canonical_phases(xp.linalg.diagonal(U0))
    U_hat, m = _beside_other(U0, Q, d, xp)
    return U_hat, m, good


#: ``_cross`` called without a QR test to read.
_NO_TEST: Any = object()


def _cross(U0: Any, Q: Any, numpy: bool, xp: Any, ok: Any = _NO_TEST) -> Any:
    """``(eps, C, max |C|)`` with ``C = U0^H Q``, the largest entry read on the host.

    With ``ok`` (the unread test of :func:`~lowrank_integrators._qr.tall_q_deferred`, or
    ``None`` where it had none) the result is ``(eps, C, max |C|, passed)``, the two numbers
    read back at once.
    """
    if numpy:
        eps = _EPS.get(U0.dtype) or _EPS.setdefault(U0.dtype, float(np.finfo(U0.dtype).eps))
        C = bk.tall_inner(U0, Q)  # by blocks of rows: a tall reduction
        return eps, C, float(np.maximum.reduce(np.abs(C), axis=None))
    eps, C, size = _cross_unread(U0, Q, xp)
    if ok is _NO_TEST:
        return eps, C, float(size)  # one number to the host
    if ok is None:
        return eps, C, float(size), True
    both = bk.to_host(xp.stack([xp.astype(ok, size.dtype), size]))
    return eps, C, float(both[1]), bool(both[0])


def _cross_unread(U0: Any, Q: Any, xp: Any) -> tuple[float, Any, Any]:
    """``(eps, C, max |C|)`` for arrays of other libraries than NumPy, nothing read back."""
    key = (type(U0), U0.dtype)  # dtypes of different libraries are never compared
    eps = _EPS_OTHER.get(key) or _EPS_OTHER.setdefault(key, float(xp.finfo(U0.dtype).eps))
    C = bk.adjoint(U0) @ Q
    return eps, C, xp.max(xp.abs(C))


def _subtract_products(Q: Any, U0: Any, C: Any, numpy: bool) -> Any:
    """``Q - U0 C``: NumPy arrays in place (no tall temporary)."""
    if numpy:
        if Q.size <= _SMALL:
            Q -= U0 @ C
            return Q
        return bk.add_product(Q, U0, C, -1.0)
    return bk.plus_product(Q, U0, C, alpha=-1.0)


def _real_numpy(x: Any) -> bool:
    """Whether ``x`` is a real NumPy array (whose adjoint is its transpose)."""
    return type(x) is np.ndarray and x.dtype.kind != "c"


#: Arrays with at most this many entries are projected whole rather than by row blocks.
_SMALL = 1 << 16

#: Bytes of the row blocks of ``Z`` and ``U0`` that :func:`_subtract_and_project` takes at once.
_FUSED_BLOCK_BYTES = 1 << 17

#: Machine epsilon by NumPy dtype, looked up once.
_EPS: dict[Any, float] = {}

#: Machine epsilon by array type and dtype of other libraries, looked up once.
_EPS_OTHER: dict[tuple[Any, Any], float] = {}

#: Largest entry of ``U0^H Q`` (in units of the dtype's epsilon) accepted for the new columns:
#: leaves ``U_hat`` orthonormal to ``4e-6`` in float32 and ``8e-15`` in float64.
_CROSS_TOLERANCE = 32.0


def _require_finite_products(C: Any, U0: Any, X: Any) -> None:
    """The finiteness checks of a QR input, run on the tall arrays when ``C`` is not finite."""
    if bk.all_finite(C):
        return
    bk.require_finite(U0, "an orthonormal basis to be augmented", now=True)
    bk.require_finite(X, "a block of a matrix to be factorised by QR", now=True)
    raise NonFiniteError(f"an overflow in the products of a basis augmentation ({C.shape})")


def _augment_by_one_qr(
    led: FactorisationLedger,
    X: Any,
    U0: Any,
    xp: Any,
    *,
    in_step: bool = False,
    inner: Any = None,
) -> tuple[Any, Any]:
    """``[U0 D, Q]`` from one thin QR of ``[U0, Z]`` (the robust path of :func:`augment`).

    ``in_step``: called within a step whose core is factorised by SVD, which reports
    non-finite input, so that real arrays of other libraries than NumPy need no check here.
    ``inner``: ``U0^H X`` where the caller formed it (``bk.adjoint(U0) @ X``), for the first
    projection.
    """
    if in_step and bk.allows_inplace(U0) and type(U0) is not np.ndarray and type(X) is type(U0):
        if not (bk.is_complex(U0) or bk.is_complex(X)):
            return _augment_by_one_qr_real(led, X, U0, xp, inner)
    U_hat = led.qr_augment(U0, X)[0]
    r = int(U0.shape[1])
    lead = U_hat[:, :r]
    complex_ = bk.is_complex(U0) or bk.is_complex(lead)
    if type(lead) is np.ndarray:  # no tall temporary
        c = np.einsum("ij,ij->j", lead.conj() if complex_ else lead, U0)
    else:
        # the r signs are decided on the host (one small compute for lazy arrays)
        c = bk.core_array(xp.sum((xp.conj(lead) if complex_ else lead) * U0, axis=0))
        xp = bk.namespace(c)
    if complex_:
        size = xp.abs(c)
        m = xp.where(size > 0, c / xp.where(size > 0, size, 1), xp.ones_like(c))
        signs = xp.conj(m)
    else:
        one = xp.ones_like(c)
        m = signs = xp.where(c < 0, -one, one)
    if bk.allows_inplace(U_hat):
        U_hat[:, :r] = U0
        U_hat[:, :r] *= signs
        if type(U_hat) is not np.ndarray and not complex_:
            _remember_leading(U_hat, U0, m)
        return U_hat, m
    tall = bk.namespace(U_hat)
    return tall.concat([U0 * signs, U_hat[:, r:]], axis=1), m


def _augment_by_one_qr_real(
    led: FactorisationLedger, X: Any, U0: Any, xp: Any, inner: Any = None
) -> tuple[Any, Any]:
    """:func:`_augment_by_one_qr` of real arrays of other libraries than NumPy (GPU tensors).

    The same operations as :meth:`FactorisationLedger.qr_augment` and the sign fix, without
    reading a value back and without forming ``R``. Their Householder QR returns for any input;
    NaN or infinity in ``X`` or ``U0`` reaches the basis, hence the step's core, whose SVD
    reports it (:class:`~lowrank_integrators.errors.NonFiniteError`) before the step returns.
    """
    led.info.n_qr += 1
    r = int(U0.shape[1])
    Z = X
    if r > 0:
        U0h = bk.adjoint(U0)
        Z = Z - U0 @ (U0h @ Z if inner is None else inner)
        Z = Z - U0 @ (U0h @ Z)
    Q = tall_q(xp.concat([U0, Z], axis=1), overwrite_x=True)
    Z = None
    c = xp.sum(Q[:, :r] * U0, axis=0)
    one, two = unit_scalars(c)
    m = one - two * xp.astype(c < 0, c.dtype)  # exactly -1 or 1
    Q[:, :r] = U0 * m  # in the factorisation's own array (and memory layout)
    _remember_leading(Q, U0, m)
    return Q, m


def leading_signs(W: Any, W0: Any) -> Any | None:
    """Signs ``d`` with ``W[:, :r] == W0 * d`` exactly, or ``None`` (real arrays).

    Recognises the bases this module builds, ``[U0 D, Q]`` (and ``U0 D`` alone), from the
    start basis ``W0`` (``r`` columns): a caller holding products with ``W0`` then forms only
    the products with the new columns. Complex bases, other shapes and any other leading block
    give ``None``. A basis this module built from ``W0`` (and that is still alive) is answered
    from a record of its construction; any other ``W`` is checked entry by entry.
    """
    built = _BUILT.get(id(W))
    if built is not None and built[0]() is W and built[1]() is W0:
        # built here from W0: no check (which would read a value back, or cost on NumPy
        # about as much as the small products of a training step it spares)
        return built[2]
    if type(W) is np.ndarray and type(W0) is np.ndarray:
        return _leading_signs_numpy(W, W0)
    r = int(W0.shape[1])
    if int(W.shape[0]) != int(W0.shape[0]) or int(W.shape[1]) < r:
        return None
    if bk.is_complex(W) or bk.is_complex(W0):
        return None
    lead = W[:, :r]
    xp = bk.namespace(lead, W0)
    one = xp.ones((), dtype=W0.dtype, device=bk.device(W0))
    d = xp.where(xp.sum(lead * W0, axis=0) < 0, -one, one)
    return d if bool(xp.all(lead == W0 * d)) else None


#: The real augmented bases built here, by ``id``: weak references to the basis and to its
#: start basis, and the signs of the leading block. A bounded record of the last few bases, so
#: that :func:`leading_signs` answers for them without a check (the library never writes into
#: a basis after building it).
_BUILT: dict[int, tuple[Any, Any, Any]] = {}
_BUILT_KEEP = 64
_BUILT_LOCK = threading.Lock()


def _remember_leading(W: Any, W0: Any, d: Any) -> None:
    """Record that ``W[:, :r] == W0 * d`` holds exactly (``W`` built here, real)."""
    try:
        entry = (weakref.ref(W), weakref.ref(W0), d)
    except TypeError:  # arrays without weak references are checked instead
        return
    with _BUILT_LOCK:
        while len(_BUILT) >= _BUILT_KEEP:
            del _BUILT[next(iter(_BUILT))]
        _BUILT[id(W)] = entry


def _leading_signs_numpy(W: np.ndarray, W0: np.ndarray) -> np.ndarray | None:
    """:func:`leading_signs` of NumPy arrays."""
    m, r = W0.shape
    if W.shape[0] != m or W.shape[1] < r or W.dtype.kind != "f" or W0.dtype.kind != "f":
        return None
    lead = W[:, :r]
    minus, plus = _UNITS.get(W0.dtype) or _UNITS.setdefault(
        W0.dtype, (W0.dtype.type(-1), W0.dtype.type(1))
    )
    if m > 0:
        # The signs read off the first row (right wherever W0 does not vanish there), checked
        # on every entry; only when that fails, the signs of the columns' inner products.
        d = np.where(lead[0] == W0[0], plus, minus)
        if _equal_by_blocks(lead, W0, d):
            return d
    d = np.where(np.einsum("ij,ij->j", lead, W0) < 0, minus, plus)
    return d if _equal_by_blocks(lead, W0, d) else None


def _equal_by_blocks(lead: np.ndarray, W0: np.ndarray, d: np.ndarray) -> bool:
    """``lead == W0 * d`` entry by entry, row block by row block (no tall temporary)."""
    return all(np.logical_and.reduce(lead[b] == W0[b] * d, axis=None) for b in bk.row_blocks(W0))


#: ``(-1, 1)`` as scalars of each NumPy dtype.
_UNITS: dict[Any, tuple[Any, Any]] = {}


def embed_core(S0: Any, rows: int, cols: int, m_left: Any, m_right: Any) -> Any:
    """``[diag(m_left); 0] S0 [diag(m_right); 0]^H``: ``S0`` (r x s) as a leading block.

    For bases from :func:`augment` (``U_hat^H U0 = [diag(m_left); 0]``, likewise for ``V``)
    this is ``U_hat^H (U0 S0 V0^H) V_hat`` exactly.
    """
    r, s = int(S0.shape[0]), int(S0.shape[1])
    if type(S0) is np.ndarray:
        out = np.zeros((max(rows, r), max(cols, s)), dtype=np.result_type(S0, m_left, m_right))
        right = m_right.conj() if m_right.dtype.kind == "c" else m_right
        np.multiply(m_left[:, None] * S0, right[None, :], out=out[:r, :s])
        return out
    xp = bk.namespace(S0)
    right = xp.conj(m_right) if bk.is_complex(m_right) else m_right
    S0 = m_left[:, None] * S0 * right  # right scales the columns
    dev = bk.device(S0)
    if bk.allows_item_assignment(S0) and (rows > r or cols > s):
        out = xp.zeros((max(rows, r), max(cols, s)), dtype=S0.dtype, device=dev)
        out[:r, :s] = S0
        return out
    if cols > s:
        S0 = xp.concat([S0, xp.zeros((r, cols - s), dtype=S0.dtype, device=dev)], axis=1)
    if rows > r:
        S0 = xp.concat([S0, xp.zeros((rows - r, cols), dtype=S0.dtype, device=dev)], axis=0)
    return S0


def _reusable(X: np.ndarray, like: Any) -> bool:
    """Whether ``X`` may serve as a work array in place of one shaped like ``like``."""
    return (
        type(like) is np.ndarray
        and X.shape == like.shape
        and X.dtype == like.dtype
        and X.flags.c_contiguous
        and X.flags.writeable
    )


class RegisterHandover:
    """Tall NumPy work arrays handed from a step's K-substep to its L-substep.

    The K- and L-substeps of the rank-adaptive and parallel BUG steps are independent and
    alike: two RK4 substeps of the same size when the problem is square. A
    :class:`~lowrank_integrators.substeps.Workspace` lent to both keeps what the K-substep
    leaves dead (its start and, where the fields write into spare arrays, its last stage but
    one) and the storage of its result once the augmented basis holds a copy
    (:meth:`give`); the L-substep takes these three as its registers and allocates no tall
    array. The workspace is cleared when the L-substep ends (:meth:`l_substep_done`), before
    the second augmented basis exists: the step's peak (the first augmented basis and the
    L-substep's three registers) stays what it was. At ``n ~ 1e6`` this saves three fresh
    tall arrays per step, each of which costs page faults and the zeroing of its pages.
    Arrays of other libraries are not kept.

    Parameters
    ----------
    U0, V0 : array
        The bases of the step's start.
    registers : list of numpy.ndarray, optional
        Work arrays for the K-substep (at most three, shaped like ``U0``), e.g. parts of an
        array the step keeps between its steps: then the K-substep allocates none either.
    """

    def __init__(self, U0: Any, V0: Any, registers: list[np.ndarray] | None = None) -> None:
        # The K-substep's arrays fit the L-substep's only for a square problem; otherwise
        # they would sit unused beside it.
        alike = (
            type(U0) is np.ndarray
            and type(V0) is np.ndarray
            and U0.shape == V0.shape
            and U0.dtype == V0.dtype
        )
        self.work = Workspace(keep=3) if alike else None
        self._l_done = False
        if self.work is not None and registers:
            for x in registers[: self.work.keep]:
                if _reusable(x, U0):
                    self.work.give(x)

    def lend(self, X0: Any) -> Any:
        """``X0`` (a substep's start) with the workspace, if it is a factored start."""
        if self.work is not None and isinstance(X0, FactoredStart):
            X0.workspace = self.work
        return X0

    def give(self, X: Any, like: Any) -> None:
        """Keep the dead K-side array ``X`` (no longer referenced by the caller) for the
        L-substep, if it is shaped like ``like`` (the K-substep's result)."""
        # Only while the L-substep may still take it (under a driver that runs the two
        # substeps side by side, the L-substep may be done already), and only where the
        # K-substep left two registers: its fields wrote their results into spare arrays,
        # as the L-substep's will, which then takes all three. Fields that allocate their
        # own results would leave it idle beside the L-substep, at the step's peak.
        work = self.work
        if (
            work is not None
            and not self._l_done
            and type(X) is np.ndarray
            and len(work) >= 2
            and _reusable(X, like)
        ):
            work.give(X)

    def l_substep_done(self) -> None:
        """The L-substep has returned: its dead registers are not kept."""
        self._l_done = True
        self.close()

    def close(self) -> None:
        """Release what is kept."""
        if self.work is not None:
            self.work.clear()


class KeptStorage:
    """One tall NumPy array that a step method keeps between its steps for one of its bases.

    At ``n ~ 1e6`` every fresh tall array costs the zeroing of its pages (see
    ``docs/performance.md``, "Fresh memory at large n"). A step whose basis has a fixed shape
    takes this array from its method at the start (:meth:`take`; ``None`` where it is not
    worth keeping), may lend parts of it as work arrays while it lies idle (:meth:`carve`),
    writes the basis into it (:meth:`whole`, or :meth:`around` a part that holds the basis it
    extends) and gives it back at the end (:meth:`close`) if nothing refers to it any more: an
    array that anyone still holds (a NumPy view holds its base, which the reference count
    shows) is never written over, and is then not kept. The method keeps at most ``keep`` of
    them (a :class:`~lowrank_integrators.substeps.Workspace`, empty when copied or
    unpickled).
    """

    def __init__(self, block: np.ndarray, pool: Workspace) -> None:
        self.block: np.ndarray | None = block
        self._pool = pool

    @classmethod
    def take(
        cls, owner: Any, like: Any, rows: int, columns: int, *, keep: int = 1
    ) -> KeptStorage | None:
        """The storage of ``owner`` (a step method) for a ``rows x columns`` array of the dtype
        of ``like``; ``None`` unless ``like`` is a floating NumPy array and the array tall.
        ``keep``: how many such arrays the method keeps (one per call of :meth:`take` in a
        step)."""
        if type(like) is not np.ndarray or like.dtype.kind not in "fc":
            return None
        if rows * columns < TALL_ENTRIES:
            return None
        pool = owner.__dict__.get("_kept_storage")
        if pool is None or pool.keep != keep:
            pool = owner.__dict__["_kept_storage"] = Workspace(keep=keep)
        block = pool.take((rows, columns), like.dtype)
        # the local name and the argument: a third reference is a view someone still holds
        if block is None or sys.getrefcount(block) > 2:
            block = np.empty((rows, columns), dtype=like.dtype)
        return cls(block, pool)

    def whole(self, rows: int, columns: int, dtype: Any) -> np.ndarray | None:
        """The array, if it has this shape and dtype and nothing refers to it."""
        # before a local name refers to it: the attribute and the argument
        if self.block is None or sys.getrefcount(self.block) != 2:
            return None
        b = self.block
        if b.shape != (rows, columns) or b.dtype != dtype:
            return None
        return b

    def carve(self, *shapes: tuple[int, int]) -> list[np.ndarray] | None:
        """C-ordered arrays of these shapes, side by side in the array's storage.

        For work arrays of a part of the step in which the array itself lies idle: they must
        all be released before :meth:`whole` or :meth:`around` is asked (each holds the
        array, which the reference count shows). ``None`` if they do not fit or anyone refers
        to the array.
        """
        # before a local name refers to it: the attribute and the argument
        if self.block is None or sys.getrefcount(self.block) != 2:
            return None
        if sum(r * c for r, c in shapes) > self.block.size:
            return None
        flat = self.block.reshape(-1)
        parts, start = [], 0
        for r, c in shapes:
            parts.append(flat[start : start + r * c].reshape(r, c))
            start += r * c
        del flat
        carved.add(parts)  # owned by the substeps while no one else holds a view of the array
        return parts

    def around(self, part: np.ndarray, rows: int, columns: int, dtype: Any) -> np.ndarray | None:
        """The array, to be written over ``part`` (carved from it) by :func:`augment`.

        ``part`` must be the only thing that still refers to the array, and the caller's
        local name and the argument the only references to ``part``: its entries are read
        as the array is written (see :func:`lowrank_integrators._fused.expand`) and are
        garbage afterwards. ``None`` otherwise, or where the shape or dtype differ.
        """
        # part: the caller's name and the argument; the array: the attribute, the argument
        # and part's base
        if self.block is None or sys.getrefcount(part) != 3 or part.base is not self.block:
            return None
        if sys.getrefcount(self.block) != 3:
            return None
        b = self.block
        if b.shape != (rows, columns) or b.dtype != dtype:
            return None
        return b

    def close(self) -> None:
        """Give the array back to the method, if nothing refers to it any more."""
        b, self.block = self.block, None
        if b is not None and sys.getrefcount(b) == 2:
            self._pool.give(b)


class AugmentedBases:
    """The augmented bases of one step, from augmentation to the truncated result.

    Parameters
    ----------
    U, V : array, optional
        ``U_hat`` and ``V_hat``; may be set later (``bases.V = ...``).
    """

    def __init__(self, U: Any = None, V: Any = None) -> None:
        self.U = U
        self.V = V
        #: A dead tall NumPy array kept for ``U_hat P`` (see :meth:`augment_by_substeps`).
        self.spare: np.ndarray | None = None
        #: Augmentations whose tests are still on the device (see :meth:`augment_by_substeps`):
        #: ``(side, good, Z, W0)``.
        self.pending: list[tuple[str, Any, Any, Any]] = []
        self._start: tuple[Any, dict[str, Any]] | None = None

    def augment_by_substeps(
        self,
        method: Any,
        led: Ledger,
        Y0: LowRankMatrix,
        t0: float,
        t1: float,
        *,
        keep_spare: bool = False,
        defer: bool = False,
        registers: list[np.ndarray] | None = None,
        out_U: Callable[[int, int, Any], Any] | None = None,
        out_V: Callable[[int, int, Any], Any] | None = None,
    ) -> StepGenerator:
        """The augmented K- and L-steps of the rank-adaptive BUG from ``Y0`` over ``[t0, t1]``.

        The two substeps are independent (one :class:`~lowrank_integrators.protocol.Parallel`
        request); each tall result is consumed by its augmentation at once. Sets ``U`` and
        ``V`` to ``[U0 D, *]`` and ``[V0 E, *]`` and returns ``(S_start, D, E)``: the Galerkin
        start ``D^H S0 E`` padded with zeros, which is ``Y0`` in the augmented bases.

        Tall NumPy work arrays pass from the K-step to the L-step (:class:`RegisterHandover`):
        the K-substep's dead registers and the storage of the new columns of ``U_hat`` become
        the L-substep's registers. ``registers``: arrays shaped like ``U0`` (parts of an array
        the step keeps, :meth:`KeptStorage.carve`) for the K-substep's registers, handed over
        in the same way; ``out_U``, ``out_V``: storage providers for the two bases (see
        :func:`augment_projected`). With ``keep_spare``, the storage of the new columns of
        ``V_hat`` is kept as :attr:`spare`, for :meth:`form` to write ``U_hat P`` there (for
        a step that truncates these bases next, whose Galerkin substep holds no tall array
        beside them).

        With ``defer``, bases on an accelerator (PyTorch) whose tests can stay there are built by
        :func:`augment_projected_deferred` and listed in :attr:`pending`: the step must then
        finish through :meth:`galerkin_and_truncate`, which reads their tests with the
        singular values of the core.
        """
        U0, S0, V0 = Y0
        lead: dict[str, Any] = {}
        self._start = (S0, lead)
        defer = defer and type(U0) is not np.ndarray  # NumPy reads its tests without a wait
        handover = RegisterHandover(U0, V0, registers)
        registers = None

        def to_spare(Q: np.ndarray) -> None:
            if keep_spare and _reusable(Q, V0):
                self.spare = Q

        # K1 (L1) is released once its part outside span(U0) exists: the bases are formed
        # without it.
        def k_step() -> StepGenerator:
            K0 = handover.lend(method.start(U0, S0))
            K1 = yield from method.substep.solve(KStep(led, V0, at=Y0), t0, t1, K0)
            if type(K1) is not np.ndarray and bk.is_lazy(K1):
                # one QR of [U0, K1] over the row chunks: projecting out first would
                # evaluate the lazy K-step twice
                self.U, lead["U"] = augment(led, K1, U0)
                return
            refs = sys.getrefcount(K1)  # before any call holds it
            # augment_projected reports a non-finite Z
            Z = project_out(U0, K1, check=False, overwrite=owned_result(K1, refs))
            K0 = K1 = None
            deferred = augment_projected_deferred(led, Z, U0) if defer else None
            if deferred is not None:
                self.U, lead["U"], good = deferred
                self.pending.append(("U", good, Z, U0))
                return
            self.U, lead["U"] = augment_projected(
                led, Z, U0, release=lambda Q: handover.give(Q, U0), out=out_U
            )

        def l_step() -> StepGenerator:
            L0 = handover.lend(method.start(V0, S0.T if _real_numpy(S0) else bk.adjoint(S0)))
            L1 = yield from method.substep.solve(LStep(led, U0, at=Y0), t0, t1, L0)
            L0 = None
            handover.l_substep_done()
            if type(L1) is not np.ndarray and bk.is_lazy(L1):
                self.V, lead["V"] = augment(led, L1, V0)
                return
            refs = sys.getrefcount(L1)
            Z = project_out(V0, L1, check=False, overwrite=owned_result(L1, refs))
            L1 = None
            deferred = augment_projected_deferred(led, Z, V0) if defer else None
            if deferred is not None:
                self.V, lead["V"], good = deferred
                self.pending.append(("V", good, Z, V0))
                return
            self.V, lead["V"] = augment_projected(led, Z, V0, release=to_spare, out=out_V)

        yield Parallel(k_step(), l_step())
        handover.close()
        rows, cols = int(self.U.shape[1]), int(self.V.shape[1])
        return embed_core(S0, rows, cols, lead["U"], lead["V"]), lead["U"], lead["V"]

    def galerkin(
        self,
        substep: SubstepSolver,
        led: Ledger,
        t0: float,
        t1: float,
        S_start: Any,
        at: LowRankMatrix | None = None,
    ) -> StepGenerator:
        """The Galerkin substep ``S' = U_hat^H F(t, U_hat S V_hat^H) V_hat`` from ``S_start``.

        ``at`` declares the point ``U_hat S_start V_hat^H`` (``Y0`` when the bases contain the
        old ones and ``S_start = U_hat^H Y0 V_hat``).
        """
        return (yield from substep.solve(SStep(led, self.U, self.V, at=at), t0, t1, S_start))

    def truncate(self, led: Ledger, rule: TruncationRule, S_hat: Any, h: float) -> LowRankMatrix:
        """The rank decision on ``S_hat`` (one SVD, recorded) and the truncated matrix."""
        return self.form(*led.truncate_core(rule, S_hat, h))

    def galerkin_and_truncate(
        self,
        substep: SubstepSolver,
        led: Ledger,
        rule: TruncationRule,
        t0: float,
        t1: float,
        S_start: Any,
        h: float,
        at: LowRankMatrix | None = None,
    ) -> StepGenerator:
        """:meth:`galerkin` then :meth:`truncate`, settling the :attr:`pending` tests.

        The tests of the deferred augmentations are read with the singular values of the
        core, in the same wait for the device: where one failed, the core is replaced by NaN
        before its SVD, whose report of a non-finite core is then traced to the test. The
        bases are then built by :func:`augment_projected` from the kept new parts (reading
        its tests as it goes), and the Galerkin substep and the truncation run again from
        them. Either way the result is that of the step without deferral.
        """
        S_hat = yield from self.galerkin(substep, led, t0, t1, S_start, at=at)
        if not self.pending:
            return self.truncate(led, rule, S_hat, h)
        xp = bk.namespace(S_hat)
        good = self.pending[0][1]
        for _, g, _, _ in self.pending[1:]:
            good = good & g
        nan = xp.asarray(float("nan"), dtype=S_hat.dtype, device=bk.device(S_hat))
        try:
            return self.truncate(led, rule, xp.where(good, S_hat, nan), h)
        except NonFiniteError:
            if bool(good):  # the core itself is not finite
                raise
        S_start = self._settle(led)
        S_hat = yield from self.galerkin(substep, led, t0, t1, S_start, at=at)
        return self.truncate(led, rule, S_hat, h)

    def _settle(self, led: Ledger) -> Any:
        """The :attr:`pending` bases by :func:`augment_projected`; the new Galerkin start."""
        assert self._start is not None
        S0, lead = self._start
        for side, _, Z, W0 in self.pending:
            basis, lead[side] = augment_projected(led, Z, W0)
            setattr(self, side, basis)
        self.pending = []
        rows, cols = int(self.U.shape[1]), int(self.V.shape[1])
        return embed_core(S0, rows, cols, lead["U"], lead["V"])

    def form(self, P: Any, S1: Any, Q: Any) -> LowRankMatrix:
        """``(U_hat P) S1 (V_hat Q)^H``, releasing ``U_hat`` before ``V_hat Q`` exists.

        ``U_hat P`` is written into :attr:`spare` where that has its shape and dtype.
        """
        out, self.spare = self.spare, None
        if out is not None and not (
            type(self.U) is np.ndarray
            and type(P) is np.ndarray
            and out.shape == (int(self.U.shape[0]), int(P.shape[1]))
            and out.dtype == np.result_type(self.U, P)
        ):
            out = None
        U1 = bk.tall_times(self.U, P, out)
        out = None
        self.U = None
        V1 = bk.tall_times(self.V, Q)
        self.V = None
        return LowRankMatrix(U1, S1, V1, check=False)
