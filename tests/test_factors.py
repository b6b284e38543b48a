"""LowRankMatrix: construction, truncated SVD, validation of factors."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from tests.problems_for_tests import orthonormal


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_from_dense_rank_gives_the_best_approximation(rng, dtype):
    A = rng.standard_normal((9, 7))
    if np.issubdtype(dtype, np.complexfloating):
        A = A + 1j * rng.standard_normal((9, 7))
    A = A.astype(dtype)
    Y = lri.LowRankMatrix.from_dense(A, rank=3)
    s = np.linalg.svd(A.astype(np.complex128), compute_uv=False)
    assert Y.shape == (9, 7) and Y.rank == 3 and Y.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert np.linalg.norm(A - Y.to_dense()) == pytest.approx(np.linalg.norm(s[3:]), rel=tol)
    U, S, V = Y  # unpacks like (U, S, V)
    assert U.shape == (9, 3) and S.shape == (3, 3) and V.shape == (7, 3)


def test_from_dense_tol_keeps_the_fewest_values(rng):
    U, V = orthonormal(rng, 10, 4), orthonormal(rng, 8, 4)
    A = U @ np.diag([1.0, 1e-2, 1e-5, 1e-9]) @ V.T
    assert lri.LowRankMatrix.from_dense(A, tol=1e-4).rank == 2
    assert lri.LowRankMatrix.from_dense(A, tol=1e-8).rank == 3


def test_factored_products_match_dense(rng):
    Y = lri.LowRankMatrix(
        orthonormal(rng, 7, 2), rng.standard_normal((2, 2)), orthonormal(rng, 5, 2)
    )
    X, Z = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    np.testing.assert_allclose(Y.matmul(X), Y.to_dense() @ X)
    np.testing.assert_allclose(Y.rmatmul_adjoint(Z), Y.to_dense().T @ Z)
    assert Y.norm() == pytest.approx(np.linalg.norm(Y.to_dense()))
    np.testing.assert_allclose(Y.singular_values(), np.linalg.svd(Y.to_dense())[1][:2])


def good(rng, m=6, n=5, r=2):
    return orthonormal(rng, m, r), np.eye(r), orthonormal(rng, n, r)


def test_non_orthonormal_factor_is_rejected_with_its_name(rng):
    U, S, V = good(rng)
    with pytest.raises(ValueError, match="U must have orthonormal columns"):
        lri.LowRankMatrix(2 * U, S, V)
    with pytest.raises(ValueError, match="V must have orthonormal columns"):
        lri.LowRankMatrix(U, S, V + 1e-4)


def test_orthonormality_tolerance_scales_with_dtype(rng):
    U, S, V = good(rng)
    # a defect of 1e-6 is round-off for float32 but not for float64
    lri.LowRankMatrix(*(a.astype(np.float32) for a in (U + 1e-6, S, V)))
    with pytest.raises(ValueError, match="orthonormal"):
        lri.LowRankMatrix(U + 1e-6, S, V)


@pytest.mark.parametrize(
    ("which", "value", "exc", "match"),
    [
        ("S", np.eye(3), ValueError, "shape mismatch"),
        ("V", np.eye(5)[:, :3], ValueError, "shape mismatch"),
        ("S", np.array([[np.nan, 0], [0, 1]]), ValueError, "non-finite"),
        ("U", np.ones(6), ValueError, "2-D"),
        ("U", [[1.0]], TypeError, "U must be an array"),
        ("S", np.eye(2, dtype=int), TypeError, "floating"),
        ("S", np.eye(2, dtype=np.float32), TypeError, "share one dtype"),
    ],
)
def test_bad_factors_are_rejected(rng, which, value, exc, match):
    factors = dict(zip("USV", good(rng), strict=True))
    factors[which] = value
    with pytest.raises(exc, match=match):
        lri.LowRankMatrix(factors["U"], factors["S"], factors["V"])


def test_rank_larger_than_the_dimensions_is_rejected(rng):
    A = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="rank"):
        lri.LowRankMatrix.from_dense(A, rank=4)
    with pytest.raises(ValueError, match="exceeds min"):
        lri.LowRankMatrix(np.eye(4), np.eye(4), np.eye(3, 4))


@pytest.mark.parametrize("kwargs", [{}, {"rank": 2, "tol": 1e-3}, {"rank": 0}, {"tol": -1.0}])
def test_from_dense_argument_errors(rng, kwargs):
    with pytest.raises((ValueError, TypeError)):
        lri.LowRankMatrix.from_dense(rng.standard_normal((4, 3)), **kwargs)


def test_from_dense_rejects_non_finite(rng):
    A = rng.standard_normal((4, 3))
    A[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        lri.LowRankMatrix.from_dense(A, rank=1)
