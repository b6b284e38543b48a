"""Rank >= 1 always: a rank-adaptive state never drops to rank 0, where no direction could
ever enter again, and follows a source that switches on after the state has decayed."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from tests.problems_for_tests import orthonormal

T_ON = 0.3


def switched_source_problem(rng, n=12):
    """``Y' = -Y + [t >= T_ON] B C^T`` from a rank-1 start of norm 1e-3 (below the tolerance
    the methods get, so that a rank-0 floor would drop it). Returns ``(problem, Y0, exact)``."""
    B, C = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
    source = B @ C.T

    def f(t, Y):
        return -Y + (source if t >= T_ON else 0.0 * source)

    Y0 = lri.LowRankMatrix(orthonormal(rng, n, 1), np.array([[1e-3]]), orthonormal(rng, n, 1))

    def exact(t):
        return np.exp(-t) * Y0.to_dense() + max(0.0, 1.0 - np.exp(-(t - T_ON))) * source

    return lri.DenseODE(f), Y0, exact


METHODS = {
    "augmented_bug": lambda rule: lri.AugmentedBUG(rule),
    "abc_psi": lambda rule: lri.AugmentedBackwardCorrectedPSI(rule),
    "midpoint_bug": lambda rule: lri.MidpointBUG(rule),
    "parallel_bug": lambda rule: lri.ParallelBUG(rule),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_rank_adaptive_methods_keep_rank_one_and_follow_a_source_that_switches_on(rng, name):
    problem, Y0, exact = switched_source_problem(rng)
    method = METHODS[name](lri.Tolerance(1e-2))
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.01, method=method)
    assert sol.status == "success"
    assert min(sol.ranks) >= 1
    ref = exact(1.0)
    assert np.linalg.norm(sol.Y.to_dense() - ref) < 0.05 * np.linalg.norm(ref)


def test_a_rank_floor_of_zero_is_refused():
    with pytest.raises(ValueError, match="rmin"):
        lri.Tolerance(1e-3, rmin=0)


class _DropsEverything(lri.TruncationRule):
    def select_rank(self, sigma, h, mode=None):
        return 0


def test_a_rule_that_chooses_rank_zero_is_an_error_naming_the_rule(rng):
    S = np.diag([1.0, 0.5])
    with pytest.raises(ValueError, match=r"_DropsEverything\.select_rank chose rank 0"):
        _DropsEverything().truncate_core(S, h=0.1)
