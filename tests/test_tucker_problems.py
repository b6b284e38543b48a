"""Specification of the tensor problems: the factored products the Tucker integrators use."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.tucker import multi_mode_product, unfold

from .conftest import to_xp
from .test_tucker import einsum_mode_product, random_orthonormal, random_tucker


def complex_matrix(rng, m, n):
    return rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))


def full_rank_factors(rng, shape, ranks):
    """Factors with full column rank but not orthonormal, as in the K-step states."""
    return [complex_matrix(rng, n, r) for n, r in zip(shape, ranks, strict=True)]


def dense_sylvester(Yd, operators, C=None):
    out = sum(einsum_mode_product(Yd, A, k) for k, A in enumerate(operators) if A is not None)
    return out if C is None else out + C.to_dense()


def projected(F, bases, skip):
    for j, W in enumerate(bases):
        if j != skip:
            F = einsum_mode_product(F, W.conj().T, j)
    return F


@pytest.mark.parametrize(("shape", "ranks"), [((7, 6, 5), (3, 2, 2)), ((5, 4, 4, 3), (2, 2, 3, 2))])
def test_sylvester_projection_equals_the_dense_definition(rng, shape, ranks):
    d = len(shape)
    operators = [complex_matrix(rng, n, n) for n in shape]
    operators[1] = None  # a mode without a term
    C = random_tucker(rng, shape, (2,) * d, np.complex128)
    problem = lri.TensorSylvesterODE(operators, C=C)
    assert problem.shape == shape
    core = rng.standard_normal(ranks) + 1j * rng.standard_normal(ranks)
    Y = lri.TuckerTensor(core, full_rank_factors(rng, shape, ranks), check=False)
    bases = [random_orthonormal(rng, n, 3, np.complex128) for n in shape]
    F = dense_sylvester(Y.to_dense(), operators, C)
    np.testing.assert_allclose(problem.evaluate_dense(0.0, Y), F, rtol=1e-12, atol=1e-12)
    for skip in (None, *range(d)):
        got = problem.project(0.3, Y, bases, skip=skip)
        np.testing.assert_allclose(got, projected(F, bases, skip), rtol=1e-11, atol=1e-11)


def test_dense_tensor_ode_projects_its_dense_field(rng):
    shape, ranks = (6, 5, 4), (2, 3, 2)

    def f(t, Y):
        return np.sin(t) * Y + Y * np.abs(Y) ** 2

    problem = lri.DenseTensorODE(f)
    Y = random_tucker(rng, shape, ranks, np.complex128)
    bases = [random_orthonormal(rng, n, 2, np.complex128) for n in shape]
    F = f(0.7, Y.to_dense())
    for skip in (None, 0, 2):
        got = problem.project(0.7, Y, bases, skip=skip)
        np.testing.assert_allclose(got, projected(F, bases, skip), rtol=1e-12, atol=1e-12)


def test_sylvester_accepts_sparse_operators(rng):
    n = 9
    lap = sp.diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]).tocsr()
    problem = lri.TensorSylvesterODE([lap, lap, lap])
    Y = random_tucker(rng, (n, n, n), (2, 2, 2))
    bases = list(Y.factors)
    F = dense_sylvester(Y.to_dense(), [lap.toarray()] * 3)
    np.testing.assert_allclose(
        problem.project(0.0, Y, bases, skip=1), projected(F, bases, 1), atol=1e-12
    )


def test_sylvester_projection_on_every_backend(xp, rng):
    shape = (6, 5, 4)
    ops = [rng.standard_normal((n, n)) for n in shape]
    Y_np = random_tucker(rng, shape, (2, 2, 2))
    bases_np = [random_orthonormal(rng, n, 3) for n in shape]
    expected = lri.TensorSylvesterODE(ops).project(0.0, Y_np, bases_np, skip=0)
    problem = lri.TensorSylvesterODE([to_xp(xp, A) for A in ops])
    Y = lri.TuckerTensor(to_xp(xp, Y_np.core), [to_xp(xp, U) for U in Y_np.factors])
    got = problem.project(0.0, Y, [to_xp(xp, W) for W in bases_np], skip=0)
    assert type(got) is type(Y.core)
    np.testing.assert_allclose(bk.to_host(got), expected, atol=1e-12)


def test_sylvester_never_needs_more_than_tall_skinny_products(rng):
    # Operators that refuse to act on anything wider than r columns make the claim checkable.
    class NarrowOperator:
        def __init__(self, A, max_cols):
            self.A, self.shape, self.max_cols = A, A.shape, max_cols

        def __matmul__(self, X):
            assert X.shape[1] <= self.max_cols, "operator applied to a wide block"
            return self.A @ X

    n, r = 30, 3
    A = rng.standard_normal((n, n))
    problem = lri.TensorSylvesterODE([NarrowOperator(A, r)] * 3)
    Y = random_tucker(rng, (n, n, n), (r, r, r))
    out = problem.project(0.0, Y, list(Y.factors), skip=2)
    assert out.shape == (r, r, n)


def test_tensor_problem_bad_input_is_named(rng):
    with pytest.raises(TypeError, match="operators must be a list or tuple of d >= 2"):
        lri.TensorSylvesterODE(np.eye(3))
    with pytest.raises(ValueError, match=r"operators\[1\] must be square"):
        lri.TensorSylvesterODE([np.eye(3), np.ones((3, 2)), np.eye(3)])
    with pytest.raises(TypeError, match=r"operators\[0\] must be a 2-D operator"):
        lri.TensorSylvesterODE([np.ones(3), np.eye(3)])
    with pytest.raises(ValueError, match="all None"):
        lri.TensorSylvesterODE([None, None, None])
    C = random_tucker(rng, (4, 4, 4), (1, 1, 1))
    with pytest.raises(TypeError, match="C must be a TuckerTensor"):
        lri.TensorSylvesterODE([np.eye(4)] * 3, C=C.to_dense())
    with pytest.raises(ValueError, match="C has size 4 in mode 0"):
        lri.TensorSylvesterODE([np.eye(5), None, None], C=C)
    with pytest.raises(ValueError, match="C has order 3 but 2 operators"):
        lri.TensorSylvesterODE([np.eye(4), np.eye(4)], C=C)
    problem = lri.TensorSylvesterODE([np.eye(5)] * 3)
    Y = random_tucker(rng, (5, 5, 4), (2, 2, 2))
    with pytest.raises(ValueError, match=r"Y has shape \(5, 5, 4\)"):
        problem.project(0.0, Y, list(Y.factors))
    with pytest.raises(TypeError, match="f must be callable"):
        lri.DenseTensorODE(3)
    bad = lri.DenseTensorODE(lambda t, Y: Y[0])
    with pytest.raises(ValueError, match="f\\(t, Y\\) must return an array of shape"):
        bad.project(0.0, Y, list(Y.factors))


def test_zero_operator_terms_and_source_only(rng):
    C = random_tucker(rng, (5, 4, 3), (2, 1, 2))
    problem = lri.TensorSylvesterODE([None, None, None], C=C)
    Y = random_tucker(rng, (5, 4, 3), (1, 1, 1))
    bases = list(Y.factors)
    expected = multi_mode_product(C.to_dense(), [B.T for B in bases])
    np.testing.assert_allclose(problem.project(0.0, Y, bases), expected, atol=1e-13)


@pytest.mark.parametrize(("shape", "ranks"), [((7, 6, 5), (3, 2, 2)), ((5, 4, 4, 3), (2, 2, 3, 2))])
def test_sylvester_substep_fields_equal_the_generic_fields(rng, shape, ranks):
    # The precomputed small Sylvester fields must agree with the definition through project.
    d = len(shape)
    operators = [complex_matrix(rng, n, n) for n in shape]
    operators[-1] = None
    C = random_tucker(rng, shape, (2,) * d, np.complex128)
    problem = lri.TensorSylvesterODE(operators, C=C)
    Y = random_tucker(rng, shape, ranks, np.complex128)
    core, bases = Y
    for i in range(d):
        Q = np.linalg.qr(unfold(core, i).conj().T)[0]
        K = complex_matrix(rng, shape[i], Q.shape[1])
        fast = problem.mode_field(bases, Q, i)(0.2, K)
        generic = lri.TensorODE.mode_field(problem, bases, Q, i)(0.2, K)
        np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-12)
        # the S-step field U_i^H Mat_i(F(Ten_i(U_i S V_i^H))) V_i, in r x r products
        U = bases[i]
        S = complex_matrix(rng, U.shape[1], Q.shape[1])
        generic = U.conj().T @ lri.TensorODE.mode_field(problem, bases, Q, i)(0.2, U @ S)
        for projected in (None, problem.projected_operators(bases)):
            fast = problem.mode_s_field(bases, Q, i, projected=projected)(0.2, S)
            np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-12)
        default = lri.TensorODE.mode_s_field(problem, bases, Q, i)(0.2, S)
        np.testing.assert_allclose(default, generic, rtol=1e-12, atol=1e-12)
    Cr = rng.standard_normal(ranks) + 1j * rng.standard_normal(ranks)
    fast = problem.core_field(bases)(0.2, Cr)
    generic = lri.TensorODE.core_field(problem, bases)(0.2, Cr)
    np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-12)


def test_a_problem_needs_only_its_projection(rng):
    # A user problem implementing project() alone gets dense evaluation and substep fields.
    class Scaled(lri.TensorODE):
        def project(self, t, Y, bases, skip=None):
            mats = [
                U if j == skip else B.conj().T @ U
                for j, (B, U) in enumerate(zip(bases, Y.factors, strict=True))
            ]
            return -2.0 * multi_mode_product(Y.core, mats)

    Y = random_tucker(rng, (5, 4, 3), (2, 2, 2))
    problem = Scaled()
    np.testing.assert_allclose(problem.evaluate_dense(0.0, Y), -2.0 * Y.to_dense(), atol=1e-13)
    sol = lri.solve(problem, Y, (0.0, 0.5), 0.1, lri.TuckerBUG(substep=lri.RK4(steps=5)))
    np.testing.assert_allclose(sol.Y.to_dense(), np.exp(-1.0) * Y.to_dense(), atol=1e-9)
