"""Factored problems agree with their dense definitions and never need m x n arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from tests.problems_for_tests import random_lowrank


def cplx(rng, shape, complex_):
    X = rng.standard_normal(shape)
    return X + 1j * rng.standard_normal(shape) if complex_ else X


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("c_kind", ["none", "dense", "lowrank"])
def test_sylvester_products_equal_the_dense_field(rng, complex_, sparse, c_kind):
    """Non-symmetric A, B and C: catches a missing conjugate transpose in F^H U."""
    m, n, r, k = 13, 9, 3, 4
    A, B = cplx(rng, (m, m), complex_), cplx(rng, (n, n), complex_)
    C_dense = cplx(rng, (m, n), complex_)
    C = {"none": None, "dense": C_dense, "lowrank": lri.LowRankMatrix.from_dense(C_dense, rank=2)}[
        c_kind
    ]
    C_full = None if C is None else (C if c_kind == "dense" else C.to_dense())
    Aop, Bop = (sp.csr_array(A), sp.csr_array(B)) if sparse else (A, B)
    problem = lri.SylvesterODE(Aop, Bop, C)

    def f(t, Y):
        out = A @ Y + Y @ B.T
        return out if C_full is None else out + C_full

    dense = lri.DenseODE(f)
    Y = random_lowrank(rng, m, n, r, complex_=complex_)
    U, V = cplx(rng, (m, k), complex_), cplx(rng, (n, k), complex_)
    for name, args in [("apply_right", (Y, V)), ("apply_left", (Y, U)), ("project", (Y, U, V))]:
        got = getattr(problem, name)(0.0, *args)
        want = getattr(dense, name)(0.0, *args)
        np.testing.assert_allclose(got, want, atol=1e-12 * np.abs(want).max(), err_msg=name)
    np.testing.assert_allclose(problem.evaluate_dense(0.0, Y), f(0.0, Y.to_dense()), atol=1e-12)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_sylvester_solution_equals_dense_solution(rng, complex_):
    """Whole runs agree too: the factored problem is the same ODE as its dense version."""
    m, n, r = 12, 10, 3
    A, B, C = (cplx(rng, s, complex_) / 4 for s in [(m, m), (n, n), (m, n)])
    Y0 = random_lowrank(rng, m, n, r, complex_=complex_)
    for method in [
        lri.ProjectorSplitting(),
        lri.BUG(),
        lri.AugmentedBUG(truncation=lri.Tolerance(1e-8)),
    ]:
        s1 = lri.solve(lri.SylvesterODE(A, B, C), Y0, (0, 0.5), 0.1, method=method)
        s2 = lri.solve(
            lri.DenseODE(lambda t, Y: A @ Y + Y @ B.T + C), Y0, (0, 0.5), 0.1, method=method
        )
        np.testing.assert_allclose(s1.Y.to_dense(), s2.Y.to_dense(), atol=1e-12)


class NoTranspose:
    """A square operator with only @ and shape: the adjoint cannot be formed."""

    shape = (4, 4)

    def __matmul__(self, X):
        return X


def test_sylvester_rejects_operators_it_cannot_adjoint():
    with pytest.raises(TypeError, match="adjoint"):
        lri.SylvesterODE(NoTranspose())


def test_sylvester_accepts_a_linear_operator(rng):
    from scipy.sparse.linalg import aslinearoperator

    A = rng.standard_normal((8, 8))
    Y = random_lowrank(rng, 8, 6, 2)
    V = rng.standard_normal((6, 2))
    U = rng.standard_normal((8, 2))
    op = lri.SylvesterODE(aslinearoperator(A))
    np.testing.assert_allclose(op.apply_right(0, Y, V), A @ Y.to_dense() @ V)
    np.testing.assert_allclose(op.apply_left(0, Y, U), (A @ Y.to_dense()).T @ U)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((None,), TypeError, "A"),
        ((np.ones((3, 4)),), ValueError, "square"),
        ((np.eye(3), np.ones((2, 3))), ValueError, "square"),
        ((np.eye(3), np.eye(2), np.ones((3, 4))), ValueError, "C has shape"),
        ((np.eye(3), None, "C"), TypeError, "C must be"),
        (("A",), TypeError, "A must be"),
    ],
)
def test_sylvester_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        lri.SylvesterODE(*args)


def test_sylvester_rejects_a_state_of_the_wrong_shape(rng):
    problem = lri.SylvesterODE(np.eye(5), np.eye(4))
    Y = random_lowrank(rng, 5, 3, 2)
    with pytest.raises(ValueError, match="shape"):
        problem.apply_right(0.0, Y, Y.V)


def test_dense_field_of_the_wrong_shape_is_reported(rng):
    problem = lri.DenseODE(lambda t, Y: Y[:, :-1])
    Y0 = random_lowrank(rng, 6, 5, 2)
    with pytest.raises(ValueError, match=r"shape \(6, 5\)"):
        lri.solve(problem, Y0, (0, 1), 0.5)


def test_problem_product_of_the_wrong_shape_is_reported(rng):
    class Bad(lri.MatrixODE):
        def apply_right(self, t, Y, V):
            return np.zeros((Y.shape[0], V.shape[1] + 1))

        def apply_left(self, t, Y, U):
            return np.zeros((Y.shape[1], U.shape[1]))

    with pytest.raises(ValueError, match="returned an array of shape"):
        lri.solve(Bad(), random_lowrank(rng, 6, 5, 2), (0, 1), 0.5)


def test_data_problem_with_lowrank_data_stays_factored(rng):
    """A(t) given as a LowRankMatrix: increments are products of factors."""
    Y0 = random_lowrank(rng, 30, 20, 3)

    def A(t):
        U, S, V = Y0
        return lri.LowRankMatrix(U, S * (1 + t), V, check=False)

    sol = lri.solve(lri.DataODE(A), Y0, (0, 1), 0.25, method=lri.BUG())
    np.testing.assert_allclose(sol.Y.to_dense(), 2 * Y0.to_dense(), atol=1e-13)


def test_data_problem_rejects_bad_data(rng):
    with pytest.raises(TypeError, match="callable"):
        lri.DataODE(np.eye(3))
    problem = lri.DataODE(lambda t: "not a matrix")
    with pytest.raises(ValueError, match="A\\(t\\) must return"):
        lri.solve(problem, random_lowrank(rng, 4, 4, 1), (0, 1), 0.5)


def test_identity_linear_operator_is_not_updated_in_place(rng):
    """An operator may return its argument itself (scipy's identity operator does); the
    K-field must not then modify the substep state in place."""
    from scipy.sparse.linalg import LinearOperator

    class Identity(LinearOperator):
        def __init__(self, n):
            super().__init__(dtype=np.float64, shape=(n, n))

        def _matmat(self, X):
            return X

        def _adjoint(self):
            return self

    n = 6
    B = rng.standard_normal((n, n))
    problem = lri.SylvesterODE(Identity(n), B)
    V = np.linalg.qr(rng.standard_normal((n, 2)))[0]
    K = rng.standard_normal((n, 2))
    K_copy = K.copy()
    out = problem.k_field(V)(0.0, K)
    np.testing.assert_array_equal(K, K_copy)
    np.testing.assert_allclose(out, K + K @ (V.T @ B.T @ V))
