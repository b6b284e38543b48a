"""Thin QR of tall matrices and orthonormal basis extension.

Specification: for every input (well conditioned, ill conditioned with sigma_k / sigma_1 down to
exactly 0, zero, complex, single precision, any array library) the Q factor is orthonormal to
working precision, ``Q R`` reproduces the input, ``R`` is upper triangular, the diagonal entries
``Q_jj`` are real and non-positive (so that ``Q`` does not depend on the signs of the input's
columns), the input is left intact, and the cheap method (CholeskyQR2) is the one used on large
inputs when it is safe; small inputs take one Householder QR. Factorisations are checked by
invariants, not entry by entry.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_integrators import _backend as bk
from lowrank_integrators import _qr
from lowrank_integrators._qr import extend_basis, tall_q, tall_qr, tall_qr_project

DTYPES = {
    "float64": (np.float64, 1e-13),
    "complex128": (np.complex128, 1e-13),
    "float32": (np.float32, 1e-5),
}
RATIOS = [1.0, 1e-4, 1e-8, 1e-12, 0.0]


@pytest.fixture(params=["cholesky driver", "small input"])
def route(request, monkeypatch):
    """Runs a test through both routes of a QR: the Cholesky driver with its fallbacks (every
    input counted as large), and the one Householder QR of small inputs."""
    if request.param == "cholesky driver":
        monkeypatch.setattr(_qr, "_SMALL_ENTRIES", 0)
    return request.param


def graded(rng, m, k, ratio, dtype):
    """An m x k matrix with singular values from 1 down to ``ratio`` (two exact zeros if 0)."""
    complex_ = np.issubdtype(dtype, np.complexfloating)

    def gaussian(*shape):
        g = rng.standard_normal(shape)
        return g + 1j * rng.standard_normal(shape) if complex_ else g

    U = np.linalg.qr(gaussian(m, k))[0]
    V = np.linalg.qr(gaussian(k, k))[0]
    if ratio > 0:
        s = np.logspace(0, np.log10(ratio), k)
    else:
        s = np.r_[np.logspace(0, -2, k - 2), 0.0, 0.0]
    return ((U * s) @ V.conj().T).astype(dtype)


def host(a):
    """``a`` on the host in double precision (no copy for float64/complex128 NumPy arrays)."""
    a = bk.to_host(a)
    return a.astype(np.result_type(a.dtype, np.float64), copy=False)


def orthonormality(Q):
    Q = host(Q)
    return np.abs(Q.conj().T @ Q - np.eye(Q.shape[1])).max()


def check_qr(X, Q, R, tol):
    Xh, Qh, Rh = (host(a) for a in (X, Q, R))
    k = min(Xh.shape)
    assert Qh.shape == (Xh.shape[0], k) and Rh.shape == (k, Xh.shape[1])
    assert orthonormality(Q) <= tol
    assert np.linalg.norm(Qh @ Rh - Xh) <= 10 * tol * max(np.linalg.norm(Xh), 1e-300)
    np.testing.assert_array_equal(np.tril(Rh, -1), 0)
    d = np.diagonal(Qh)
    assert np.all(d.real <= 0) and np.all(np.abs(d.imag) <= tol)


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"ratio={r:g}")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_q_is_orthonormal_and_qr_reproduces_x(xp, rng, route, dtype_name, ratio):
    dtype, tol = DTYPES[dtype_name]
    X0 = graded(rng, 3000, 6, ratio, dtype)
    X = xp.asarray(X0)
    Q, R = tall_qr(X)
    assert type(Q) is type(X) and Q.dtype == X.dtype and R.dtype == X.dtype
    check_qr(X, Q, R, tol)
    np.testing.assert_array_equal(bk.to_host(X), X0)


@pytest.mark.parametrize("ratio", [1e-4, 0.0], ids=["ratio=1e-4", "ratio=0"])
def test_orthonormal_at_two_to_the_twenty_rows(rng, ratio):
    X = rng.standard_normal((2**20, 4)) @ np.diag([1.0, 0.1, 0.01, ratio])
    Q, R = tall_qr(X)
    check_qr(X, Q, R, 1e-13)
    assert Q.flags.c_contiguous


@pytest.mark.parametrize(
    ("ratio", "method"),
    [
        (1.0, "CholeskyQR2"),
        (1e-4, "CholeskyQR2"),
        (1e-10, "Householder"),  # the Cholesky factorisation breaks down: TSQR at once
        (0.0, "Householder"),
    ],
)
def test_the_cheapest_safe_method_is_chosen(rng, ratio, method):
    X = graded(rng, 20_000, 8, ratio, np.float64)
    assert X.size > _qr._SMALL_ENTRIES
    assert _qr._factor(X, None)[3] == method


def nearly_dependent(rng, distance):
    """A graded 20000 x 8 block whose last column lies ``distance`` (relative) away from the
    first: an estimated ``kappa^2 u`` of about ``2e-16 / distance^2``."""
    X = graded(rng, 20_000, 8, 1e-2, np.float64)
    noise = rng.standard_normal(20_000) / np.sqrt(20_000)
    X[:, -1] = X[:, 0] + distance * np.linalg.norm(X[:, 0]) * noise
    return X


def test_a_nearly_dependent_column_takes_the_shifted_passes(rng):
    # The Gram matrix has a Cholesky factor, but a column 3e-8 away from the span of the
    # others puts the condition estimate (kappa^2 u about 0.25) beyond an unshifted pass:
    # shifted CholeskyQR3.
    X = nearly_dependent(rng, 3e-8)
    Q, R, _, method = _qr._factor(X, None)
    assert method == "shifted CholeskyQR3"
    check_qr(X, Q, R, 1e-13)


def test_an_estimate_within_the_bound_takes_two_unshifted_passes(rng):
    # A column 1e-7 away (kappa^2 u about 0.02, kappa about 1e7): the first pass leaves
    # ||Q^H Q - I|| near 0.02, far below 1/2, and the second makes Q orthonormal.
    X = nearly_dependent(rng, 1e-7)
    assert 1e-2 < _qr._kappa2(X.T @ X, np.linalg.cholesky(X.T @ X).T) * 2.0**-52 < 0.1
    Q, R, _, method = _qr._factor(X, None)
    assert method == "CholeskyQR2"
    check_qr(X, Q, R, 1e-13)


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"ratio={r:g}")
@pytest.mark.parametrize("shape", [(12, 4), (100, 10), (2000, 8)], ids=str)
def test_small_inputs_take_one_householder_qr(rng, shape, ratio):
    """Below the size where the Cholesky driver's checks cost more than a factorisation."""
    X = graded(rng, *shape, ratio, np.float64)
    assert X.size <= _qr._SMALL_ENTRIES
    Q, R, _, method = _qr._factor(X, None)
    assert method == "Householder"
    check_qr(X, Q, R, 1e-13)
    assert Q.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "shape",
    [(1, 1), (12, 4), (16, 4), (3, 7), (200, 30), (64, 64), (784, 4), (1024, 8), (300, 9)],
    ids=str,
)
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full", "deficient"])
def test_the_small_real_route_is_lapacks_householder_qr_with_the_canonical_signs(
    rng, dtype, shape, rank_deficient
):
    """Bit for bit: geqrf and orgqr (unblocked below 32 columns), then ``Q_jj <= 0``; with
    or without ``R`` (narrow tall blocks get their signs column by column)."""
    import scipy.linalg

    x = rng.standard_normal(shape).astype(dtype)
    if rank_deficient:
        x[:, -1] = 0
    Q, R, _, method = _qr._factor(x, None)
    q, r = scipy.linalg.qr(x, mode="economic", check_finite=False)
    d = np.where(np.diagonal(q) > 0, -1, 1).astype(dtype)
    assert method == "Householder" and Q.dtype == R.dtype == dtype
    assert Q.flags.c_contiguous and R.flags.c_contiguous
    np.testing.assert_array_equal(Q, q * d)
    np.testing.assert_array_equal(R, d[:, None] * np.triu(r))
    Q_alone = tall_q(x)
    assert Q_alone.flags.c_contiguous
    np.testing.assert_array_equal(Q_alone, Q)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128], ids=str)
