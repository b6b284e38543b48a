"""Every integrator runs on every array namespace: array type in = array type out.

Results on each backend agree with the NumPy float64/complex128 run; float32 agrees to
single-precision accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from tests.problems_for_tests import random_lowrank, skew

METHODS = [
    lri.ProjectorSplitting(order=1),
    lri.ProjectorSplitting(order=2),
    lri.BUG(),
    lri.AugmentedBUG(truncation=lri.FixedRank(3)),
    lri.AugmentedBUG(truncation=lri.Tolerance(1e-3, relative=True)),
]


def build(rng, complex_):
    m, n, r = 12, 10, 3
    A = skew(rng, m, complex_)
    B = rng.standard_normal((n, n)) / n
    C = rng.standard_normal((m, n)) / 4
    if complex_:
        C = C + 1j * rng.standard_normal((m, n)) / 4
    Y0 = random_lowrank(rng, m, n, r, complex_=complex_)
    return A, B, C, Y0


def convert(xp, arrays, dtype):
    return [xp.asarray(np.asarray(a).astype(dtype)) for a in arrays]


@pytest.mark.parametrize("method", METHODS, ids=repr)
@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(np.float64, 1e-10), (np.complex128, 1e-10), (np.float32, 2e-4)],
    ids=["float64", "complex128", "float32"],
)
def test_integrator_runs_on_backend_and_matches_numpy(xp, rng, method, dtype, rtol):
    complex_ = np.issubdtype(dtype, np.complexfloating)
    A, B, C, Y0 = build(rng, complex_)
    wide = np.complex128 if complex_ else np.float64
    reference = lri.solve(lri.SylvesterODE(A, B, C), Y0, (0.0, 0.4), 0.1, method=method)

    Ax, Bx, Cx, U, S, V = convert(xp, [A, B, C, *Y0], dtype)
    Y0x = lri.LowRankMatrix(U, S, V)
    sol = lri.solve(lri.SylvesterODE(Ax, Bx, Cx), Y0x, (0.0, 0.4), 0.1, method=method)

    assert sol.status == "success"
    for factor in sol.Y:
        assert type(factor) is type(U)
        assert array_namespace(factor) == array_namespace(U)
        assert factor.dtype == U.dtype
    assert sol.ranks == reference.ranks
    got = bk.to_host(sol.Y.to_dense()).astype(wide)
    want = reference.Y.to_dense()
    assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want)


def test_mixing_array_libraries_is_an_error(rng):
    import array_api_strict as xs

    U, S, V = random_lowrank(rng, 5, 4, 2)
    with pytest.raises(TypeError, match="one array library"):
        lri.LowRankMatrix(xs.asarray(U), S, V)


def test_dense_problem_on_strict_arrays(rng):
    import array_api_strict as xs

    W = xs.asarray(skew(rng, 8))
    Y0 = lri.LowRankMatrix(*(xs.asarray(a) for a in random_lowrank(rng, 8, 8, 2)))
    problem = lri.DenseODE(lambda t, Y: W @ Y - Y @ W)
    sol = lri.solve(problem, Y0, (0, 1), 0.25, method=lri.ProjectorSplitting())
    assert isinstance(sol.Y.U, type(Y0.U))
    # the flow is a similarity transform: PSI conserves the norm up to the RK4 substep error
    assert abs(sol.Y.norm() - Y0.norm()) < 1e-4 * Y0.norm()


@pytest.mark.parametrize("shape", [(20, 3, 4), (5, 3, 4)], ids=["tall", "wide"])
def test_qr_of_blocks_equals_qr_of_their_concatenation_and_leaves_them_intact(xp, rng, shape):
    m, a, b = shape
    B1, B2 = rng.standard_normal((m, a)), rng.standard_normal((m, b))
    X1, X2 = xp.asarray(B1), xp.asarray(B2)
    Q, R = bk.qr_blocks([X1, X2])
    Qh, Rh = bk.to_host(Q), bk.to_host(R)
    full = np.concatenate([B1, B2], axis=1)
    assert Qh.shape == (m, min(m, a + b)) and type(Q) is type(X1)
    np.testing.assert_allclose(Qh @ Rh, full, atol=1e-13)
    np.testing.assert_allclose(Qh.T @ Qh, np.eye(Qh.shape[1]), atol=1e-13)
    np.testing.assert_array_equal(bk.to_host(X1), B1)
    np.testing.assert_array_equal(bk.to_host(X2), B2)


@pytest.mark.parametrize("rows", [40, 3001])  # one block of rows, and several
def test_qr_of_an_increment_has_the_q_and_diagonal_blocks_of_the_qr_of_the_result(xp, rng, rows):
    """``[U0, K1 - U0 S0] = Q R'`` where ``[U0, K1] = Q R``: the same ``Q`` (columns of
    ``U0 S0`` lie in ``span(U0)``) and ``R = R' [[I, S0], [0, I]]``; ``K1`` is left intact."""
    r, k = 3, 4
    U0 = np.linalg.qr(rng.standard_normal((rows, r)))[0]
    S0 = rng.standard_normal((r, k))
    K1 = U0 @ S0 + 0.1 * rng.standard_normal((rows, k))
    Q, Rp = bk.qr_increment(xp.asarray(U0), xp.asarray(K1), xp.asarray(S0))
    Qh, Rph = bk.to_host(Q), bk.to_host(Rp)
    assert type(Q) is type(xp.asarray(U0)) and Qh.shape == (rows, r + k)
    Q_of_result = bk.to_host(bk.qr_blocks([xp.asarray(U0), xp.asarray(K1)])[0])
    np.testing.assert_allclose(Qh, Q_of_result, atol=1e-12)
    shift = np.block([[np.eye(r), S0], [np.zeros((k, r)), np.eye(k)]])
    np.testing.assert_allclose(Rph @ shift, Qh.T @ np.concatenate([U0, K1], axis=1), atol=1e-12)
    np.testing.assert_allclose(np.tril(Rph, -1), 0.0, atol=0.0)
    np.testing.assert_allclose(Qh.T @ Qh, np.eye(r + k), atol=1e-13)
    np.testing.assert_array_equal(bk.to_host(xp.asarray(K1)), K1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("rows", [5, 3001])
def test_tall_inner_is_the_conjugate_transpose_product(rng, monkeypatch, dtype, rows):
    """Summed by blocks of rows (many blocks here, with a ragged last one) or in one product,
    ``tall_inner(a, b)`` is ``a^H b``; ``a`` and ``b`` are left intact."""
    monkeypatch.setattr(bk, "_INNER_BLOCK_ELEMENTS", 64)
    a = rng.standard_normal((rows, 3)).astype(dtype)
    b = rng.standard_normal((rows, 7)).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal(a.shape)
        b = b + 1j * rng.standard_normal(b.shape)
    a0, b0 = a.copy(), b.copy()
    out = bk.tall_inner(a, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a.conj().T @ b, rtol=tol, atol=tol * rows)
    assert out.dtype == np.result_type(a, b) and out.shape == (3, 7)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("rows", [5, 3001])
def test_tall_times_is_the_product(rng, monkeypatch, dtype, rows):
    """By blocks of rows (many here, with a ragged last one) or in one product,
    ``tall_times(X, M)`` is ``X @ M``, also into a given array; the operands are intact."""
    monkeypatch.setattr(bk, "_TIMES_BLOCK_ELEMENTS", 64)
    X = rng.standard_normal((rows, 6)).astype(dtype)
    M = rng.standard_normal((6, 4)).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        X = X + 1j * rng.standard_normal(X.shape)
    X0, M0 = X.copy(), M.copy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    out = bk.tall_times(X, M)
    np.testing.assert_allclose(out, X @ M, rtol=tol, atol=tol)
    assert out.dtype == np.result_type(X, M) and out.shape == (rows, 4)
    given = np.empty((rows, 4), dtype=np.result_type(X, M))
    assert bk.tall_times(X, M, given) is given
    np.testing.assert_array_equal(given, out)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(M, M0)


def test_tall_times_on_another_library(xp, rng):
    X, M = rng.standard_normal((400, 3)), rng.standard_normal((3, 2))
    out = bk.tall_times(xp.asarray(X), xp.asarray(M))
    np.testing.assert_allclose(bk.to_host(out), X @ M, rtol=1e-12)
    if type(xp.asarray(X)) is not np.ndarray:
        with pytest.raises(TypeError, match="out is for NumPy arrays"):
            bk.tall_times(xp.asarray(X), xp.asarray(M), out=np.empty((400, 2)))


def test_tall_inner_on_another_library(xp, rng):
    a = rng.standard_normal((400, 3))
    b = rng.standard_normal((400, 2))
    out = bk.tall_inner(xp.asarray(a), xp.asarray(b))
    np.testing.assert_allclose(bk.to_host(out), a.T @ b, rtol=1e-12)


@pytest.mark.parametrize(("beta", "alpha"), [(1.0, 1.0), (1.0, -1.0), (0.25, 1.0), (-2.0, 0.5)])
def test_plus_product_is_the_scaled_sum(xp, rng, beta, alpha):
    C, A, B = (
        rng.standard_normal((40, 3)),
        rng.standard_normal((40, 5)),
        rng.standard_normal((5, 3)),
    )
    args = [xp.asarray(a) for a in (C, A, B)]
    out = bk.plus_product(*args, beta=beta, alpha=alpha)
    np.testing.assert_allclose(bk.to_host(out), beta * C + alpha * (A @ B), rtol=1e-12)
    np.testing.assert_array_equal(bk.to_host(args[0]), C)  # C is not modified


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (9, 4), (4, 9), (64, 64)])
def test_svd_of_numpy_matrices_is_a_reduced_svd(rng, dtype, shape):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    x = x.astype(dtype)
    P, sigma, Qh = bk.svd(x)
    k = min(shape)
    assert P.shape == (shape[0], k) and sigma.shape == (k,) and Qh.shape == (k, shape[1])
    assert P.dtype == x.dtype and Qh.dtype == x.dtype and sigma.dtype.kind == "f"
    tol = 1e-5 if dtype in (np.float32, np.complex64) else 1e-13
    np.testing.assert_allclose((P * sigma) @ Qh, x, atol=tol * np.abs(x).max() * k)
    np.testing.assert_allclose(sigma, np.linalg.svd(x, compute_uv=False), rtol=tol, atol=tol)
    assert np.all(np.diff(sigma) <= 0)
    np.testing.assert_allclose(P.conj().T @ P, np.eye(k), atol=10 * tol)
    np.testing.assert_array_equal(bk.svd(x)[1], sigma)  # the cached LAPACK call again


def test_device_keys_are_hashable_for_devices_without_a_hash(monkeypatch):
    class Device:  # as CuPy's: equality by ordinal, and no hash
        __hash__ = None

        def __init__(self, ordinal):
            self.id = ordinal

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

    monkeypatch.setattr(bk, "device", lambda x: Device(int(x.shape[0])))
    keys = {bk.device_key(np.ones(2)), bk.device_key(np.ones(2)), bk.device_key(np.ones(3))}
    assert len(keys) == 2  # one per ordinal
