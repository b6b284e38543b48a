"""Observed convergence orders against the exact DLRA solution (which stays rank r).

The field ``F(t, Y) = W Y + Y B + c(t) G + tanh(Y)/2`` is nonlinear with a non-zero normal
component, so no method is exact on it (on tangent fields projector splitting is exact and
the truncated augmented BUG looks second order, which would hide the orders). The reference
is the DLRA solution from the factor ODEs, integrated to 1e-13 while ``S`` is well
conditioned; substeps use RK4 with several internal steps so that the splitting error is
what is measured.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from tests.problems_for_tests import dlra_reference, observed_order, orthonormal, smooth_field

N, R, T = 16, 3, 0.5
HS = np.array([0.1, 0.05, 0.025, 0.0125])

METHODS = {
    "KSL": (lambda: lri.ProjectorSplitting(order=1, substep=lri.RK4(steps=4)), 1),
    "Strang": (lambda: lri.ProjectorSplitting(order=2, substep=lri.RK4(steps=4)), 2),
    "BUG": (lambda: lri.BUG(substep=lri.RK4(steps=4)), 1),
    "AugmentedBUG": (
        lambda: lri.AugmentedBUG(truncation=lri.FixedRank(R), substep=lri.RK4(steps=4)),
        1,
    ),
}


@pytest.fixture(scope="module", params=[False, True], ids=["autonomous", "non-autonomous"])
def study(request):
    rng = np.random.default_rng(7)
    f = smooth_field(rng, N, nonautonomous=request.param)
    Y0 = lri.LowRankMatrix(
        orthonormal(rng, N, R), np.diag([1.0, 0.5, 0.25]), orthonormal(rng, N, R)
    )
    return f, Y0, dlra_reference(f, Y0, T)


@pytest.mark.parametrize("name", list(METHODS))
def test_observed_order_matches_declared_order(study, name):
    f, Y0, reference = study
    factory, expected = METHODS[name]
    assert factory().order == expected
    errors = np.array(
        [
            np.linalg.norm(
                lri.solve(lri.DenseODE(f), Y0, (0.0, T), float(h), method=factory()).Y.to_dense()
                - reference
            )
            for h in HS
        ]
    )
    p = observed_order(HS, errors)
    assert abs(p - expected) < 0.2, (name, errors, p)
    ratios = errors[:-1] / errors[1:]
    assert np.all(ratios > 0.75 * 2.0**expected), (name, ratios)
