"""The midpoint BUG integrator (Ceruti-Einkemmer-Kusch-Lubich 2024): robust second order.

With Euler substeps the step has a closed form that pins the half step, the evaluation at
the midpoint and the 4r bases; the order is measured on a genuinely nonlinear field whose
solution stays rank r.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.validation.sylvester_rotation import SylvesterRotation
from tests.conftest import to_xp
from tests.problems_for_tests import naive_factor_rk4, observed_order, proj, random_lowrank
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


def test_euler_closed_form(euler_problem):
    """With Euler substeps: the half step is I1 over h/2,
    ``Y_half = Y0 + h/2 P_U_half F(t0, Y0) P_V_half``; the bases are enriched by
    ``F(t0 + h/2, Y_half)``; the Galerkin step gives ``Y0 + h P_U_hat F(t0, Y0) P_V_hat``."""
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    Y0d = Y0.to_dense()
    F0 = f(T0, Y0d)
    U_half = np.linalg.qr(np.hstack([U0, F0 @ V0]))[0]
    V_half = np.linalg.qr(np.hstack([V0, F0.conj().T @ U0]))[0]
    Y_half = Y0d + 0.5 * H * proj(U_half) @ F0 @ proj(V_half)
    F_half = f(T0 + 0.5 * H, Y_half)
    P_U = proj(np.hstack([U_half, F_half @ V_half]))
    P_V = proj(np.hstack([V_half, F_half.conj().T @ U_half]))
    expected = Y0d + H * P_U @ F0 @ P_V

    method = lri.MidpointBUG(lri.Tolerance(0.0), substep=lri.Euler())
    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)
    assert sol.Y.rank == 11  # 4r = 12 rows, min(n, 4r) = 11 columns


def test_cost_budget(euler_problem):
    f, Y0 = euler_problem
    s = 2
    method = lri.MidpointBUG(lri.FixedRank(3), substep=lri.RK4(steps=s))
    info = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method).step_info[0]
    # half-step K and L (4s each) + F_half V_half and F_half^H U_half; two Galerkin S-steps;
    # QRs of [K, U0], [L, V0] and the two 4r bases; one SVD.
    assert (info.n_right, info.n_left, info.n_project) == (4 * s + 1, 4 * s + 1, 8 * s)
    assert (info.n_qr, info.n_svd, info.rejected) == (4, 1, 0)
    assert info.truncation.rank_before == 11


def errors_on_invariant_field(truncation_for_h, hs, T=1.0):
    f, Y0 = invariant_problem()
    ref = reference(f, Y0, T)
    return [
        np.linalg.norm(
            lri.solve(
                lri.DenseODE(f), Y0, (0.0, T), h, method=lri.MidpointBUG(truncation_for_h(h))
            ).Y.to_dense()
            - ref
        )
        for h in hs
    ]


def test_second_order_on_a_rank_preserving_nonlinear_field():
    hs = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    errors = errors_on_invariant_field(lambda h: lri.FixedRank(3), hs)
    assert lri.MidpointBUG(lri.FixedRank(3)).order == 2
    assert abs(observed_order(hs, errors) - 2) < 0.2, errors


def test_second_order_at_small_steps_on_the_sylvester_rotation_without_a_round_off_floor():
    """On V1 (``n = 100``, ``r = 4``, ``T = 1``) the errors fall like ``h^2`` from ``h = 0.002``
    to below ``2e-7``: the larger steps' errors below the second-order line (the module
    docstring) give way to that line, not to a floor."""
    setup = SylvesterRotation()
    r = 4
    ref = setup.dlra_reference(r)(1.0)
    errors = []
    for h in (0.002, 0.001, 0.0005):
        method = lri.MidpointBUG(lri.FixedRank(r))
        sol = lri.solve(setup.problem, setup.initial_value(r), (0.0, 1.0), h, method=method)
        errors.append(np.linalg.norm(sol.Y.to_dense() - ref) / np.linalg.norm(ref))
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert np.all((orders > 1.9) & (orders < 2.1)), (errors, orders)
    assert errors[-1] < 2e-7, errors


def test_second_order_with_a_tolerance_scaled_by_h_cubed():
    hs = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    errors = errors_on_invariant_field(lambda h: lri.Tolerance(1e-1, scale_with_h=3), hs)
    assert observed_order(hs, errors) > 1.8, errors


def test_rank_grows_at_most_fourfold_per_step_towards_the_target():
    problem, f, Y0 = lyapunov_with_source()
    theta = 1e-6
    ref = reference(f, Y0, 1.0)
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=lri.MidpointBUG(lri.Tolerance(theta)))
    assert sol.ranks[0] == 1
    assert sol.ranks[1] > 2  # more than a first-order augmented step can give
    for before, after in zip(sol.ranks[:-1], sol.ranks[1:], strict=True):
        assert after <= 4 * before
    assert numerical_rank(ref, 100 * theta) <= sol.ranks[-1] <= numerical_rank(ref, theta / 100)


def test_rank_shrinks_when_directions_decay():
    problem, Y0, surviving = decaying_problem()
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=lri.MidpointBUG(lri.Tolerance(1e-6)))
    assert sol.ranks[-1] == surviving
    for info in sol.step_info:
        assert info.truncation.tail <= info.truncation.tolerance


def test_robust_to_a_tiny_smallest_singular_value():
    T, h = 1.0, 0.05
    errors = []
    for sigmas in [(1.0, 0.5, 0.25), (1.0, 0.5, 1e-10)]:
        f, Y0 = invariant_problem(sigmas=sigmas)
        sol = lri.solve(lri.DenseODE(f), Y0, (0.0, T), h, method=lri.MidpointBUG(lri.FixedRank(3)))
        errors.append(np.linalg.norm(sol.Y.to_dense() - reference(f, Y0, T)))
    assert errors[1] < 3 * errors[0], errors
    with np.errstate(all="ignore"):
        naive = naive_factor_rk4(f, Y0, T, h)
    assert not np.isfinite(naive).all() or np.linalg.norm(naive - reference(f, Y0, T)) > 1.0


def descent_run(h, steps=30):
    flow = least_squares_flow()
    method = lri.MidpointBUG(lri.Tolerance(1e-2, relative=True, rmax=8), substep=lri.Euler())
    sol = lri.solve(flow.problem, flow.Y0, (0.0, steps * h), h, method=method, save_states=True)
    losses = np.array([flow.loss(Y) for Y in sol.states])
    grads = np.array([flow.gradient_norm(Y) for Y in sol.states[1:]])
    tau = np.array([info.truncation.tolerance for info in sol.step_info])
    slack = tau * grads + 0.5 * flow.lipschitz * tau**2 + 1e-12 * losses[:-1]
    return flow, losses, slack


def test_loss_does_not_increase_on_a_gradient_flow_for_h_below_one_over_lipschitz():
    flow = least_squares_flow()
    _, losses, slack = descent_run(1.0 / flow.lipschitz)
    assert np.all(np.diff(losses) <= slack), np.diff(losses)
    assert losses[-1] < 0.9 * losses[0]


def test_descent_check_has_teeth_beyond_the_step_size_limit():
    """The same check fails at h = 1 > 1/Lip = 0.44: the bound is a real condition."""
    _, losses, slack = descent_run(1.0)
    assert np.any(np.diff(losses) > slack)


def test_zero_field_leaves_Y_unchanged(rng):
    Y0 = random_lowrank(rng, 12, 10, 4, sigmas=np.array([1.0, 0.1, 1e-5, 1e-12]))
    zero = lri.DenseODE(lambda t, Y: np.zeros_like(Y))
    sol = lri.solve(zero, Y0, (0.0, 1.0), 0.1, method=lri.MidpointBUG(lri.Tolerance(1e-14)))
    np.testing.assert_allclose(sol.Y.to_dense(), Y0.to_dense(), atol=1e-14)
    assert sol.Y.rank == 4


def test_array_api_backends(xp):
    _, Y0 = invariant_problem()
    rng = np.random.default_rng(7)
    W1, W2 = (to_xp(xp, rng.standard_normal((20, 20)) / 20) for _ in range(2))
    Y0x = lri.LowRankMatrix(*(to_xp(xp, a) for a in Y0))
    f = invariant_field(W1, W2, xp)
    sol = lri.solve(
        lri.DenseODE(f), Y0x, (0.0, 0.2), 0.05, method=lri.MidpointBUG(lri.FixedRank(3))
    )
    assert all(type(a) is type(Y0x.U) for a in sol.Y)
    ref = reference(invariant_field(*(bk.to_host(W) for W in (W1, W2))), Y0, 0.2)
    assert np.linalg.norm(bk.to_host(sol.Y.to_dense()) - ref) < 1e-5


def test_complex_lyapunov_with_a_non_hermitian_source():
    """A complex, non-Hermitian source catches a plain transpose in any product (an O(1)
    error). From a rank-1 start the rank lag costs O(h) (algorithm reference, V7), so the
    error halves with h rather than falling like h^2."""
    problem, f, Y0 = lyapunov_with_source(complex_=True)
    ref = reference(f, Y0, 0.5)
    errors = []
    for h in (0.05, 0.025):
        sol = lri.solve(problem, Y0, (0.0, 0.5), h, method=lri.MidpointBUG(lri.Tolerance(1e-8)))
        assert sol.Y.dtype == np.complex128
        errors.append(np.linalg.norm(sol.Y.to_dense() - ref) / np.linalg.norm(ref))
    assert errors[1] < 0.05
    assert 1.6 < errors[0] / errors[1] < 2.4, errors


def test_declares_its_properties():
    assert lri.MidpointBUG.order == 2
    assert lri.MidpointBUG.rank_adaptive
    assert any("2402.08607" in ref for ref in lri.MidpointBUG.references)
    with pytest.raises(TypeError, match="truncation"):
        lri.MidpointBUG(truncation=None)


def _tridiagonal_start(seed, n=4096, r=4):
    """``(A, Y0)``: tridiagonal CSR ``A`` (tall enough for the kept array) and a rank-r start."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    A = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr")
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return A, lri.LowRankMatrix(U, np.diag(2.0 ** -np.arange(r)), V)


