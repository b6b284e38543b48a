"""The numba kernels of :mod:`lowrank_integrators._fused` (the optional extra ``fast``).

This module imports numba; :mod:`lowrank_integrators._fused` imports it only when a kernel is
first needed, so that importing the package never imports numba. Every kernel is a
module-level function: numba caches a compiled function on disk (``cache=True``) only when
the functions it calls are module globals too. Kernels defined inside a function and calling
one another through the enclosing scope were compiled afresh in every process (about 2 s
before the first step of a run) and wrote a new cache file each time.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "all_finite",
    "apply_then",
    "beside_over_rows",
    "beside_rows",
    "bias_relu",
    "fold_rows",
    "folded_stage",
    "register_rows",
    "register_update",
    "relu_gradient",
    "sandwich_rows",
    "stage",
    "stage_rows",
]


@numba.njit(cache=True, nogil=True)
def stage_rows(indptr, indices, data, X, M, has_m, U, coef, lo, hi, out, source):
    # rows lo:hi of A X + X M + U coef into out[: hi - lo]: BLAS writes the block of
    # X M, and the block of the source U coef into a small buffer; both are still in
    # cache when the sparse rows are added
    k = X.shape[1]
    q = U.shape[1]
    if has_m:
        np.dot(X[lo:hi], M, out[: hi - lo])
    if q > 0:
        np.dot(U[lo:hi], coef, source[: hi - lo])
    for i in range(lo, hi):
        o = out[i - lo]
        if q > 0:
            s = source[i - lo]
            if has_m:
                for c in range(k):
                    o[c] += s[c]
            else:
                for c in range(k):
                    o[c] = s[c]
        elif not has_m:
            for c in range(k):
                o[c] = 0
        for p in range(indptr[i], indptr[i + 1]):
            x = X[indices[p]]
            a = data[p]
            for c in range(k):
                o[c] += a * x[c]


@numba.njit(cache=True, nogil=True)
def stage(indptr, indices, data, X, M, has_m, U, coef, out, rows, source):
    n = X.shape[0]
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        stage_rows(indptr, indices, data, X, M, has_m, U, coef, lo, hi, out[lo:hi], source)


@numba.njit(cache=True, nogil=True)
def fold_rows(acc, nxt, F, x, shift, lo, hi, c, a, mode):
    # rows lo:hi of the registers from the stage's rows F[i - lo] and the start's rows
    # x[i - shift]: mode 0 acc = x + c F, nxt = x + a F; 1 acc += c F, nxt = x + a F;
    # 2 acc += c F; 3 nxt = x + a F
    k = F.shape[1]
    if mode == 3:
        for i in range(lo, hi):
            for j in range(k):
                nxt[i, j] = x[i - shift, j] + a * F[i - lo, j]
        return
    if mode == 0:
        for i in range(lo, hi):
            for j in range(k):
                f = F[i - lo, j]
                xij = x[i - shift, j]
                acc[i, j] = xij + c * f
                nxt[i, j] = xij + a * f
    elif mode == 1:
        for i in range(lo, hi):
            for j in range(k):
                f = F[i - lo, j]
                acc[i, j] += c * f
                nxt[i, j] = x[i - shift, j] + a * f
    else:
        for i in range(lo, hi):
            for j in range(k):
                acc[i, j] += c * F[i - lo, j]


@numba.njit(cache=True, nogil=True)
def folded_stage(
    indptr, indices, data, X, M, has_m, U, coef, source, block,
    acc, nxt, x0, left, right, factored, start, c, a, mode,
):  # fmt: skip
    # the stage's block of rows is computed into ``block`` (in cache) and folded into
    # the registers at once (the modes of fold_rows)
    n = X.shape[0]
    rows = block.shape[0]
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        stage_rows(indptr, indices, data, X, M, has_m, U, coef, lo, hi, block, source)
        if factored and mode != 2:
            np.dot(left[lo:hi], right, start[: hi - lo])
            fold_rows(acc, nxt, block, start, lo, lo, hi, c, a, mode)
        else:
            fold_rows(acc, nxt, block, x0, 0, lo, hi, c, a, mode)


@numba.njit(cache=True, nogil=True)
def apply_then(indptr, indices, data, X, W, U, coef, buf, out):
    # rows lo:hi of A X into buf (in cache), then their product with W into out; U and
    # coef are empty (no source term)
    m = out.shape[0]
    rows = buf.shape[0]
    for lo in range(0, m, rows):
        hi = min(lo + rows, m)
        stage_rows(indptr, indices, data, X, W, False, U, coef, lo, hi, buf, buf)
        np.dot(buf[: hi - lo], W, out[lo:hi])


@numba.njit(cache=True, nogil=True)
def register_rows(acc, stage, k, x, shift, lo, hi, c, a, first):
    # x[i - shift] is row i of the start value
    cols = k.shape[1]
    if first:
        for i in range(lo, hi):
            for j in range(cols):
                kij = k[i, j]
                xij = x[i - shift, j]
                acc[i, j] = xij + c * kij
                stage[i, j] = xij + a * kij
    else:
        for i in range(lo, hi):
            for j in range(cols):
                kij = k[i, j]
                xij = x[i - shift, j]
                acc[i, j] += c * kij
                stage[i, j] = xij + a * kij


@numba.njit(cache=True, nogil=True)
def register_update(acc, stage, k, x0, left, right, factored, c, a, first, buf):
    n = k.shape[0]
    if not factored:
        register_rows(acc, stage, k, x0, 0, 0, n, c, a, first)
        return
    rows = buf.shape[0]
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        np.dot(left[lo:hi], right, buf[: hi - lo])
        register_rows(acc, stage, k, buf, lo, lo, hi, c, a, first)


@numba.njit(cache=True, nogil=True)
def beside_rows(left, d, right, out):
    r, k = left.shape[1], right.shape[1]
    for i in range(left.shape[0]):
        for j in range(r):
            out[i, j] = left[i, j] * d[j]
        for j in range(k):
            out[i, r + j] = right[i, j]


@numba.njit(cache=True, nogil=True)
def beside_over_rows(left, d, right, out):
    # left lies in out's storage (see _fused.beside_over): row i of left is read whole
    # before row i of out is written, and rows are written in ascending order
    r, k = left.shape[1], right.shape[1]
    row = np.empty(r, dtype=left.dtype)
    for i in range(left.shape[0]):
        for j in range(r):
            row[j] = left[i, j] * d[j]
        for j in range(r):
            out[i, j] = row[j]
        for j in range(k):
            out[i, r + j] = right[i, j]


@numba.njit(cache=True, nogil=True)
def sandwich_rows(indptr, indices, data, W, V, buf, part, out):
    n, k = V.shape
    rows = buf.shape[0]
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        for i in range(lo, hi):
            for c in range(k):
                buf[i - lo, c] = 0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                a = data[p]
                for c in range(k):
                    buf[i - lo, c] += a * V[j, c]
        np.dot(W[lo:hi].T, buf[: hi - lo], part)
        out += part


@numba.njit(cache=True, nogil=True)
def bias_relu(z, b):
    # z = maximum(z + b, 0) in place, with NumPy's maximum: NaN kept, -0 made +0
    zero = z.dtype.type(0)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j] + b[j]
            z[i, j] = v if (v > zero or v != v) else zero


@numba.njit(cache=True, nogil=True)
def relu_gradient(g, a):
    # g *= (a > 0) in place: the product with 1 or 0, as NumPy's multiply by the mask
    one, zero = g.dtype.type(1), g.dtype.type(0)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            g[i, j] = g[i, j] * (one if a[i, j] > zero else zero)


@numba.njit(cache=True, nogil=True)
def all_finite(a):
    # a C-ordered float array (ravel is a view): x - x is 0 for a finite x and NaN for NaN and
    # for either infinity; the test of every entry, without a branch, runs in vector registers
    flat = a.ravel()
    bad = False
    for i in range(flat.shape[0]):
        x = flat[i]
        bad |= (x - x) != 0
    return not bad