@pytest.mark.parametrize("shape", [(500, 32), (3000, 20), (1024, 64)], ids=str)
def test_a_row_major_householder_q_is_the_same_q_without_a_transposing_copy(rng, dtype, shape):
    """Above the unblocked size, ``row_major`` applies the reflectors from the right (real
    blocks): ``Q`` comes C-ordered and equals the Fortran-ordered one to round-off; ``R`` is
    the same."""
    x = rng.standard_normal(shape)
    if np.iscomplexobj(np.empty(0, dtype)):
        x = x + 1j * rng.standard_normal(shape)
    x = x.astype(dtype)
    assert x.size > _qr._QRT_FROM
    q, r = _qr._lapack_qr(x)
    q_rows, r_rows = _qr._lapack_qr(x, row_major=True)
    assert q.flags.f_contiguous and q_rows.flags.c_contiguous
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(q_rows, q, rtol=0, atol=20 * eps)
    np.testing.assert_array_equal(r_rows, r)
    assert orthonormality(q_rows) <= 100 * eps


def test_zero_and_wide_matrices_fall_back_to_householder(rng):
    zero = np.zeros((20_000, 4))
    assert zero.size > _qr._SMALL_ENTRIES
    Q, R, _, method = _qr._factor(zero, None)
    assert method == "Householder"
    check_qr(zero, Q, R, 1e-14)
    wide = rng.standard_normal((3, 7))
    Q, R, _, method = _qr._factor(wide, None)
    assert method == "Householder" and Q.shape == (3, 3) and R.shape == (3, 7)
    check_qr(wide, Q, R, 1e-13)