class _KeepsWhatItIsGiven(lri.SylvesterODE):
    """A problem that keeps the arrays of its products' arguments (as a caching driver may);
    with ``keep=False`` the same fields keep nothing."""

    def __init__(self, *args, keep=True):
        super().__init__(*args)
        self.seen = []
        self.keep = keep

    def s_field(self, U, V):
        if self.keep:
            self.seen.append((U, np.array(U), V, np.array(V)))
        return super().s_field(U, V)

    def k_field(self, V):
        return self._keeping(super().k_field(V))

    def l_field(self, U):
        return self._keeping(super().l_field(U))

    def _keeping(self, field):
        def keeping(t, X):
            out = field(t, X)
            if self.keep:  # views: they hold the storage, not the arrays given
                self.seen.append((X[:], np.array(X), out[:], np.array(out)))
            return out

        return keeping


def test_the_array_kept_between_steps_never_overwrites_what_someone_holds():
    """The step keeps two tall arrays between steps (U_hat, V_hat, and in the half step its
    registers and bases); a basis that anyone still holds is left as it was, and the steps
    are those of a fresh method."""
    A, Y0 = _tridiagonal_start(11)
    r = Y0.rank
    keeping = _KeepsWhatItIsGiven(A, A)
    method = lri.MidpointBUG(lri.FixedRank(r))
    state = method.init(keeping, Y0, 0.0)
    for i in range(3):
        fresh = lri.MidpointBUG(lri.FixedRank(r))
        expected, _ = fresh.step(_KeepsWhatItIsGiven(A, A, keep=False), state, i * 0.01, 0.01)
        state, _ = method.step(keeping, state, i * 0.01, 0.01)
        for a, b in zip(state.Y, expected.Y, strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(keeping.seen) >= 6  # the bases of both Galerkin substeps of every step, and
    # the stages of the half step's K- and L-substeps
    for U, U_copy, V, V_copy in keeping.seen:
        np.testing.assert_array_equal(U, U_copy)
        np.testing.assert_array_equal(V, V_copy)


def test_steps_with_the_kept_array_are_those_without_it():
    """Steps of one method (each in the arrays the one before kept) equal fresh steps."""
    A, Y0 = _tridiagonal_start(12)
    r = Y0.rank
    problem = lri.SylvesterODE(A, A)
    method = lri.MidpointBUG(lri.FixedRank(r))
    state = method.init(problem, Y0, 0.0)
    for i in range(3):
        expected, _ = lri.MidpointBUG(lri.FixedRank(r)).step(problem, state, i * 0.01, 0.01)
        state, _ = method.step(problem, state, i * 0.01, 0.01)
        assert len(method.__dict__["_kept_storage"]) == 2
        for a, b in zip(state.Y, expected.Y, strict=True):
            np.testing.assert_array_equal(a, b)
