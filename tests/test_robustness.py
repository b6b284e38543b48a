"""Robustness: tiny singular values do not hurt the robust integrators.

On the Sylvester rotation ``F(Y) = (W1 + I) Y + Y W2^T`` (tangent, so the exact solution is
rank r) the error of each robust method with ``sigma_r = 1e-10`` is no larger than with
``sigma_r = 1e-2``, while explicit RK4 on the Koch-Lubich factor ODEs -- whose right-hand side
contains ``S^{-1}`` -- breaks down at the same step size.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import lowrank_integrators as lri
from tests.problems_for_tests import naive_factor_rk4, orthonormal, skew

N, R, H = 40, 6, 0.05

METHODS = [
    lri.ProjectorSplitting(order=1),
    lri.ProjectorSplitting(order=2),
    lri.BUG(),
    lri.AugmentedBUG(truncation=lri.FixedRank(R)),
]


def rotation_errors(sigma_min):
    rng = np.random.default_rng(1)
    W1, W2 = skew(rng, N), skew(rng, N)
    Y0 = lri.LowRankMatrix(
        orthonormal(rng, N, R), np.diag(np.geomspace(1.0, sigma_min, R)), orthonormal(rng, N, R)
    )
    exact = sla.expm(W1) @ (np.e * Y0.to_dense()) @ sla.expm(W2).T
    problem = lri.SylvesterODE(W1 + np.eye(N), W2)
    errors = {
        repr(m): np.linalg.norm(
            lri.solve(problem, Y0, (0.0, 1.0), H, method=m).Y.to_dense() - exact
        )
        for m in METHODS
    }

    def f(t, Y):
        return (W1 + np.eye(N)) @ Y + Y @ W2.T

    errors["naive"] = np.linalg.norm(naive_factor_rk4(f, Y0, 1.0, H) - exact)
    return errors, np.linalg.norm(exact)


@pytest.fixture(scope="module")
def errors():
    return rotation_errors(1e-2), rotation_errors(1e-10)


@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_robust_method_error_does_not_grow_when_sigma_r_is_tiny(errors, method):
    (moderate, norm), (tiny, _) = errors
    assert np.isfinite(tiny[repr(method)])
    # same error level (up to a small factor and the RK4-substep floor), not 1e8 times worse
    assert tiny[repr(method)] <= 3.0 * moderate[repr(method)] + 1e-4 * norm
    assert tiny[repr(method)] < 0.1 * norm


def test_naive_factor_ode_control_breaks_down(errors):
    """The control has teeth: fine when sigma_r = 1e-2, useless when sigma_r = 1e-10."""
    (moderate, norm), (tiny, _) = errors
    assert moderate["naive"] < 1e-3 * norm
    assert not np.isfinite(tiny["naive"]) or tiny["naive"] > 0.1 * norm