def test_full_rank_result_is_the_householder_qr_with_its_sign_normalisation(rng, route):
    X = graded(rng, 500, 7, 1e-3, np.complex128)
    Q, R = tall_qr(X)
    Qh, Rh = np.linalg.qr(X)
    q = np.diagonal(Qh)
    phase = -np.conj(q) / np.abs(q)
    np.testing.assert_allclose(Q, Qh * phase, atol=1e-11)
    np.testing.assert_allclose(R, np.conj(phase)[:, None] * Rh, atol=1e-11)


@pytest.mark.parametrize("ratio", [1.0, 1e-4], ids=lambda r: f"ratio={r:g}")
def test_q_does_not_depend_on_the_signs_or_phases_of_the_columns(rng, route, ratio):
    """(For a well-conditioned X: Q is then determined by X to working precision.)"""
    X = graded(rng, 800, 5, ratio, np.complex128)
    phases = np.exp(1j * rng.uniform(0, 2 * np.pi, 5))
    Q, R = tall_qr(X)
    Qp, Rp = tall_qr(X * phases)
    np.testing.assert_allclose(Qp, Q, atol=1e-10)
    np.testing.assert_allclose(Rp, R * phases, atol=1e-10)
    real = graded(rng, 800, 5, ratio, np.float64)
    np.testing.assert_allclose(tall_qr(-real)[0], tall_qr(real)[0], atol=1e-10)


def test_tsqr_fallback_matches_lapack_on_many_row_blocks(rng):
    X = graded(rng, 40_000, 16, 0.0, np.float64)
    Q, R = _qr._tsqr(X)
    d = _qr.canonical_phases(np.diagonal(Q))
    check_qr(X, Q * d, d[:, None] * R, 1e-13)


@pytest.mark.parametrize("dtype_name", ["float64", "complex128"])
def test_projection_formed_with_q_equals_q_adjoint_times_w(xp, rng, route, dtype_name):
    dtype, tol = DTYPES[dtype_name]
    X = xp.asarray(graded(rng, 7000, 5, 1e-6, dtype))
    W = xp.asarray(graded(rng, 7000, 3, 1.0, dtype))
    Q, R, M = tall_qr_project(X, W)
    Qh, Wh = host(Q), host(W)
    np.testing.assert_allclose(bk.to_host(M), Qh.conj().T @ Wh, atol=tol)
    check_qr(X, Q, R, tol)


def test_projection_requires_matching_rows(rng):
    with pytest.raises(ValueError, match="rows"):
        tall_qr_project(rng.standard_normal((10, 2)), rng.standard_normal((9, 2)))
    with pytest.raises(ValueError, match="2-D"):
        tall_qr(rng.standard_normal(10))


# --- basis extension ---------------------------------------------------------------------------


