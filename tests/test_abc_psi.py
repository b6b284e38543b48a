"""The augmented backward-corrected projector-splitting integrator (Kusch-Schotthöfer-Walter
2025).

The step is pinned by its Euler closed form ``Y0 + h P_U_hat F(t0, Y0)`` (identity I3), its
cost budget (no Galerkin S-step: not a single ``U^H F V``), its first order on a genuinely
nonlinear field, and descent on a gradient flow.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from tests.conftest import to_xp
from tests.problems_for_tests import (
    naive_factor_rk4,
    observed_order,
    orthonormal,
    proj,
    random_lowrank,
    skew,
)
from tests.rank_adaptive_problems import (
    decaying_problem,
    invariant_field,
    invariant_problem,
    least_squares_flow,
    lyapunov_with_source,
    numerical_rank,
    reference,
)

T0, H = 0.37, 0.21


@pytest.mark.parametrize(
    "truncation", [lri.Tolerance(0.0), lri.FixedRank(6)], ids=["tolerance0", "fixed2r"]
)
def test_euler_closed_form_I3(euler_problem, truncation):
    """One Euler step per substep: ``Y0 + h P_U_hat F(t0, Y0)`` with
    ``U_hat = orth[U0, F(t0, Y0) V0]``; the right side is not projected."""
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    F0 = f(T0, Y0.to_dense())
    expected = Y0.to_dense() + H * proj(np.hstack([U0, F0 @ V0])) @ F0

    method = lri.AugmentedBackwardCorrectedPSI(truncation, substep=lri.Euler())
    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)
    assert sol.Y.rank == 6


def test_cost_budget(euler_problem):
    """K- and L-steps only: no Galerkin S-step, so no U^H F V at all; QRs of [K1, U0] and L1."""
    f, Y0 = euler_problem
    s = 3
    method = lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(3), substep=lri.RK4(steps=s))
    info = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method).step_info[0]
    assert (info.n_right, info.n_left, info.n_project) == (4 * s, 4 * s, 0)
    assert (info.n_qr, info.n_svd, info.rejected) == (2, 1, 0)
    assert info.truncation.rank_before == 6


def test_first_order_on_a_rank_preserving_nonlinear_field():
    f, Y0 = invariant_problem()
    T = 1.0
    ref = reference(f, Y0, T)
    hs = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    errors = [
        np.linalg.norm(
            lri.solve(
                lri.DenseODE(f),
                Y0,
                (0.0, T),
                h,
                method=lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(3)),
            ).Y.to_dense()
            - ref
        )
        for h in hs
    ]
    assert lri.AugmentedBackwardCorrectedPSI.order == 1
    assert abs(observed_order(hs, errors) - 1) < 0.2, errors


def test_looks_second_order_on_a_sylvester_field_which_is_why_it_is_not_used_for_orders():
    """Algorithm reference, pitfall 7.2: truncated to fixed rank, abc-PSI is second order on
    F(Y) = W1 Y + Y W2^T. The order test above therefore needs a genuinely nonlinear field."""
    rng = np.random.default_rng(7)
    n, r, T = 20, 3, 1.0
    W1, W2 = skew(rng, n), skew(rng, n)
    Y0 = lri.LowRankMatrix(
        orthonormal(rng, n, r), np.diag([1.0, 0.5, 0.25]), orthonormal(rng, n, r)
    )
    exact = sla.expm(T * W1) @ Y0.to_dense() @ sla.expm(T * W2).T
    hs = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    method = lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(r))
    errors = [
        np.linalg.norm(
            lri.solve(lri.SylvesterODE(W1, W2), Y0, (0.0, T), h, method=method).Y.to_dense() - exact
        )
        for h in hs
    ]
    assert observed_order(hs, errors) > 1.7, errors


def test_rank_grows_at_most_doubling_per_step_towards_the_target():
    problem, f, Y0 = lyapunov_with_source()
    theta = 1e-6
    ref = reference(f, Y0, 1.0)
    method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(theta))
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=method)
    assert sol.ranks[:3] == [1, 2, 4]
    for before, after in zip(sol.ranks[:-1], sol.ranks[1:], strict=True):
        assert after <= 2 * before
    assert numerical_rank(ref, 100 * theta) <= sol.ranks[-1] <= numerical_rank(ref, theta / 100)


def test_rank_shrinks_when_directions_decay():
    problem, Y0, surviving = decaying_problem()
    method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-6))
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=method)
    assert sol.ranks[-1] == surviving
    for info in sol.step_info:
        assert info.truncation.tail <= info.truncation.tolerance


def test_robust_to_a_tiny_smallest_singular_value():
    T, h = 1.0, 0.05
    errors = []
    for sigmas in [(1.0, 0.5, 0.25), (1.0, 0.5, 1e-10)]:
        f, Y0 = invariant_problem(sigmas=sigmas)
        method = lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(3))
        sol = lri.solve(lri.DenseODE(f), Y0, (0.0, T), h, method=method)
        errors.append(np.linalg.norm(sol.Y.to_dense() - reference(f, Y0, T)))
    assert errors[1] < 3 * errors[0], errors
    with np.errstate(all="ignore"):
        naive = naive_factor_rk4(f, Y0, T, h)
    assert not np.isfinite(naive).all() or np.linalg.norm(naive - reference(f, Y0, T)) > 1.0


def descent_run(h, truncation, steps=30):
    flow = least_squares_flow()
    method = lri.AugmentedBackwardCorrectedPSI(truncation, substep=lri.Euler())
    sol = lri.solve(flow.problem, flow.Y0, (0.0, steps * h), h, method=method, save_states=True)
    losses = np.array([flow.loss(Y) for Y in sol.states])
    grads = np.array([flow.gradient_norm(Y) for Y in sol.states[1:]])
    tau = np.array([info.truncation.tolerance for info in sol.step_info])
    tau = np.nan_to_num(tau, nan=0.0)
    slack = tau * grads + 0.5 * flow.lipschitz * tau**2 + 1e-12 * losses[:-1]
    return losses, slack


@pytest.mark.parametrize(
    "truncation",
    [lri.Tolerance(1e-2, relative=True, rmax=8), lri.FixedRank(4)],
    ids=["tolerance", "fixed"],
)
def test_loss_does_not_increase_on_a_gradient_flow_for_h_below_one_over_lipschitz(truncation):
    flow = least_squares_flow()
    losses, slack = descent_run(1.0 / flow.lipschitz, truncation)
    assert np.all(np.diff(losses) <= slack), np.diff(losses)
    assert losses[-1] < 0.9 * losses[0]


def test_descent_check_has_teeth_beyond_the_step_size_limit():
    """The same check fails at h = 1 > 1/Lip = 0.44: the bound is a real condition."""
    losses, slack = descent_run(1.0, lri.Tolerance(1e-2, relative=True, rmax=8))
    assert np.any(np.diff(losses) > slack)


def test_fixed_point_of_a_gradient_flow_is_the_best_rank_r_approximation():
    """For L(W) = ||W - A||^2 / 2 and h = 1 the step is W1 = trunc(P_U_hat A): iterating
    reaches the truncated SVD of A (Eckart-Young)."""
    rng = np.random.default_rng(3)
    m, n, r = 30, 20, 3
    sig = 0.7 ** np.arange(n)
    A = orthonormal(rng, m, n) @ np.diag(sig) @ orthonormal(rng, n, n).T
    Y0 = random_lowrank(rng, m, n, r)
    method = lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(r), substep=lri.Euler())
    sol = lri.solve(lri.SylvesterODE(-np.eye(m), None, C=A), Y0, (0.0, 60.0), 1.0, method=method)
    loss = 0.5 * np.linalg.norm(sol.Y.to_dense() - A) ** 2
    assert abs(loss - 0.5 * np.sum(sig[r:] ** 2)) < 1e-10


def test_zero_field_leaves_Y_unchanged(rng):
    Y0 = random_lowrank(rng, 12, 10, 4, sigmas=np.array([1.0, 0.1, 1e-5, 1e-12]))
    zero = lri.DenseODE(lambda t, Y: np.zeros_like(Y))
    method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-14))
    sol = lri.solve(zero, Y0, (0.0, 1.0), 0.1, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), Y0.to_dense(), atol=1e-14)
    assert sol.Y.rank == 4


def test_array_api_backends(xp):
    _, Y0 = invariant_problem()
    rng = np.random.default_rng(7)
    W1, W2 = (to_xp(xp, rng.standard_normal((20, 20)) / 20) for _ in range(2))
    Y0x = lri.LowRankMatrix(*(to_xp(xp, a) for a in Y0))
    f = invariant_field(W1, W2, xp)
    method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-8))
    sol = lri.solve(lri.DenseODE(f), Y0x, (0.0, 0.2), 0.05, method=method)
    assert all(type(a) is type(Y0x.U) for a in sol.Y)
    ref = reference(invariant_field(*(bk.to_host(W) for W in (W1, W2))), Y0, 0.2)
    assert np.linalg.norm(bk.to_host(sol.Y.to_dense()) - ref) < 1e-3


def test_complex_lyapunov_with_a_non_hermitian_source():
    """A plain transpose in any product gives an O(1) error; the rank lag from a rank-1
    start costs O(h), so the error halves with h."""
    problem, f, Y0 = lyapunov_with_source(complex_=True)
    ref = reference(f, Y0, 0.5)
    errors = []
    for h in (0.05, 0.025):
        method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-8))
        sol = lri.solve(problem, Y0, (0.0, 0.5), h, method=method)
        assert sol.Y.dtype == np.complex128
        errors.append(np.linalg.norm(sol.Y.to_dense() - ref) / np.linalg.norm(ref))
    assert errors[1] < 0.05
    assert 1.6 < errors[0] / errors[1] < 2.4, errors


def test_float32_state_stays_float32(rng):
    _, Y0 = invariant_problem()
    Y32 = lri.LowRankMatrix(*(np.asarray(a, dtype=np.float32) for a in Y0))
    W1, W2 = (np.asarray(rng.standard_normal((20, 20)) / 20, dtype=np.float32) for _ in range(2))
    method = lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-4))
    sol = lri.solve(lri.DenseODE(invariant_field(W1, W2)), Y32, (0.0, 0.2), 0.05, method=method)
    assert all(a.dtype == np.float32 for a in sol.Y)
    ref = reference(invariant_field(W1.astype(float), W2.astype(float)), Y0, 0.2)
    assert np.linalg.norm(sol.Y.to_dense() - ref) < 1e-3


def test_declares_its_properties():
    assert lri.AugmentedBackwardCorrectedPSI.rank_adaptive
    assert any("2502.03006" in ref for ref in lri.AugmentedBackwardCorrectedPSI.references)
    with pytest.raises(TypeError, match="truncation"):
        lri.AugmentedBackwardCorrectedPSI(truncation="1e-6")
