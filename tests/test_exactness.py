"""Exactness: rank-r explicit data, tangent Sylvester fields, and F = 0."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import lowrank_integrators as lri
from tests.problems_for_tests import ExactLinearSubstep, orthonormal, skew

FIXED_RANK_METHODS = {
    "KSL": lambda r: lri.ProjectorSplitting(order=1),
    "Strang": lambda r: lri.ProjectorSplitting(order=2),
    "BUG": lambda r: lri.BUG(),
    "AugmentedBUG": lambda r: lri.AugmentedBUG(truncation=lri.FixedRank(r)),
}


def rank_r_data(rng, n, r, complex_=False):
    """A(t) = e^{tW1} e^t D_r (e^{tW2})^T: rank r with singular values down to 2^-r e^t."""
    W1, W2 = skew(rng, n, complex_), skew(rng, n, complex_)
    E = np.eye(n)[:, :r]
    D = E @ np.diag(2.0 ** -np.arange(1, r + 1)) @ E.T

    def A(t):
        return sla.expm(t * W1) @ (np.exp(t) * D) @ sla.expm(t * W2).T

    dtype = complex if complex_ else float
    S0 = np.diag(2.0 ** -np.arange(1, r + 1)).astype(dtype)
    Y0 = lri.LowRankMatrix(E.astype(dtype), S0, E.astype(dtype))
    return A, Y0


@pytest.mark.parametrize("name", ["KSL", "Strang", "BUG", "AugmentedBUG"])
@pytest.mark.parametrize("r", [4, 12])
@pytest.mark.parametrize("h", [0.1, 0.0125])
def test_rank_r_data_is_reproduced_exactly(rng, name, r, h):
    """V4: with F = A'(t) of rank r, Y_n = A(t_n) to round-off although sigma_r ~ 2^-12."""
    n = 30
    A, Y0 = rank_r_data(rng, n, r)
    sol = lri.solve(lri.DataODE(A), Y0, (0.0, 0.5), h, method=FIXED_RANK_METHODS[name](r))
    err = np.linalg.norm(sol.Y.to_dense() - A(0.5))
    assert err < 1e-12 * np.linalg.norm(A(0.5)) * (0.5 / h)


def test_rank_r_complex_data_is_reproduced_exactly(rng):
    A, Y0 = rank_r_data(rng, 20, 5, complex_=True)
    for name in FIXED_RANK_METHODS:
        sol = lri.solve(lri.DataODE(A), Y0, (0.0, 0.3), 0.05, method=FIXED_RANK_METHODS[name](5))
        assert sol.Y.dtype == np.complex128
        assert np.linalg.norm(sol.Y.to_dense() - A(0.3)) < 1e-12, name


def test_data_problem_needs_no_derivative_but_says_so_when_asked(rng):
    A, Y0 = rank_r_data(rng, 10, 2)
    problem = lri.DataODE(A)
    with pytest.raises(NotImplementedError, match="derivative"):
        problem.apply_right(0.0, Y0, Y0.V)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("h", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_projector_splitting_is_exact_on_tangent_sylvester_fields_for_every_h(
    rng, order, h, complex_
):
    """F(Y) = A Y + Y B^T is tangent; with exact substeps KSL and Strang are exact for every h.

    A flipped sign in the backward S-step gives an O(1) error here."""
    n, r = 9, 3
    A = skew(rng, n, complex_) + 0.3 * np.eye(n)
    B = rng.standard_normal((n, n)) / n  # not skew: a non-conservative field
    if complex_:
        B = B + 1j * rng.standard_normal((n, n)) / n
    U0, V0 = orthonormal(rng, n, r, complex_), orthonormal(rng, n, r, complex_)
    S0 = np.diag([1.0, 1e-3, 1e-9]).astype(U0.dtype)
    Y0 = lri.LowRankMatrix(U0, S0, V0)
    T = 1.0
    method = lri.ProjectorSplitting(order=order, substep=ExactLinearSubstep())
    sol = lri.solve(lri.SylvesterODE(A, B), Y0, (0.0, T), h, method=method)
    exact = sla.expm(T * A) @ Y0.to_dense() @ sla.expm(T * B).T
    assert np.linalg.norm(sol.Y.to_dense() - exact) < 1e-12 * np.linalg.norm(exact)


def test_flipped_backward_step_is_caught_by_the_exactness_test(rng):
    """The exactness test has teeth: the same KSL with a forward S-step is O(1) wrong."""
    from lowrank_integrators import _backend as bk
    from lowrank_integrators.integrators.base import KStep, Ledger, LStep, SStep

    class ForwardS(lri.ProjectorSplitting):
        def step_requests(self, state, t, h):
            U0, S0, V0 = state.Y
            led = Ledger(state.Y.rank)
            K1 = yield from self.substep.solve(KStep(led, V0), t, t + h, U0 @ S0)
            U1, S_hat = led.qr(K1)
            S_t = yield from self.substep.solve(SStep(led, U1, V0, sign=+1), t, t + h, S_hat)
            L1 = yield from self.substep.solve(LStep(led, U1), t, t + h, V0 @ bk.adjoint(S_t))
            V1, R = led.qr(L1)
            Y1 = lri.LowRankMatrix(U1, bk.adjoint(R), V1, check=False)
            return state.with_Y(Y1, t + h), led.finish(Y1.rank)

    n, r = 9, 3
    A = skew(rng, n) + 0.3 * np.eye(n)
    Y0 = lri.LowRankMatrix(orthonormal(rng, n, r), np.diag([1.0, 0.5, 0.2]), orthonormal(rng, n, r))
    sol = lri.solve(
        lri.SylvesterODE(A), Y0, (0.0, 1.0), 0.25, method=ForwardS(substep=ExactLinearSubstep())
    )
    exact = sla.expm(A) @ Y0.to_dense()
    assert np.linalg.norm(sol.Y.to_dense() - exact) > 1e-2 * np.linalg.norm(exact)


ALL_METHODS = [
    lri.ProjectorSplitting(order=1),
    lri.ProjectorSplitting(order=2),
    lri.BUG(),
    lri.AugmentedBUG(truncation=lri.FixedRank(4)),
    lri.AugmentedBUG(truncation=lri.Tolerance(1e-14)),
]


@pytest.mark.parametrize("method", ALL_METHODS, ids=repr)
def test_zero_field_leaves_Y_unchanged(rng, method):
    n, r = 12, 4
    Y0 = lri.LowRankMatrix(
        orthonormal(rng, n, r), np.diag([1.0, 0.1, 1e-5, 1e-12]), orthonormal(rng, n, r)
    )
    zero = lri.DenseODE(lambda t, Y: np.zeros_like(Y))
    sol = lri.solve(zero, Y0, (0.0, 1.0), 0.1, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), Y0.to_dense(), atol=1e-14)
    assert sol.Y.rank == r