def extension_inputs(rng, m, r, k, dtype):
    U0 = graded(rng, m, r, 1.0, dtype)
    U0 = np.linalg.qr(U0)[0]
    inside = U0 @ graded(rng, r, k, 1.0, dtype) if k <= r else U0 @ rng.standard_normal((r, k))
    return U0, {
        "generic": graded(rng, m, k, 1e-3, dtype),
        "ill-conditioned": graded(rng, m, k, 1e-12, dtype),
        "inside span(U0)": inside.astype(dtype),
        "nearly inside": (inside + 1e-12 * graded(rng, m, k, 1.0, dtype)).astype(dtype),
        "zero": np.zeros((m, k), dtype),
        "half inside": np.concatenate(
            [U0[:, : k // 2], graded(rng, m, k - k // 2, 1.0, dtype)], axis=1
        ),
    }


def check_extension(U0, X, Q, tol):
    U0h, Xh, Qh = (host(a) for a in (U0, X, Q))
    m, r = U0h.shape
    assert Qh.shape == (m, min(Xh.shape[1], m - r))
    B = np.concatenate([U0h, Qh], axis=1)
    assert orthonormality(B) <= tol
    # [U0, Q]^H U0 = [I; 0]
    np.testing.assert_allclose(B.conj().T @ U0h, np.eye(B.shape[1], r), atol=tol)
    # the span of X is contained in span([U0, Q])
    residual = Xh - B @ (B.conj().T @ Xh)
    assert np.linalg.norm(residual) <= 100 * tol * max(np.linalg.norm(Xh), 1.0)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_extension_is_orthonormal_for_every_kind_of_x(xp, rng, route, dtype_name):
    dtype, tol = DTYPES[dtype_name]
    U0, cases = extension_inputs(rng, 400, 5, 4, dtype)
    for name, X in cases.items():
        Q = extend_basis(xp.asarray(U0), xp.asarray(X))
        assert type(Q) is type(xp.asarray(U0)), name
        check_extension(U0, X, Q, tol)


def test_extension_fills_up_to_the_dimension_and_is_deterministic(rng, route):
    U0 = np.eye(6)[:, :4]
    Q = extend_basis(U0, np.zeros((6, 5)))
    check_extension(U0, np.zeros((6, 5)), Q, 1e-14)
    assert Q.shape == (6, 2)
    np.testing.assert_array_equal(Q, extend_basis(U0, np.zeros((6, 5))))
    assert extend_basis(np.eye(3), rng.standard_normal((3, 2))).shape == (3, 0)


def test_extension_at_two_to_the_twenty_rows(rng):
    U0 = np.linalg.qr(rng.standard_normal((2**20, 4)))[0]
    X = np.concatenate([U0[:, :2] @ rng.standard_normal((2, 2)), np.zeros((2**20, 2))], axis=1)
    X[:, 3] = rng.standard_normal(2**20)
    Q = extend_basis(U0, X)
    check_extension(U0, X, Q, 1e-13)


def test_extension_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="rows"):
        extend_basis(np.eye(5)[:, :2], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        extend_basis(np.eye(5)[:, :2], np.zeros(5))


@pytest.mark.parametrize("ratio", [1e-4, 1e-10, 0.0], ids=lambda r: f"ratio={r:g}")
def test_overwriting_the_input_gives_the_same_factorisation(rng, route, ratio):
    X = graded(rng, 3000, 6, ratio, np.float64)
    Q = tall_qr(X)[0]
    work = X.copy()
    Qo, Ro = tall_qr(work, overwrite_x=True)
    check_qr(X, Qo, Ro, 1e-13)
    if ratio > 0:
        np.testing.assert_allclose(Qo, Q, atol=1e-10)


def test_small_row_blocks_change_nothing(rng, route, monkeypatch):
    X = graded(rng, 500, 5, 1e-6, np.complex128)
    W = graded(rng, 500, 2, 1.0, np.complex128)
    Q, R, M = tall_qr_project(X, W)
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    Qb, Rb, Mb = tall_qr_project(X, W)
    for a, b in ((Q, Qb), (R, Rb), (M, Mb)):
        np.testing.assert_allclose(a, b, atol=1e-13)
    check_qr(X, Qb, Rb, 1e-13)
    U0 = np.linalg.qr(W)[0]
    check_extension(U0, X, extend_basis(U0, X), 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("shape", [(40, 3), (784, 4), (9, 9), (3000, 40), (5, 8)])
def test_the_q_factor_alone_is_the_q_of_the_full_qr(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    expected = tall_qr(x)[0]
    got = tall_q(x.copy(), overwrite_x=True)
    assert got.dtype == expected.dtype and got.flags.c_contiguous == expected.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("project", [False, True], ids=["qr", "qr_project"])
def test_a_non_finite_tall_input_is_refused_before_it_is_overwritten(route, rng, bad, project):
    from lowrank_integrators.errors import NonFiniteError

    X = rng.standard_normal((3000, 4))
    X[1234, 2] = bad
    kept = X.copy()
    with pytest.raises(NonFiniteError, match=r"QR \(shape \(3000, 4\)\)"):
        if project:
            bk.qr_project(X, rng.standard_normal((3000, 2)), overwrite=True)
        else:
            bk.qr(X, overwrite=True)
    np.testing.assert_array_equal(X, kept)


def test_a_finite_input_whose_gram_matrix_overflows_is_factorised(route):
    """The finiteness test read off the Gram matrix does not refuse finite input."""
    X = graded(np.random.default_rng(3), 3000, 4, 1e-3, np.float64) * 1e160
    Q, R = bk.qr(X.copy(), overwrite=True)
    assert np.all(np.isfinite(Q))
    np.testing.assert_allclose(Q.T @ Q, np.eye(4), atol=1e-13)
    np.testing.assert_allclose(Q @ R, X, rtol=0, atol=1e-13 * np.abs(X).max())


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_triangular_products_in_place_equal_the_general_product(rng, monkeypatch, dtype_name):
    """The passes of CholeskyQR apply R^{-1} by trmm in place: the same as Q @ R^{-1}."""
    dtype, tol = DTYPES[dtype_name]
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 50)
    Q = graded(rng, 400, 6, 1.0, dtype)
    Ri = np.triu(graded(rng, 6, 6, 0.5, dtype))
    w = graded(rng, 400, 3, 1.0, dtype)
    expected = Q @ Ri
    for owned in (False, True):
        x = Q.copy()
        out, M = _qr._times_inverse(x, Ri, owned=owned, w=w, triangular=True)
        assert (out is x) == owned and out.flags.c_contiguous
        scale = np.abs(expected).max()
        np.testing.assert_allclose(out, expected, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(M, expected.conj().T @ w, rtol=0, atol=tol * scale * 20)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("defect", [0.0, 1e-8, 0.1])
def test_one_pass_on_a_nearly_orthonormal_matrix_is_the_tall_q_up_to_rounding(
    rng, dtype_name, defect
):
    dtype, tol = DTYPES[dtype_name]
    m, k = 20_000, 8
    Q0 = graded(rng, m, k, 1.0, dtype)  # orthonormal
    X = (Q0 + defect * graded(rng, m, k, 1.0, dtype) / np.sqrt(k)).astype(dtype)
    X_before = X.copy()
    Q = _qr.nearly_orthonormal_q(X)
    assert Q is not None and Q.dtype == X.dtype and Q.flags.c_contiguous
    np.testing.assert_array_equal(X, X_before)
    assert orthonormality(Q) <= tol
    d = np.diagonal(host(Q))
    assert np.all(d.real <= 0) and np.all(np.abs(d.imag) <= tol)
    np.testing.assert_allclose(host(Q), host(tall_q(X)), rtol=0, atol=20 * tol)
    assert _qr.nearly_orthonormal_q(X, overwrite_x=True) is X  # in place when allowed


def test_one_pass_refuses_what_is_not_nearly_orthonormal(rng):
    X = graded(rng, 20_000, 8, 1e-3, np.float64)
    X_before = X.copy()
    assert _qr.nearly_orthonormal_q(X, overwrite_x=True) is None
    np.testing.assert_array_equal(X, X_before)
    small = graded(rng, 100, 4, 1.0, np.float64)  # below the Cholesky driver's size
    assert _qr.nearly_orthonormal_q(small) is None
    with pytest.raises(ValueError, match="2-D"):
        _qr.nearly_orthonormal_q(np.zeros(5))


@pytest.mark.parametrize("ratio", [1e-8, 0.0], ids=lambda r: f"ratio={r:g}")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("owned", [False, True], ids=["copy", "owned"])
def test_tsqr_over_many_row_blocks_is_a_householder_qr(rng, dtype_name, ratio, owned):
    # Several blocks (and a last block of other height): the block reflectors applied to the
    # small Q's blocks give an orthonormal Q and Q R = X, also for rank-deficient X.
    dtype, tol = DTYPES[dtype_name]
    m, k = 20 * _qr._TSQR_ROWS + 37, 7  # more entries than one row block of the kernels
    X = graded(rng, m, k, ratio, dtype)
    X[:, -1] = 0  # an exactly zero column besides the graded ones
    work = X.copy()
    Q, R = _qr._tsqr(work, owned=owned)
    assert (Q is work) == owned and Q.flags.c_contiguous and Q.dtype == X.dtype
    assert orthonormality(Q) <= tol
    Qh, Rh, Xh = host(Q), host(R), host(X)
    assert np.linalg.norm(Qh @ Rh - Xh) <= 10 * tol * np.linalg.norm(Xh)
    np.testing.assert_array_equal(np.tril(Rh, -1), 0)


# --- PyTorch: the Cholesky passes read back one number ------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 1e-3, 1e-12, 0.0], ids=lambda r: f"ratio={r:g}")
@pytest.mark.parametrize("dtype_name", ["float64", "complex128", "float32"])
def test_torch_cholesky_passes_give_the_driver_result_bit_for_bit(
    rng, deferred_tests, monkeypatch, dtype_name, ratio
):
    """CholeskyQR2 with its tests left on the device returns exactly what the driver, testing
    on the host pass by pass, returns: where a test fails (ill-conditioned or rank-deficient
    columns) the driver itself takes over."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(graded(rng, 20_000, 8, ratio, DTYPES[dtype_name][0]))
    W = torch.from_numpy(rng.standard_normal((20_000, 3)).astype(X.numpy().real.dtype))
    W = W.to(X.dtype)
    assert X.numel() > _qr._SMALL_ENTRIES
    deferred = _qr._factor(X, W)
    with monkeypatch.context() as patch:
        patch.setattr(bk, "_DEFER", False)
        driver = _qr._factor(X, W)
    assert deferred[3] == driver[3]
    for a, b in zip(deferred[:3], driver[:3], strict=True):
        assert torch.equal(a, b)
    Q, ok = _qr.tall_q_deferred(X)
    assert bool(ok) == (driver[3] == "CholeskyQR2")
    if bool(ok):
        assert torch.equal(Q, driver[0])


def test_torch_cholesky_qr2_reads_back_one_number(rng, host_reads, deferred_tests, monkeypatch):
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(graded(rng, 20_000, 8, 1e-3, np.float64))
    Q, R = tall_qr(X)
    assert host_reads.count == 1
    check_qr(X, Q, R, 1e-13)
    # tall_q_deferred leaves its one number to the caller
    host_reads.count = 0
    Q, ok = _qr.tall_q_deferred(X)
    assert host_reads.count == 0 and ok.shape == () and ok.dtype == torch.bool
    # the same factorisation tested on the host pass by pass waits four times
    monkeypatch.setattr(bk, "_DEFER", False)
    tall_qr(X)
    assert host_reads.count >= 4


def test_torch_tensors_in_host_memory_read_their_tests_as_they_go(rng, host_reads):
    """On a CPU a number read back costs no wait, and the deferred tests' extra operations
    would cost more: the driver tests pass by pass there."""
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(graded(rng, 20_000, 8, 1e-3, np.float64))
    assert not bk.defers_checks(X)
    _, ok = _qr.tall_q_deferred(X)
    assert ok is None and host_reads.count >= 4


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=str)
def test_real_phases_are_minus_one_exactly_where_the_diagonal_is_positive(dtype):
    diag = np.array([2.0, 0.0, -0.0, -3.0, np.inf, -np.inf, np.nan, 1e-30], dtype=dtype)
    d = _qr.canonical_phases(diag)
    assert d.dtype == dtype
    expected = [-1, 1, 1, 1, -1, 1, 1, -1 if dtype(1e-30) > 0 else 1]
    np.testing.assert_array_equal(d, np.array(expected, dtype=dtype))
