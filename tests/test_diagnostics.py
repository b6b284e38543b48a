"""Diagnostics: orthonormality defect, normal component, error along a solution."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import lowrank_integrators as lri
from lowrank_integrators import diagnostics
from tests.problems_for_tests import orthonormal, random_lowrank, skew


def test_orthonormality_defect(rng):
    Q = orthonormal(rng, 30, 5)
    assert diagnostics.orthonormality_defect(Q) < 1e-14
    assert diagnostics.orthonormality_defect(2 * Q) == pytest.approx(3 * np.sqrt(5))


def test_tangent_projection_is_an_orthogonal_projection(rng):
    Y = random_lowrank(rng, 12, 9, 3, complex_=True)
    Z = rng.standard_normal((12, 9)) + 1j * rng.standard_normal((12, 9))
    PZ = diagnostics.tangent_projection(Y, Z)
    np.testing.assert_allclose(diagnostics.tangent_projection(Y, PZ), PZ, atol=1e-13)
    # the residual is orthogonal to the tangent space
    assert abs(np.vdot(PZ, Z - PZ)) < 1e-12


def test_normal_component_vanishes_exactly_for_sylvester_fields(rng):
    n = 15
    A, B = skew(rng, n), rng.standard_normal((n, n))
    Y = random_lowrank(rng, n, n, 3)
    assert diagnostics.normal_component(lri.SylvesterODE(A, B), 0.0, Y) < 1e-13
    G = rng.standard_normal((n, n))
    eps = diagnostics.normal_component(lri.SylvesterODE(A, B, G), 0.0, Y)
    U, _, V = Y
    expected = np.linalg.norm((np.eye(n) - U @ U.T) @ G @ (np.eye(n) - V @ V.T))
    assert eps == pytest.approx(expected, rel=1e-12)


def test_error_along_a_solution(rng):
    n = 10
    W = skew(rng, n)
    Y0 = random_lowrank(rng, n, n, 2)
    sol = lri.solve(
        lri.SylvesterODE(W, W), Y0, (0, 0.5), 0.1, method=lri.ProjectorSplitting(), save_states=True
    )

    def exact(t):
        return sla.expm(t * W) @ Y0.to_dense() @ sla.expm(t * W).T

    errors = diagnostics.error_along(sol.states, sol.t, exact)
    assert errors.shape == (6,) and errors[0] < 1e-15 and errors.max() < 1e-5
    with pytest.raises(ValueError, match="states"):
        diagnostics.error_along(sol.states[:-1], sol.t, exact)
