r"""Fast and robust thin QR of tall matrices, and extension of an orthonormal basis.

The bases of the integrators are tall (``n x r`` with ``n`` up to ~1e6 and ``r`` of a few
tens). Householder QR (LAPACK ``geqrf``) runs such shapes at a fraction of the machine's
GEMM rate and needs a Fortran-ordered copy. Cholesky QR uses only a Gram matrix, a small
Cholesky factorisation and one product per pass, all at GEMM speed on the row-major array:

* **CholeskyQR2** (Fukaya, Nakatsukasa, Yanagisawa, Yamamoto 2014, "CholeskyQR2: a simple and
  communication-avoiding algorithm for computing a tall-skinny QR factorization on a
  large-scale parallel system"; Yamamoto, Nakatsukasa, Yanagisawa, Fukaya 2015, ETNA 44):
  ``G = X^H X = R1^H R1``, ``Q1 = X R1^{-1}``, and the same once more on ``Q1``. Orthonormal to
  working precision when ``kappa(X)`` is below about ``u^{-1/2}``.
* **shifted CholeskyQR3** (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa 2020, SIAM J.
  Sci. Comput. 42(1), A477-A503, arXiv:1809.11085): the first pass factors
  ``G + s I`` with ``s = 11 (m k + k (k + 1)) u ||X||_F^2``, which cannot break down and leaves
  ``Q1`` with a condition number small enough for CholeskyQR2; good for ``kappa(X)`` up to
  about ``u^{-1}``.
* **Householder** (TSQR over row blocks for NumPy, the library's QR elsewhere) when even the
  shifted pass cannot help: ``X`` (numerically) rank-deficient, zero, or not tall. On NumPy
  a breakdown of the first Cholesky factorisation sends ``X`` to TSQR at once: the
  numerically rank-deficient inputs of the rank-adaptive steps (the midpoint BUG's ``4r``
  enrichment, abc-PSI's L-step, ``kappa`` up to 1e18) break down there, and their shifted
  pass and second Gram matrix were wasted (a third of the time of their QR at ``2^16 x
  64``). Where the Cholesky factor exists but the condition estimate is too large, the
  shifted passes run: on such inputs they measured 5-20 % faster than TSQR up to ``2^16``
  rows. Other libraries (GPUs), where Householder QR is slow, always try the shifted passes.

On PyTorch tensors on an accelerator the two passes of CholeskyQR2 run first with the driver's
tests computed on the tensor's device and read back together, once (a GPU waits once instead
of four times);
where a test fails, the driver below runs from the start, so the factors are those of the
driver bit for bit. :func:`tall_q_deferred` leaves that one number to its caller, to be read
with numbers of its own.

Small inputs (at most :data:`_SMALL_ENTRIES` entries, e.g. the bases and core unfoldings of
Tucker steps at small sizes) go straight to one Householder QR: LAPACK ``geqrf``/``orgqr``
on a Fortran-ordered copy for NumPy. At that size the copy is free, Householder is as fast
as one Cholesky pass, and the driver's tests on the Gram matrices would cost more than the
factorisation; Householder QR is stable for every input, so no test is needed.

The choice is made by cheap tests on the ``k x k`` Gram matrices: a Cholesky breakdown, and a
condition estimate from the Gram diagonal against the Cholesky pivots,
``max_i G_ii / min_i R_ii^2`` (a lower bound of ``kappa(X)^2``). Every pass after the first
starts by checking ``||Q^H Q - I||_F <= 1/2``: once that holds, one more pass makes ``Q``
orthonormal to working precision whatever the history, so no result is returned unchecked.
The columns of ``Q`` are normalised so that the diagonal entries ``Q_jj`` of its leading
block are real and non-positive (as LAPACK's Householder QR makes ``Q_11``): ``Q`` then does not
depend on the signs (phases) of the columns of the input, every path returns the same ``Q`` and
``R`` for a matrix of full rank, and a basis computed from sign-flipped data is the same basis.

:func:`extend_basis` completes an orthonormal ``U0`` by directions that span the part of
``X`` outside ``span(U0)`` (block classical Gram-Schmidt twice, the robust QR above, and one
reorthogonalisation with a symmetric orthonormalisation of the result), filling
rank-deficient remainders with seeded random directions: ``[U0, Q]`` is orthonormal for any
``X`` and ``[U0, Q]^H U0 = [I; 0]`` holds without a product.

Nothing here makes Fortran-ordered copies of a tall array: on NumPy the Gram matrices come
from BLAS ``syrk``/``herk`` on the row-major array, and the products ``X R^{-1}`` are formed in
place block by block of rows.

Tried and not kept (measured in CPU time, one BLAS thread, n = 2^16, 64 columns, on the
numerically rank-deficient new columns of the midpoint BUG and the L-step of abc-PSI, kappa up
to 1e18): a *split* QR that factors the leading columns whose Cholesky pivots stay within the
ladder's bound by CholeskyQR2 and only the (rank-deficient) remaining columns by Householder,
after projecting them out of the first block, took as long as the Householder QR of all the
columns (87 ms against 75 ms, before the faster TSQR below): the gathers of the two column
blocks, the projections, the second projection of the remainder's rounding directions and a
Cholesky pass for them, and the assembly are each a pass over tall arrays, and TSQR of 24
columns still costs a quarter of TSQR of 64. Writing ``Q`` from the last pass straight into a
column block of a wider array (the augmented basis) saved nothing: the cost is the first touch
of the new array's pages, not the copy. A QR of column blocks ``[B1, B2]`` with the Gram
matrix assembled from the blocks and the first pass written into the new array (instead of
copying the blocks into it) was 10-20 % slower: the first pass then needs general products by
row blocks where the copied array takes ``trmm`` in place.
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import Any

import numpy as np

from . import _backend as bk

__all__ = ["extend_basis", "nearly_orthonormal_q", "tall_q", "tall_qr", "tall_qr_project"]

#: Largest estimated ``kappa(X)^2 u`` for which an unshifted Cholesky pass is attempted.
#: The first pass then leaves ``||Q^H Q - I||`` of about this size, well within
#: ``_NEAR_ORTHONORMAL``, and the second is the last: CholeskyQR2 holds ``kappa`` up to about
#: ``2e7`` in double precision. The Gram matrix's own Cholesky factorisation fails a little
#: above (``kappa^2 u`` of 0.3 to 1, measured): the shifted passes serve the estimates in
#: between. A bound of ``1e-2`` sent the L-side QRs of the augmented BUG steps at ``n = 4096``
#: (estimates 0.014-0.019) to three passes instead of two. An estimate is a lower bound: an
#: input it underrates still gets no unchecked result (see :func:`_factor`).
_MAX_KAPPA2_U = 1e-1
#: A pass whose input has ``||Q^H Q - I||_F`` at most this is the last one.
_NEAR_ORTHONORMAL = 0.5
#: Cholesky passes tried before Householder is used instead.
_MAX_PASSES = 4
#: Seed of the random directions that fill a rank-deficient basis extension.
_FILL_SEED = 0x5EED
#: Inputs with at most this many entries are factored by one Householder QR.
_SMALL_ENTRIES = 2**16


def tall_qr(x: Any, *, overwrite_x: bool = False, check: str | None = None) -> tuple[Any, Any]:
    """Thin QR ``x = Q R`` of a 2-D array, CholeskyQR2 with robust fallbacks.

    Parameters
    ----------
    x : array, shape (m, k)
        Any array of the array API; not modified unless ``overwrite_x``.
    overwrite_x : bool, default False
        Whether ``x`` (an array the caller owns and no longer needs) may be overwritten by
        ``Q``: on NumPy this saves one tall array. Should the Cholesky passes then fail, the
        Householder fallback factors the partially orthogonalised array ``x R_1^{-1}`` and
        returns the product of the triangular factors.
    check : str, optional
        When given, a :class:`~lowrank_integrators.errors.NonFiniteError` naming ``x`` as
        ``check`` is raised if ``x`` holds NaN or infinity, before ``x`` is modified. On the
        Cholesky path this is read off the Gram matrix (a non-finite entry of ``x`` makes its
        column's diagonal entry non-finite), so that finite input costs no extra pass; only a
        non-finite Gram matrix (or an overflow in it) is settled on ``x`` itself.

    Returns
    -------
    Q : array, shape (m, min(m, k))
        Orthonormal columns (row-major for NumPy).
    R : array, shape (min(m, k), k)
        Upper triangular. ``Q_jj`` is real and <= 0 for every column ``j`` of ``Q``.
    """
    q, r, _, _ = _factor(x, None, overwrite=overwrite_x, check=check)
    return q, r


def tall_q(x: Any, *, overwrite_x: bool = False) -> Any:
    """The factor ``Q`` of :func:`tall_qr` alone, the same array bit for bit.

    Small real NumPy inputs (the Householder route) skip forming ``R``; every other input
    goes through :func:`tall_qr`.
    """
    if _is_numpy(x) and x.ndim == 2 and x.dtype.kind in "fc":
        m, k = x.shape
        if 0 < k <= m and m * k <= _SMALL_ENTRIES:
            return _small_q(x)
    elif len(x.shape) == 2 and not bk.is_lazy(x):
        m, k = int(x.shape[0]), int(x.shape[1])
        if m > 0 and k > 0 and m * k <= _SMALL_ENTRIES:  # the Householder route, without R
            xp = bk.namespace_of(x)
            Q = xp.linalg.qr(x, mode="reduced")[0]
            # each column by its sign: Q has min(m, k) columns, its diagonal as many entries
            if bk.is_complex(Q):
                return Q * canonical_phases(_diagonal(Q))
            return xp.where(_diagonal(Q) > 0, -Q, Q)  # Q times the signs, exactly
    return _factor(x, None, overwrite=overwrite_x)[0]


def tall_q_deferred(x: Any) -> tuple[Any, Any | None]:
    """:func:`tall_q` with its one test left unread where that is possible: ``(Q, ok)``.

    For a PyTorch tensor on an accelerator (see
    :func:`~lowrank_integrators._backend.defers_checks`) that :func:`tall_q` factors by the
    Cholesky passes, ``Q`` comes from CholeskyQR2 with the tests of the driver computed on the
    tensor's device and not read back: ``ok`` is a 0-d boolean tensor, true exactly when
    :func:`tall_q` returns this ``Q`` (bit for bit). The caller reads it together with other
    numbers of its own (one wait for the device instead of several) and calls :func:`tall_q`
    where it is false; ``x`` is left intact. Every other input is factored by :func:`tall_q`
    at once and ``ok`` is ``None``.
    """
    if len(x.shape) == 2 and bk.defers_checks(x):
        m, k = int(x.shape[0]), int(x.shape[1])
        if 0 < k <= m and m * k > _SMALL_ENTRIES:
            Q, _, _, ok = _deferred_cholesky_qr2(x, None)
            return Q, ok
    return tall_q(x), None


def tall_qr_project(
    x: Any, w: Any, *, overwrite_x: bool = False, check: str | None = None
) -> tuple[Any, Any, Any]:
    """Thin QR ``x = Q R`` as :func:`tall_qr`, and ``M = Q^H w`` formed in the last pass.

    On NumPy, ``M`` is accumulated block by block of rows while each block of ``Q`` is still in
    cache from its final product: ``Q`` is not read a second time.

    Parameters
    ----------
    x : array, shape (m, k)
        The matrix to factor.
    w : array, shape (m, p)
        A second tall array of the same namespace (typically the previous basis ``U0``).
    overwrite_x, check
        As for :func:`tall_qr`.

    Returns
    -------
    Q, R : arrays
        As for :func:`tall_qr`.
    M : array, shape (min(m, k), p)
        ``Q^H w``.
    """
    if len(w.shape) != 2 or int(w.shape[0]) != int(x.shape[0]):
        raise ValueError(
            f"w must be a 2-D array with {int(x.shape[0])} rows (those of x), got shape "
            f"{tuple(w.shape)}"
        )
    q, r, m, _ = _factor(x, w, overwrite=overwrite_x, check=check)
    return q, r, m


def nearly_orthonormal_q(x: Any, *, overwrite_x: bool = False) -> Any | None:
    """The factor ``Q`` of a nearly orthonormal ``x`` by one Cholesky pass, or ``None``.

    The last pass of the Cholesky driver on its own: where ``||x^H x - I||_F <= 1/2``
    (checked on the Gram matrix), ``Q = x R^{-1}`` with ``x^H x = R^H R`` is orthonormal to
    working precision and spans ``range(x)``, with the sign convention of :func:`tall_q`; it
    equals :func:`tall_q`'s result up to rounding, at half its cost (one Gram matrix and one
    triangular product instead of two each). For other ``x`` (and tall arrays with at most
    ``_SMALL_ENTRIES`` entries, whose Householder QR is as cheap) it returns ``None`` and
    leaves ``x`` intact: the caller takes :func:`tall_q`.

    Parameters
    ----------
    x : array, shape (m, k)
        ``m >= k``; typically an orthonormal block from which a small part was projected out.
    overwrite_x : bool, default False
        Whether a NumPy ``x`` may be overwritten by ``Q``.
    """
    if len(x.shape) != 2:
        raise ValueError(f"x must be a 2-D array, got shape {tuple(x.shape)}")
    m, k = int(x.shape[0]), int(x.shape[1])
    if k == 0 or m < k or m * k <= _SMALL_ENTRIES or bk.is_lazy(x):
        return None
    G = _gram(x)
    if not _distance_to_identity(G) <= _NEAR_ORTHONORMAL:
        return None
    Ri = _cholesky_upper(G)
    if Ri is None:  # pragma: no cover - a Gram matrix within 1/2 of I is positive definite
        return None
    Ri_inv = _inverse_upper(Ri)
    d = canonical_phases(_diagonal(x[:k, :] @ Ri_inv))
    owned = overwrite_x and _is_numpy(x) and x.flags.c_contiguous
    return _times_inverse(x, Ri_inv * d[None, :], owned=owned, w=None, triangular=True)[0]


def extend_basis(U0: Any, X: Any) -> Any:
    """New orthonormal columns ``Q`` such that ``[U0, Q]`` is orthonormal and spans ``X``.

    Parameters
    ----------
    U0 : array, shape (m, r)
        Orthonormal columns (to working precision).
    X : array, shape (m, k)
        Directions to add; may be rank-deficient, inside ``span(U0)`` or zero.

    Returns
    -------
    Q : array, shape (m, min(k, m - r))
        Orthonormal, orthogonal to ``U0`` to working precision, and
        ``span(X) ⊂ span([U0, Q])`` up to components of ``X`` of the size of its rounding
        errors. Where the part of ``X`` outside ``span(U0)`` has rank below ``min(k, m - r)``,
        the remaining columns are orthonormal directions drawn from a seeded generator
        (deterministic). Hence ``[U0, Q]^H U0 = [I; 0]``.
    """
    if len(U0.shape) != 2 or len(X.shape) != 2:
        raise ValueError(
            f"U0 and X must be 2-D arrays, got shapes {tuple(U0.shape)} and {tuple(X.shape)}"
        )
    m, r = int(U0.shape[0]), int(U0.shape[1])
    if int(X.shape[0]) != m:
        raise ValueError(f"X must have {m} rows (those of U0), got shape {tuple(X.shape)}")
    xp = bk.namespace(U0, X)
    want = max(0, min(int(X.shape[1]), m - r))
    basis = [U0]
    found: list[Any] = []
    have = 0
    candidate = X
    for attempt in range(_MAX_PASSES + 2):
        if have >= want:
            break
        if attempt > 0:
            candidate = _random_like(U0, want - have, attempt)
        Z = _project_out(basis, _project_out(basis, candidate, copy=True), copy=False)
        Q = _factor(Z, None)[0]
        Q = _project_out(basis, Q, copy=False)
        new = _orthonormal_directions(Q, want - have)
        if int(new.shape[1]) > 0:
            found.append(new)
            basis.append(new)
            have += int(new.shape[1])
    if have < want:  # pragma: no cover - random directions fail only with probability 0
        raise np.linalg.LinAlgError("could not extend the basis by random directions")
    if not found:
        return xp.zeros((m, 0), dtype=X.dtype, device=bk.device(X))
    if len(found) == 1:
        return found[0]
    return xp.concat(found, axis=1)


# --- the Cholesky QR driver --------------------------------------------------------------------


def _factor(
    x: Any, w: Any | None, *, overwrite: bool = False, check: str | None = None
) -> tuple[Any, Any, Any, str]:
    """``(Q, R, Q^H w or None, name of the method that produced them)``.

    ``check``: see :func:`tall_qr`.
    """
    if len(x.shape) != 2:
        raise ValueError(f"x must be a 2-D array, got shape {tuple(x.shape)}")
    m, k = int(x.shape[0]), int(x.shape[1])
    gram_check = check is not None and _is_numpy(x)
    if check is not None and not (gram_check and k > 0 and m >= k and m * k > _SMALL_ENTRIES):
        bk.require_finite(x, check)
        gram_check = False
    if k == 0 or m < k or m * k <= _SMALL_ENTRIES:
        if _is_numpy(x) and x.dtype.kind == "f" and k > 0:
            return _small_real_householder(x, w)
        return _householder(x, w)
    if bk.defers_checks(x):
        Q, R, M, ok = _deferred_cholesky_qr2(x, w)
        if bool(ok):  # the one number read back on this route
            return Q, R, M, "CholeskyQR2"
        Q = R = M = None
    xp = bk.namespace(x)
    eps = float(xp.finfo(x.dtype).eps)
    Q = x
    R = None
    shifted = False
    G = _gram(Q)
    if gram_check and not np.all(np.isfinite(np.diagonal(G))):
        bk.require_finite(x, check)  # raises for non-finite x; else an overflow in G
    for passes in range(_MAX_PASSES):
        last = passes > 0 and _distance_to_identity(G) <= _NEAR_ORTHONORMAL
        Ri = _cholesky_upper(G)
        shift = 0.0
        if not last and (Ri is None or _kappa2(G, Ri) * eps > _MAX_KAPPA2_U):
            if passes > 0:
                if Q is not x:
                    Q = None  # not alive next to the fallback's own result
                return _householder_after(x, Q, R, w)
            if Ri is None and _is_numpy(x):  # a breakdown: TSQR at once (module docstring)
                return _householder(x, w, owned=overwrite and x.flags.c_contiguous)
            # shifted CholeskyQR (Fukaya et al. 2020, eq. (3.1)): s >= 11 (mk + k(k+1)) u ||X||^2
            trace = float(np.sum(np.real(bk.to_host(_diagonal(G)))))
            shift = 11.0 * (m * k + k * (k + 1)) * eps * trace
            usable = np.isfinite(shift) and shift > 0
            Ri = _cholesky_upper(G + shift * bk.eye_like(G, k)) if usable else None
            if Ri is None:
                return _householder(x, w)
        Ri_inv = _inverse_upper(Ri)
        if last:  # the sign normalisation, folded into the last product
            d = canonical_phases(_diagonal(Q[:k, :] @ Ri_inv))
            Ri_inv = Ri_inv * d[None, :]
            Ri = _conj(d)[:, None] * Ri
        owned = passes > 0 or (overwrite and _is_numpy(x) and x.flags.c_contiguous)
        Q, M = _times_inverse(Q, Ri_inv, owned=owned, w=w if last else None, triangular=True)
        R = Ri if R is None else Ri @ R
        shifted = shifted or shift > 0
        if last:
            name = "shifted CholeskyQR" if shifted else "CholeskyQR"
            return Q, R, M, f"{name}{passes + 1}"
        G = _gram(Q)
    if Q is not x:
        Q = None
    return _householder_after(x, Q, R, w)


def _deferred_cholesky_qr2(x: Any, w: Any | None) -> tuple[Any, Any, Any, Any]:
    """CholeskyQR2 of the tensor ``x`` with the driver's tests evaluated on its device.

    Returns ``(Q, R, Q^H w or None, ok)``. The operations are those of the two passes of
    :func:`_factor` (the same helpers, in the same order); ``ok`` (a 0-d boolean tensor, not
    read) is true where :func:`_factor`'s tests would have let them through: the first
    Cholesky factorisation succeeded with finite pivots and a condition estimate within
    ``_MAX_KAPPA2_U``, the second pass starts within ``_NEAR_ORTHONORMAL`` of orthonormal
    (both with a margin of 1e-3 for the rounding of the device's own evaluation of the tests,
    which :func:`_factor` computes on the host), and the second factorisation succeeded. Then
    ``(Q, R, M)`` is what :func:`_factor` returns. Every other case goes through
    :func:`_factor`'s driver, where a GPU would otherwise wait for each test: a CholeskyQR2 of
    well-conditioned columns here reads back one number instead of four.
    """
    torch = sys.modules["torch"]
    k = int(x.shape[1])
    eps = float(torch.finfo(x.dtype).eps)
    margin = 1.0 - 1e-3
    G = _gram(x)
    L, info = torch.linalg.cholesky_ex(G)
    Ri = bk.adjoint(L)
    g = torch.real(_diagonal(G))
    p = torch.abs(_diagonal(Ri)) ** 2
    ok = (
        (info == 0)
        & torch.isfinite(g).all()
        & torch.isfinite(p).all()
        & (p.min() > 0)
        & (torch.max(g / p) * eps <= _MAX_KAPPA2_U * margin)
    )
    Q, _ = _times_inverse(x, _inverse_upper(Ri), owned=False, w=None, triangular=True)
    R = Ri
    G = _gram(Q)
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    distance = torch.linalg.matrix_norm(G - eye)
    L, info = torch.linalg.cholesky_ex(G)
    Ri = bk.adjoint(L)
    ok = ok & (distance <= _NEAR_ORTHONORMAL * margin) & (info == 0)
    ok = ok & torch.isfinite(_diagonal(Ri)).all()
    Ri_inv = _inverse_upper(Ri)
    d = canonical_phases(_diagonal(Q[:k, :] @ Ri_inv))
    Ri_inv = Ri_inv * d[None, :]
    Ri = _conj(d)[:, None] * Ri
    Q, M = _times_inverse(Q, Ri_inv, owned=False, w=w, triangular=True)
    return Q, Ri @ R, M, ok


def _householder_after(x: Any, Q: Any, R: Any, w: Any | None) -> tuple[Any, Any, Any, str]:
    """The Householder fallback after Cholesky passes ``x = Q R`` (``x`` itself if intact)."""
    if Q is not x:
        return _householder(x, w)
    Qh, Rh, M, name = _householder(Q, w, owned=True)
    return Qh, Rh @ R, M, name


def _distance_to_identity(G: Any) -> float:
    g = bk.to_host(G)
    if not np.all(np.isfinite(g)):
        return np.inf
    return float(np.linalg.norm(g - np.eye(g.shape[0])))


def _kappa2(G: Any, R: Any) -> float:
    """``max_i G_ii / R_ii^2``: a cheap, column-scaling invariant estimate of ``kappa(X)^2``.

    ``R_ii^2`` is the squared norm of column ``i`` of ``X`` outside the span of the columns
    before it, ``G_ii`` its squared norm: a large ratio means a nearly dependent column.
    Cholesky factorisation, and with it Cholesky QR, is insensitive to a scaling of the
    columns, so the estimate is taken for the columns scaled to unit norm.
    """
    d = np.real(bk.to_host(_diagonal(G)))
    p = np.abs(bk.to_host(_diagonal(R))) ** 2
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(p))) or np.min(p) <= 0:
        return np.inf
    return float(np.max(d / p))


def _diagonal(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np.diagonal(a)
    return bk.namespace_of(a).linalg.diagonal(a)


# --- kernels: NumPy through BLAS/LAPACK without tall copies; other libraries through the API --


def _is_numpy(x: Any) -> bool:
    return type(x) is np.ndarray


def _gram(x: Any) -> Any:
    """``x^H x`` (Hermitian, both triangles filled)."""
    if _is_numpy(x) and x.ndim == 2:
        if not np.iscomplexobj(x):
            # An overflow here is handled by the callers (finiteness test, then Householder),
            # so NumPy's warning would only report what the ladder already decides on.
            with np.errstate(over="ignore", invalid="ignore"):
                return x.T @ x  # NumPy calls syrk for a product with its own transpose
        from scipy.linalg import blas

        herk = blas.get_blas_funcs("herk", (x,))
        # x.T is Fortran-ordered: herk(x.T) = x^T conj(x) = conj(x^H x), upper triangle.
        c = herk(1.0, x.T if x.flags.c_contiguous else np.ascontiguousarray(x).T, lower=0)
        upper = np.triu(np.conj(c))
        return upper + np.conj(np.triu(upper, 1)).T
    return bk.adjoint(x) @ x


def _inner(a: Any, b: Any) -> Any:
    """``a^H b`` for tall ``a``, ``b`` (no conjugated copy of ``a`` for NumPy)."""
    if _is_numpy(a) and _is_numpy(b) and a.dtype.kind == "c":
        from scipy.linalg import blas

        dtype = np.result_type(a, b)
        gemm = blas.get_blas_funcs("gemm", (np.empty(0, dtype),))
        at = np.ascontiguousarray(a, dtype=dtype).T
        bt = np.ascontiguousarray(b, dtype=dtype).T
        # gemm(a^T, conj(b^T)^T) = a^T conj(b) = conj(a^H b)
        return np.conj(gemm(1.0, at, bt, trans_b=2))
    return bk.adjoint(a) @ b


def _cholesky_upper(G: Any) -> Any | None:
    """Upper ``R`` with ``G = R^H R``, or ``None`` on breakdown or non-finite pivots."""
    if _is_numpy(G):
        from scipy.linalg import lapack

        potrf = lapack.get_lapack_funcs("potrf", (G,))
        c, info = potrf(G, lower=0, clean=1, overwrite_a=0)
        if info != 0 or not np.all(np.isfinite(np.diagonal(c))):
            return None
        return c
    xp = bk.namespace(G)
    try:
        L = xp.linalg.cholesky(G)
    except Exception as exc:  # each library raises its own error type
        if bk.is_linalg_error(exc):
            return None
        raise
    if not np.all(np.isfinite(bk.to_host(_diagonal(L)))):
        return None
    return bk.adjoint(L)


def _inverse_upper(R: Any) -> Any:
    if _is_numpy(R):
        from scipy.linalg import lapack

        trtri = lapack.get_lapack_funcs("trtri", (R,))
        inv, info = trtri(R, lower=0)
        if info == 0:
            return np.triu(inv)
    if type(R).__module__.startswith("torch"):
        # a triangular solve: several times faster than the general (LU) inverse
        import torch

        eye = torch.eye(int(R.shape[0]), dtype=R.dtype, device=R.device)
        return torch.linalg.solve_triangular(R, eye, upper=True)
    return bk.namespace(R).linalg.inv(R)


def _times_inverse(
    Q: Any, Ri_inv: Any, *, owned: bool, w: Any | None, triangular: bool = False
) -> tuple[Any, Any]:
    """``Q R^{-1}`` (in place when ``Q`` is owned, on NumPy) and, if asked, ``(Q R^{-1})^H w``.

    A product with the small inverse runs several times faster than a triangular solve with
    many right-hand sides and is as accurate here: the last pass starts from a nearly
    orthonormal ``Q``, whose triangular factor is close to the identity. On NumPy an upper
    triangular ``Ri_inv`` (``triangular``) is applied by BLAS ``trmm`` in place, block by block
    of rows (the row-major block is the column-major transpose that ``trmm`` updates): half
    the flops of a GEMM and no temporary. ``M`` is accumulated while each block is in cache.
    """
    if not _is_numpy(Q) or not _is_numpy(Ri_inv):
        out = Q @ Ri_inv
        return out, (None if w is None else _inner(out, w))
    m, k = Q.shape
    cols = int(Ri_inv.shape[1])
    owned = owned and cols == k
    out = Q if owned else np.empty((m, cols), dtype=np.result_type(Q, Ri_inv))
    Ri_inv = np.asarray(Ri_inv, dtype=out.dtype)
    M = None
    if w is not None:
        M = np.zeros((cols, int(w.shape[1])), dtype=np.result_type(out, w))
    trmm = None
    if triangular and cols == k and out.flags.c_contiguous and out.dtype.kind in "fc":
        from scipy.linalg import blas

        trmm = blas.get_blas_funcs("trmm", (out,))
    for b in bk.row_blocks(Q if k >= cols else out):
        if trmm is not None:
            if not owned:
                out[b] = Q[b]
            block = out[b].T  # column-major (k x rows): trmm overwrites it in place
            res = trmm(1.0, Ri_inv, block, side=0, lower=0, trans_a=1, overwrite_b=1)
            if not np.shares_memory(res, block):  # pragma: no cover - SciPy copied it
                block[...] = res
        elif owned:
            out[b] = Q[b] @ Ri_inv
        else:
            np.matmul(Q[b], Ri_inv, out=out[b])
        if M is not None:
            M += bk.tall_inner(out[b], w[b])
    return out, M


def _householder(x: Any, w: Any | None, owned: bool = False) -> tuple[Any, Any, Any, str]:
    """Householder QR (TSQR over row blocks for NumPy), normalised to ``Q_jj <= 0``.

    On NumPy an ``owned`` ``x`` is overwritten by ``Q``.
    """
    if _is_numpy(x):
        Q, R = _tsqr(x, owned=owned)
    else:
        xp = bk.namespace(x)
        Q, R = xp.linalg.qr(x, mode="reduced")
    p = min(int(Q.shape[0]), int(Q.shape[1]))
    d = canonical_phases(_diagonal(Q[:p, :p]))
    if _is_numpy(Q) and Q.flags.writeable:
        Q *= d[None, :]  # Q is the factorisation's own array
    else:
        Q = Q * d[None, :]
    R = _conj(d)[:, None] * R
    return Q, R, (None if w is None else _inner(Q, w)), "Householder"


def _small_real_householder(x: np.ndarray, w: Any | None) -> tuple[Any, Any, Any, str]:
    """:func:`_householder` of a small real NumPy array (``k > 0``), without its checks."""
    m, k = x.shape
    if m * k > _QRT_FROM:  # geqrt's blocks (see _lapack_qr)
        Q, r = _signed_lapack_qr(x, with_r=True)
    else:
        Q, r = _unblocked_signed_qr(x, with_r=True)
    return Q, r, (None if w is None else _inner(Q, w)), "Householder"


def _unblocked_signed_qr(x: np.ndarray, *, with_r: bool) -> tuple[np.ndarray, Any]:
    """``(Q, R)`` (``R`` ``None`` without ``with_r``) of a real block of at most
    ``_QRT_FROM`` entries: :func:`_lapack_qr_unblocked` with the canonical signs, row-major,
    in as few calls as can be (on the blocks of a Tucker step, tens of entries, each call
    costs more than its arithmetic)."""
    m, k = x.shape
    p = min(m, k)
    geqrf, orgqr = _lapack_unblocked_functions(x.dtype)
    qr, tau, _, info = geqrf(x, lwork=64 * k)  # into a Fortran-ordered copy of x
    if info != 0:  # pragma: no cover - geqrf reports only illegal arguments (none here)
        raise np.linalg.LinAlgError(f"LAPACK geqrf failed with info={info}")
    # in place when R is not wanted; otherwise a copy, and qr still holds R
    q, _, info = orgqr(qr[:, :p], tau, lwork=64 * p, overwrite_a=not with_r)
    if info != 0:  # pragma: no cover - orgqr reports only illegal arguments
        raise np.linalg.LinAlgError(f"LAPACK orgqr failed with info={info}")
    d = _real_phases(q.diagonal())
    if p <= _TRANSPOSED_SIGNS_MAX_COLUMNS and m >= _TRANSPOSED_SIGNS_MIN_ROWS:
        # the signs and the row-major copy at once, in the order of q's columns: NumPy
        # otherwise walks the rows of the result, a few entries at a time (measured 1.5-2.5x
        # slower for 256-2048 rows and up to 8 columns)
        Q = np.empty((m, p), dtype=q.dtype)
        np.multiply(q.T, d[:, None], out=Q.T)
    else:
        Q = np.multiply(q, d, order="C")  # the signs and the row-major copy at once
    if not with_r:
        return Q, None
    R = np.multiply(qr[:p], d[:, None], order="C")
    np.copyto(R, 0, where=_strictly_lower(p, k))
    return Q, R


#: Narrow factors whose signs are applied column by column (see _unblocked_signed_qr).
_TRANSPOSED_SIGNS_MAX_COLUMNS = 8
_TRANSPOSED_SIGNS_MIN_ROWS = 256

#: ``[1, -1]`` in each real NumPy dtype (by dtype character): the signs looked up.
_SIGN_TABLES: dict[str, np.ndarray] = {}


def _real_phases(diag: np.ndarray) -> np.ndarray:
    """:func:`canonical_phases` of a real NumPy vector: ``-1`` where ``diag > 0``, else ``1``.

    One lookup in a two-entry table (``np.where`` with scalars converts and promotes them on
    every call: twice as long on the few entries of a factor's diagonal).
    """
    table = _SIGN_TABLES.get(diag.dtype.char)
    if table is None:
        table = _SIGN_TABLES[diag.dtype.char] = np.array([1, -1], dtype=diag.dtype)
        table.flags.writeable = False
    return table.take((diag > 0).view(np.uint8))


def _small_q(x: np.ndarray) -> np.ndarray:
    """``_householder(x, None)[0]`` of a small NumPy ``x`` (``0 < k <= m``) without ``R``."""
    if x.dtype.kind == "f" and x.size <= _QRT_FROM:
        return _unblocked_signed_qr(x, with_r=False)[0]
    return _signed_lapack_qr(x, with_r=False)[0]


def _signed_lapack_qr(x: np.ndarray, *, with_r: bool) -> tuple[np.ndarray, Any]:
    """:func:`_lapack_qr` with ``Q`` row-major and the canonical signs applied in place."""
    Q, r = _lapack_qr(x, with_r=with_r, row_major=True)
    d = canonical_phases(Q.diagonal())
    Q *= d
    if r is not None:
        r *= d[:, None]
    return Q, r


def _tsqr(x: np.ndarray, owned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR by TSQR (Demmel, Grigori, Hoemmen, Langou 2012, arXiv:0808.2664), one level.

    Each block of rows ``X_j`` is factored by LAPACK ``geqrt`` into compact WY reflectors,
    ``X_j = (I - V_j T_j V_j^H) [R_j; 0]``, and the stacked ``R_j`` once more,
    ``[R_1; R_2; ...] = [q_1; q_2; ...] R``. The block of ``Q`` is then
    ``(I - V_j T_j V_j^H) [q_j; 0] = [q_j; 0] - V_j (T_j (V_1j^H q_j))`` (``V_1j`` the top
    ``k x k`` block of ``V_j``): one product of the tall ``V_j`` with a ``k x k`` matrix. The
    block factors are never formed as ``(I - V T V^H) [I; 0]`` and multiplied by ``q_j``
    afterwards, which took twice the flops (the explicit ``Q_j`` alone costs as much as the
    product). Unconditionally stable, also for rank-deficient ``x``. An ``owned`` C-ordered
    ``x`` is overwritten by ``Q``; otherwise ``V_j`` is kept in the result's storage between
    the two sweeps, so no tall array besides the result is allocated.
    """
    m, k = x.shape
    # blocks of _TSQR_ROWS rows (at least 2k)
    rows = max(2 * k, _TSQR_ROWS)
    if m < 2 * rows:
        return _lapack_qr(x, row_major=True)  # type: ignore[return-value]
    starts = list(range(0, m, rows))
    if m - starts[-1] < k:  # keep every block at least k rows tall
        starts.pop()
    bounds = list(itertools.pairwise([*starts, m]))
    out = x if owned and x.flags.c_contiguous else np.empty((m, k), dtype=x.dtype)
    geqrt = _lapack_qr_functions(x.dtype)[0]
    rs, ts = [], []
    for lo, hi in bounds:
        v, t, info = geqrt(k, np.array(x[lo:hi], order="F", copy=True), overwrite_a=1)
        if info != 0:  # pragma: no cover - geqrt reports only illegal arguments (none here)
            raise np.linalg.LinAlgError(f"LAPACK geqrt failed with info={info}")
        rs.append(_upper_triangle(v, k, k))
        out[lo:hi] = v  # V_j below the diagonal (R_j above it, replaced in the second sweep)
        ts.append(t)
    q_small, R = _lapack_qr(np.concatenate(rs, axis=0))
    unit = _diagonal_indices(k)
    upper = ~_strictly_lower(k, k)
    for j, (lo, hi) in enumerate(bounds):
        V = out[lo:hi]
        top = V[:k]
        np.copyto(top, 0, where=upper)  # V_1j: unit lower triangular
        top[unit] = 1
        q = q_small[j * k : (j + 1) * k]
        W = ts[j] @ ((top.conj().T if x.dtype.kind == "c" else top.T) @ q)
        V[...] = V @ (-W)  # a block-sized temporary, in the cache
        top += q
    return out, R


def _lapack_qr(
    a: np.ndarray, *, with_r: bool = True, row_major: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Economic Householder QR of a block through LAPACK ``geqrt`` and ``gemqrt``.

    ``with_r=False`` skips forming ``R`` (returned as ``None``); ``Q`` is the same.
    ``row_major=True`` returns ``Q`` C-ordered (else Fortran-ordered). For a real block the
    reflectors are then applied from the right to the first rows of the identity,
    ``Q^T = [I, 0] H^T``: the Fortran-ordered ``Q^T`` is ``Q`` in row-major order, so no
    transposing copy is made (the QR of blocks of 500-4096 x 16-64 ran 4-16 % faster, one
    thread); the entries are those of ``H [I; 0]`` to round-off (the same reflector products,
    transposed; most shapes agree bit for bit).

    ``geqrt`` factors panels recursively into the compact WY form (Elmroth, Gustavson 2000),
    so that most of its work is matrix-matrix products: on tall blocks it runs about 1.6
    times faster than ``geqrf``, whose panels are factored one column at a time, and ``Q``
    is formed by applying the block reflectors to ``[I; 0]`` (``gemqrt``). Small blocks
    (``_QRT_FROM`` entries at most) take ``geqrf`` and ``orgqr``. The block is
    copied once into Fortran order and overwritten: ``numpy.linalg.qr`` of a row-major block
    makes further copies and is several times slower on tall blocks, and ``scipy.linalg.qr``
    adds tens of microseconds of checks, which dominate on small blocks.
    """
    work = np.array(a, order="F", copy=True)
    m, k = work.shape
    p = min(m, k)
    if p == 0:
        return np.zeros((m, 0), work.dtype, order="F"), np.zeros((0, k), work.dtype)
    if m * k <= _QRT_FROM:
        q, r = _lapack_qr_unblocked(work, with_r)
        return (np.ascontiguousarray(q) if row_major else q), r
    geqrt, gemqrt = _lapack_qr_functions(work.dtype)
    v, t, info = geqrt(min(p, _QRT_BLOCK), work, overwrite_a=1)
    if info != 0:  # pragma: no cover - geqrt reports only illegal arguments (none here)
        raise np.linalg.LinAlgError(f"LAPACK geqrt failed with info={info}")
    r = _upper_triangle(v, p, k) if with_r else None
    # complex blocks: gemqrt offers H^H, not H^T, from the right
    transposed = row_major and work.dtype.kind == "f"
    q = np.zeros((p, m) if transposed else (m, p), work.dtype, order="F")
    q[_diagonal_indices(p)] = 1
    if transposed:
        q, info = gemqrt(v[:, :p], t, q, side="R", trans="T", overwrite_c=1)
    else:
        q, info = gemqrt(v[:, :p], t, q, overwrite_c=1)
    if info != 0:  # pragma: no cover - gemqrt reports only illegal arguments
        raise np.linalg.LinAlgError(f"LAPACK gemqrt failed with info={info}")
    if transposed:
        return q.T, r
    return (np.ascontiguousarray(q) if row_major else q), r


#: Block size of the compact WY factors of ``geqrt`` (its panels are factored recursively).
_QRT_BLOCK = 32

#: Rows of the blocks of :func:`_tsqr`. Measured fastest for 16 to 128 columns at n = 2^16 to
#: 2^20 (one BLAS thread): 1024 or 4096 rows cost up to 30 % more, and blocks of a fixed
#: number of entries (more rows for fewer columns) up to 60 % more at 16 columns.
_TSQR_ROWS = 2048

#: Blocks with at most this many entries take ``geqrf`` and ``orgqr``: on small blocks the
#: recursion of ``geqrt`` gains nothing and the explicit ``[I; 0]`` of ``gemqrt`` costs more
#: than ``orgqr`` working in place (a few microseconds, per QR of a Tucker step's factors).
_QRT_FROM = 1 << 13


def _lapack_qr_unblocked(work: np.ndarray, with_r: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_lapack_qr` of a small Fortran-ordered block by ``geqrf`` and ``orgqr``."""
    m, k = work.shape
    p = min(m, k)
    geqrf, orgqr = _lapack_unblocked_functions(work.dtype)
    qr, tau, _, info = geqrf(work, lwork=max(1, 64 * k), overwrite_a=1)
    if info != 0:  # pragma: no cover - geqrf reports only illegal arguments (none here)
        raise np.linalg.LinAlgError(f"LAPACK geqrf failed with info={info}")
    r = _upper_triangle(qr, p, k) if with_r else None
    q, _, info = orgqr(qr[:, :p], tau, lwork=max(1, 64 * p), overwrite_a=1)
    if info != 0:  # pragma: no cover - orgqr reports only illegal arguments
        raise np.linalg.LinAlgError(f"LAPACK orgqr failed with info={info}")
    return q, r


def _upper_triangle(factored: np.ndarray, p: int, k: int) -> np.ndarray:
    """``R`` (row-major) from the upper triangle of a LAPACK QR's ``p x k`` leading block."""
    r = factored[:p, :].copy(order="C")
    np.copyto(r, 0, where=_strictly_lower(p, k))
    return r


_LAPACK_UNBLOCKED: dict[str, tuple[Any, Any]] = {}


def _lapack_unblocked_functions(dtype: np.dtype) -> tuple[Any, Any]:
    """LAPACK ``geqrf`` and ``orgqr`` (``ungqr`` for complex) for ``dtype``, looked up once."""
    pair = _LAPACK_UNBLOCKED.get(dtype.char)
    if pair is None:
        from scipy.linalg import lapack

        name = "ungqr" if dtype.kind == "c" else "orgqr"
        pair = lapack.get_lapack_funcs(("geqrf", name), (np.empty(0, dtype),))
        _LAPACK_UNBLOCKED[dtype.char] = pair
    return pair


_LAPACK_QR: dict[str, tuple[Any, Any]] = {}


@functools.lru_cache(maxsize=64)
def _strictly_lower(p: int, k: int) -> np.ndarray:
    """The mask of the entries below the diagonal of a ``p x k`` array (read-only)."""
    mask = np.tri(p, k, -1, dtype=bool)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=64)
def _diagonal_indices(p: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the diagonal of a ``p x p`` block."""
    i = np.arange(p)
    i.flags.writeable = False
    return i, i


def _lapack_qr_functions(dtype: np.dtype) -> tuple[Any, Any]:
    """LAPACK ``geqrt`` and ``gemqrt`` for ``dtype``, looked up once."""
    pair = _LAPACK_QR.get(dtype.char)
    if pair is None:
        from scipy.linalg import lapack

        pair = lapack.get_lapack_funcs(("geqrt", "gemqrt"), (np.empty(0, dtype),))
        _LAPACK_QR[dtype.char] = pair
    return pair


def canonical_phases(diag: Any) -> Any:
    """Unit factors ``d`` with ``diag * d`` real and <= 0 (1 where ``diag`` is 0).

    The sign convention of every QR here (``Q_jj <= 0``); also used to align an augmented
    basis ``[U0 D, Q]`` with it.
    """
    if type(diag) is np.ndarray and diag.dtype.kind == "f":
        return _real_phases(diag)
    xp = bk.namespace_of(diag)
    if not bk.is_complex(diag):
        one, two = unit_scalars(diag)
        return one - two * xp.astype(diag > 0, diag.dtype)  # exactly -1 or 1
    mag = xp.abs(diag)
    one = xp.ones_like(mag)
    if xp.isdtype(diag.dtype, "complex floating"):
        safe = xp.astype(xp.where(mag > 0, mag, one), diag.dtype)
        return xp.where(mag > 0, -xp.conj(diag) / safe, xp.astype(one, diag.dtype))
    return xp.where(diag > 0, -one, one)


def unit_scalars(x: Any) -> tuple[Any, Any]:
    """``(1, 2)`` as 0-d arrays of the type, dtype and device of ``x`` (made once).

    Signs ``1 - 2 b`` of a boolean ``b`` formed with them cost three elementwise operations
    and no type promotion.
    """
    key = (type(x), x.dtype, bk.device_key(x))
    units = _UNITS.get(key)
    if units is None:
        xp = bk.namespace_of(x)
        dev = bk.device(x)
        units = _UNITS[key] = (
            xp.asarray(1, dtype=x.dtype, device=dev),
            xp.asarray(2, dtype=x.dtype, device=dev),
        )
    return units


#: ``(1, 2)`` as 0-d arrays, by array type, dtype and device.
_UNITS: dict[tuple[Any, Any, Any], tuple[Any, Any]] = {}


def _conj(d: Any) -> Any:
    xp = bk.namespace(d)
    return xp.conj(d) if xp.isdtype(d.dtype, "complex floating") else d


# --- basis extension helpers -------------------------------------------------------------------


def _project_out(basis: list[Any], X: Any, *, copy: bool) -> Any:
    """``X - sum_j B_j (B_j^H X)`` for orthonormal blocks ``B_j`` (in place on own NumPy arrays)."""
    if _is_numpy(X):
        out = np.array(X, order="C", copy=True) if copy else X
        for B in basis:
            if B.shape[1] == 0:
                continue
            C = _inner(B, out)
            for b in bk.row_blocks(out):
                out[b] -= B[b] @ C
        return out
    for B in basis:
        if int(B.shape[1]) > 0:
            X = X - B @ _inner(B, X)
    return X


def _orthonormal_directions(Q: Any, limit: int) -> Any:
    """The at most ``limit`` directions of ``span(Q)`` with Gram eigenvalue >= 1/2, orthonormal.

    ``Q`` is orthonormal up to its projection onto an orthonormal basis: a column that lay
    mostly in that basis (a rounding-error direction of a rank-deficient input) has lost most
    of its norm and is dropped. The kept directions ``Q V diag(lambda)^{-1/2}`` are orthonormal
    to working precision (symmetric orthonormalisation of a well-conditioned ``Q``).
    """
    xp = bk.namespace(Q)
    G = bk.to_host(_gram(Q))
    if G.size == 0:
        return Q[:, :0]
    lam, V = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    keep = int(min(limit, np.count_nonzero(lam >= _NEAR_ORTHONORMAL)))
    if keep == 0:
        return Q[:, :0]
    W = (V[:, :keep] / np.sqrt(lam[:keep])[None, :]).astype(G.dtype, copy=False)
    if not _is_numpy(Q):
        W = xp.asarray(W, device=bk.device(Q))
    return _times_inverse(Q, W, owned=False, w=None)[0]


def _random_like(U0: Any, k: int, attempt: int) -> Any:
    """``k`` seeded Gaussian columns with the rows, dtype and device of ``U0``."""
    xp = bk.namespace(U0)
    rng = np.random.default_rng([_FILL_SEED, attempt])
    m = int(U0.shape[0])
    Z = rng.standard_normal((m, k))
    if xp.isdtype(U0.dtype, "complex floating"):
        Z = Z + 1j * rng.standard_normal((m, k))
    Z = Z.astype(bk.to_host(U0[:1, :1]).dtype)
    return Z if _is_numpy(U0) else xp.asarray(Z, device=bk.device(U0))
