"""The parallel BUG integrator (Ceruti-Kusch-Lubich 2024), its step rejection and Kusch's
second-order variant.

The step is pinned by its Euler closed form (the tangent-projected Euler step), the
rejection rule by a closed form in the doubled bases and by the rank growth it buys on a
Lyapunov equation with a source, the cost by exact budgets per step.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from tests.conftest import to_xp
from tests.problems_for_tests import (
    generic_field,
    naive_factor_rk4,
    observed_order,
    random_lowrank,
    tangent_projection,
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


def one_euler_step(f, Y0, method):
    return lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)


# --- closed forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "truncation", [lri.Tolerance(0.0), lri.FixedRank(6)], ids=["tolerance0", "fixed2r"]
)
def test_euler_step_is_the_tangent_projected_euler_step_I2(euler_problem, truncation):
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    expected = Y0.to_dense() + H * tangent_projection(U0, V0, f(T0, Y0.to_dense()))
    method = lri.ParallelBUG(truncation=truncation, reject=False, substep=lri.Euler())
    sol = one_euler_step(f, Y0, method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)
    assert sol.Y.rank == 6


def test_rejected_step_is_recomputed_from_Y0_in_the_doubled_bases(euler_problem):
    """With nothing truncated, criterion (a) rejects the 2r = 6 attempt (6 < min(m, n) = 11).
    The retry starts from Y0 written in [U0, U_tilde], [V0, V_tilde] and is the Euler step
    projected onto the tangent space of that doubled representation."""
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    F0 = f(T0, Y0.to_dense())
    U_hat = np.linalg.qr(np.hstack([U0, F0 @ V0]))[0]
    V_hat = np.linalg.qr(np.hstack([V0, F0.conj().T @ U0]))[0]
    expected = Y0.to_dense() + H * tangent_projection(U_hat, V_hat, F0)

    sol = one_euler_step(f, Y0, lri.ParallelBUG(lri.Tolerance(0.0), substep=lri.Euler()))
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)
    assert sol.step_info[0].rejected == 1
    assert sol.stats.n_rejected == 1
    assert sol.Y.rank == 11  # the retry's core is 12 x 11


def test_new_basis_keeps_U0_itself_as_leading_block(rng):
    """ext(U0, K1) must extend U0 itself: the Q factor of QR([U0, K1]) reproduces U0 only up
    to unit-modulus column factors, and the core's S_bar block is written in U0's
    coordinates. Bases with column phases (which a QR does not keep) expose the difference."""
    m, n, r = 12, 10, 3
    f = generic_field(rng, m, n, complex_=True)
    U, S, V = random_lowrank(rng, m, n, r, complex_=True)
    phases = np.exp(1j * np.array([np.pi, 0.7, -2.0]))
    Y0 = lri.LowRankMatrix(U * phases, S, V * phases.conj())
    U0, _, V0 = Y0
    expected = Y0.to_dense() + H * tangent_projection(U0, V0, f(T0, Y0.to_dense()))
    method = lri.ParallelBUG(lri.Tolerance(0.0), reject=False, substep=lri.Euler())
    sol = one_euler_step(f, Y0, method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)


# --- cost budgets -------------------------------------------------------------------------


def counts(info):
    return (info.n_right, info.n_left, info.n_project, info.n_qr, info.n_svd, info.rejected)


def test_cost_budget_without_rejection(euler_problem):
    f, Y0 = euler_problem
    s = 2
    method = lri.ParallelBUG(lri.Tolerance(1e-3), reject=False, substep=lri.RK4(steps=s))
    info = one_euler_step(f, Y0, method).step_info[0]
    # K, L and S substeps: 4s products each; two QRs of 2r columns; one SVD of the core.
    assert counts(info) == (4 * s, 4 * s, 4 * s, 2, 1, 0)


def test_cost_budget_of_an_accepted_step_with_rejection_test(euler_problem):
    """Criterion (b) costs one projection at Y0 when (a) does not already decide."""
    f, Y0 = euler_problem
    s = 1
    method = lri.ParallelBUG(lri.Tolerance(10.0), substep=lri.RK4(steps=s))
    info = one_euler_step(f, Y0, method).step_info[0]
    assert counts(info) == (4 * s, 4 * s, 4 * s + 1, 2, 1, 0)


def test_cost_budget_of_a_rejected_step(euler_problem):
    """Every attempt is paid for: one rejection doubles the budget ((a) decides, no (b))."""
    f, Y0 = euler_problem
    method = lri.ParallelBUG(lri.Tolerance(0.0), substep=lri.Euler())
    info = one_euler_step(f, Y0, method).step_info[0]
    assert counts(info) == (2, 2, 2, 4, 2, 1)


def test_cost_budget_of_the_second_order_variant(euler_problem):
    """Kusch's variant adds F(Y0) V0, F(Y0)^H U0 and their two QRs; its core is 4r x 4r."""
    f, Y0 = euler_problem
    s = 1
    method = lri.ParallelBUG(lri.FixedRank(3), order=2, reject=False, substep=lri.RK4(steps=s))
    info = one_euler_step(f, Y0, method).step_info[0]
    assert counts(info) == (4 * s + 1, 4 * s + 1, 4 * s, 4, 1, 0)
    assert info.truncation.rank_before == 11  # 4r = 12 rows, min(n, 4r) = 11 columns


# --- rejection rule -----------------------------------------------------------------------


def test_rejection_grows_the_rank_fast_where_the_plain_method_lags():
    """V7-like Lyapunov equation with a source from a rank-1 start: without rejection the new
    directions get O(h^2) weight and the tolerance cuts them; with rejection the error is
    orders of magnitude smaller."""
    problem, f, Y0 = lyapunov_with_source()
    ref = reference(f, Y0, 1.0)
    theta = 1e-6
    plain = lri.solve(
        problem, Y0, (0.0, 1.0), 0.05, method=lri.ParallelBUG(lri.Tolerance(theta), reject=False)
    )
    rej = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=lri.ParallelBUG(lri.Tolerance(theta)))
    err_plain = np.linalg.norm(plain.Y.to_dense() - ref)
    err_rej = np.linalg.norm(rej.Y.to_dense() - ref)
    assert rej.stats.n_rejected >= 1
    assert plain.stats.n_rejected == 0
    assert err_rej < 1e-2 * err_plain, (err_rej, err_plain)
    assert rej.ranks[1] > plain.ranks[1] == 2


def test_rank_grows_at_most_doubling_per_attempt_and_settles_near_the_target():
    problem, f, Y0 = lyapunov_with_source()
    theta = 1e-6
    ref = reference(f, Y0, 1.0)
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=lri.ParallelBUG(lri.Tolerance(theta)))
    for before, after, info in zip(sol.ranks[:-1], sol.ranks[1:], sol.step_info, strict=True):
        assert after <= before * 2 ** (1 + info.rejected)
    assert sol.ranks[0] == 1
    assert numerical_rank(ref, 100 * theta) <= sol.ranks[-1] <= numerical_rank(ref, theta / 100)


def test_rejection_respects_rmax():
    problem, _, Y0 = lyapunov_with_source()
    sol = lri.solve(
        problem, Y0, (0.0, 0.5), 0.05, method=lri.ParallelBUG(lri.Tolerance(0.0, rmax=4))
    )
    assert max(sol.ranks) <= 4
    # at rank 4 the doubled core has p = 8 >= rmax: no more rejections
    assert all(info.rejected == 0 for info in sol.step_info[2:])


def test_fixed_rank_rejects_exactly_until_the_rank_is_reached():
    """With FixedRank(k) rejection grows a rank-1 start to k within the first step
    (1 -> 2 -> 4: one rejection) and never rejects at rank k."""
    problem, _, Y0 = lyapunov_with_source()
    sol = lri.solve(problem, Y0, (0.0, 0.2), 0.05, method=lri.ParallelBUG(lri.FixedRank(4)))
    assert sol.ranks == [1, 4, 4, 4, 4]
    assert [info.rejected for info in sol.step_info] == [1, 0, 0, 0]


def test_rank_shrinks_when_directions_decay():
    problem, Y0, surviving = decaying_problem()
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.05, method=lri.ParallelBUG(lri.Tolerance(1e-6)))
    assert sol.ranks[0] == 6
    assert sol.ranks[-1] == surviving
    for info in sol.step_info:
        assert info.truncation.tail <= info.truncation.tolerance


# --- accuracy -----------------------------------------------------------------------------


def test_second_order_variant_is_second_order_on_a_rank_preserving_nonlinear_field():
    f, Y0 = invariant_problem()
    T = 1.0
    ref = reference(f, Y0, T)
    hs = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    errors = [
        np.linalg.norm(
            lri.solve(
                lri.DenseODE(f), Y0, (0.0, T), h, method=lri.ParallelBUG(lri.FixedRank(3), order=2)
            ).Y.to_dense()
            - ref
        )
        for h in hs
    ]
    assert lri.ParallelBUG(lri.FixedRank(3), order=2).order == 2
    assert abs(observed_order(hs, errors) - 2) < 0.2, errors


def test_first_order_parallel_bug_converges_with_a_h_scaled_tolerance():
    """Truncated to a fixed rank the parallel BUG converges erratically (no order asserted);
    with a tolerance ~ h^2 and rejection it is first order."""
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
                method=lri.ParallelBUG(lri.Tolerance(1e-2, scale_with_h=2)),
            ).Y.to_dense()
            - ref
        )
        for h in hs
    ]
    assert observed_order(hs, errors) > 0.8, errors


@pytest.mark.parametrize("order", [1, 2])
def test_robust_to_a_tiny_smallest_singular_value(order):
    """sigma_3 = 1e-10: the error stays that of a well-conditioned start, while the
    Koch-Lubich factor ODEs with the same step break down."""
    T, h = 1.0, 0.05
    errors = []
    for sigmas in [(1.0, 0.5, 0.25), (1.0, 0.5, 1e-10)]:
        f, Y0 = invariant_problem(sigmas=sigmas)
        sol = lri.solve(
            lri.DenseODE(f), Y0, (0.0, T), h, method=lri.ParallelBUG(lri.FixedRank(3), order=order)
        )
        assert sol.status == "success"
        errors.append(np.linalg.norm(sol.Y.to_dense() - reference(f, Y0, T)))
    assert errors[1] < 3 * errors[0], errors
    with np.errstate(all="ignore"):
        naive = naive_factor_rk4(f, Y0, T, h)
    assert not np.isfinite(naive).all() or np.linalg.norm(naive - reference(f, Y0, T)) > 1.0


# --- descent ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2])
def test_loss_does_not_increase_on_a_gradient_flow_for_h_below_one_over_lipschitz(order):
    flow = least_squares_flow()
    h = 1.0 / flow.lipschitz
    method = lri.ParallelBUG(
        lri.Tolerance(1e-2, relative=True, rmax=8), order=order, substep=lri.Euler()
    )
    sol = lri.solve(flow.problem, flow.Y0, (0.0, 30 * h), h, method=method, save_states=True)
    losses = np.array([flow.loss(Y) for Y in sol.states])
    grads = np.array([flow.gradient_norm(Y) for Y in sol.states[1:]])
    tau = np.array([info.truncation.tolerance for info in sol.step_info])
    slack = tau * grads + 0.5 * flow.lipschitz * tau**2 + 1e-12 * losses[:-1]
    assert np.all(np.diff(losses) <= slack), np.diff(losses)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("order", [1, 2])
def test_zero_field_leaves_Y_unchanged(rng, order):
    """Spurious directions of a rank-deficient augmentation carry no weight: they are
    truncated, and neither rejection criterion fires."""
    Y0 = random_lowrank(rng, 12, 10, 4, sigmas=np.array([1.0, 0.1, 1e-5, 1e-12]))
    zero = lri.DenseODE(lambda t, Y: np.zeros_like(Y))
    method = lri.ParallelBUG(lri.Tolerance(1e-14), order=order)
    sol = lri.solve(zero, Y0, (0.0, 1.0), 0.1, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), Y0.to_dense(), atol=1e-14)
    assert sol.Y.rank == 4
    assert sol.stats.n_rejected == 0


# --- backends and arguments ---------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2])
def test_array_api_backends(xp, order):
    _, Y0 = invariant_problem()
    rng = np.random.default_rng(7)
    W1, W2 = (to_xp(xp, rng.standard_normal((20, 20)) / 20) for _ in range(2))
    f = invariant_field(W1, W2, xp)
    Y0x = lri.LowRankMatrix(*(to_xp(xp, a) for a in Y0))
    method = lri.ParallelBUG(lri.Tolerance(1e-8), order=order)
    sol = lri.solve(lri.DenseODE(f), Y0x, (0.0, 0.2), 0.05, method=method)
    assert all(type(a) is type(Y0x.U) for a in sol.Y)
    ref = reference(invariant_field(*(bk.to_host(W) for W in (W1, W2))), Y0, 0.2)
    assert np.linalg.norm(bk.to_host(sol.Y.to_dense()) - ref) < 1e-3


def test_complex_lyapunov_with_a_non_hermitian_source():
    """A complex, non-Hermitian source catches a plain transpose in any L-product."""
    problem, f, Y0 = lyapunov_with_source(complex_=True)
    ref = reference(f, Y0, 0.5)
    sol = lri.solve(problem, Y0, (0.0, 0.5), 0.05, method=lri.ParallelBUG(lri.Tolerance(1e-8)))
    assert sol.Y.dtype == np.complex128
    assert np.linalg.norm(sol.Y.to_dense() - ref) < 1e-4 * np.linalg.norm(ref)


def test_declares_its_properties():
    assert lri.ParallelBUG(lri.FixedRank(2)).order == 1
    assert lri.ParallelBUG.rank_adaptive
    assert any("2304.05660" in ref for ref in lri.ParallelBUG.references)
    assert any("2403.02834" in ref for ref in lri.ParallelBUG.references)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"reject": 1}, TypeError),
        ({"order": 3}, ValueError),
        ({"c_eta": 0.0}, ValueError),
        ({"c_eta": "1"}, TypeError),
    ],
)
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        lri.ParallelBUG(lri.Tolerance(1e-6), **kwargs)


def test_per_mode_fixed_ranks_are_refused():
    with pytest.raises(ValueError, match="truncation"):
        lri.ParallelBUG(lri.FixedRank((2, 3)))
    with pytest.raises(TypeError, match="truncation"):
        lri.ParallelBUG(truncation=4)


# --- the QR of the new directions ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_precision_takes_the_new_directions_from_the_substeps_increment(
    rng, dtype, monkeypatch
):
    """``[U0, K1]`` and ``[U0, K1 - U0 S0]`` have the same Q factor and the same diagonal blocks
    of R. Single precision factors the increment, whose condition number does not grow like
    ``1 / h``: its Cholesky QR needs two passes where that of ``[U0, K1]`` needs more (or
    Householder). Double precision factors ``[U0, K1]``. The steps of both forms agree to the
    precision."""
    import scipy.sparse as sp

    import lowrank_integrators._qr as qr
    import lowrank_integrators.integrators.parallel_bug as pbug

    n, r, h = 10_000, 4, 1e-3  # tall enough for the Cholesky QR (small blocks take Householder)
    U0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    V0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    Y0 = lri.LowRankMatrix(U0, np.diag([1.0, 0.1, 1e-2, 1e-3]).astype(dtype), V0)
    A = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr", dtype=dtype)
    problem = lri.SylvesterODE(A, A)
    method = lri.ParallelBUG(lri.FixedRank(r), substep=lri.Euler())
    factored, paths = [], []
    monkeypatch.setattr(
        bk, "qr_increment", lambda *a, f=bk.qr_increment: factored.append(1) or f(*a)
    )
    factor = qr._factor
    monkeypatch.setattr(
        qr, "_factor", lambda *a, **k: (lambda res: paths.append(res[3]) or res)(factor(*a, **k))
    )
    Y1 = method.step(problem, method.init(problem, Y0, 0.0), 0.0, h)[0].Y
    assert len(factored) == (2 if dtype == np.float32 else 0)
    assert paths == ["CholeskyQR2", "CholeskyQR2"]
    paths.clear()
    monkeypatch.setattr(pbug, "_INCREMENT_FROM_EPS", 0.0 if dtype == np.float64 else 1.0)
    other = method.step(problem, method.init(problem, Y0, 0.0), 0.0, h)[0].Y
    assert len(factored) == 2  # the other form
    if dtype == np.float32:
        # [U0, K1] needs a third pass (or Householder) for at least one of its QRs
        assert paths != ["CholeskyQR2", "CholeskyQR2"]
    assert Y1.dtype == dtype
    probe = rng.standard_normal((n, 5))
    diff = Y1.U @ (Y1.S @ (Y1.V.T @ probe)) - other.U @ (other.S @ (other.V.T @ probe))
    size = np.linalg.norm(Y1.U @ (Y1.S @ (Y1.V.T @ probe)))
    assert np.linalg.norm(diff) <= (1e-5 if dtype == np.float32 else 1e-13) * size
    assert max(_defect(Y1.U), _defect(Y1.V)) <= 10 * np.finfo(dtype).eps * r


# --- orthonormality over long runs --------------------------------------------------------


def _defect(X):
    return float(np.abs(X.conj().T @ X - np.eye(X.shape[1])).max())


def _perturbed_orthonormal(rng, n, r, dtype, size):
    """An orthonormal basis with a defect ``max|X^H X - I|`` of about ``size``."""
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (Q @ (np.eye(r) + size * np.triu(np.ones((r, r))))).astype(dtype)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(
    "dtype, start_defect, limit",
    [(np.float64, 1e-9, 1e-13), (np.float32, 1e-4, 1e-6)],
    ids=["float64", "float32"],
)
def test_a_step_returns_bases_orthonormal_to_round_off(rng, dtype, start_defect, limit, order):
    """The new bases are Q factors, never the old basis pasted into one: a defect of the
    start (within what LowRankMatrix accepts) is not carried into the next state, so
    defects cannot add up over many steps."""
    n, r = 10, 2
    U0 = _perturbed_orthonormal(rng, n, r, dtype, start_defect)
    V0 = _perturbed_orthonormal(rng, n, r, dtype, start_defect)
    Y0 = lri.LowRankMatrix(U0, np.diag([1.0, 0.5]).astype(dtype), V0)
    assert min(_defect(U0), _defect(V0)) > start_defect
    f = generic_field(rng, n, n)
    problem = lri.DenseODE(lambda t, Y: f(t, Y).astype(Y.dtype))
    for truncation in (lri.FixedRank(r), lri.Tolerance(1e-3, rmax=4)):
        method = lri.ParallelBUG(truncation, order=order, substep=lri.Euler())
        sol = lri.solve(problem, Y0, (0.0, 0.01), 0.01, method=method)
        assert sol.Y.dtype == dtype
        assert max(_defect(sol.Y.U), _defect(sol.Y.V)) <= limit


# The float32 run (the training default) is part of the default run; the float64 run of 1e5
# steps takes a few minutes and is selected with -m slow. The one-step test above guards the
# cause (a carried defect) in both.
def _long_run(dtype, n_steps):
    rng = np.random.default_rng(3)
    n, r = 6, 2
    W1, W2 = (skew_matrix(rng, n).astype(dtype) for _ in range(2))
    problem = lri.SylvesterODE(W1, W2)
    U0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    V0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    Y0 = lri.LowRankMatrix(U0, np.diag([1.0, 0.1]).astype(dtype), V0)
    method = lri.ParallelBUG(lri.Tolerance(1e-3, rmax=3), substep=lri.Euler())
    h = 0.01
    sol = lri.solve(problem, Y0, (0.0, n_steps * h), h, method=method, save_singular_values=False)
    assert sol.status == "success" and sol.stats.n_steps == n_steps
    return max(_defect(sol.Y.U), _defect(sol.Y.V))


def skew_matrix(rng, n):
    W = rng.standard_normal((n, n))
    return (W - W.T) / 2


def test_float32_bases_stay_orthonormal_over_2e4_steps():
    assert _long_run(np.float32, 20_000) <= 1e-5


@pytest.mark.slow
def test_float64_bases_stay_orthonormal_over_1e5_steps():
    assert _long_run(np.float64, 100_000) <= 1e-13


class _NeverAccepts(lri.ParallelBUG):
    """A rejection criterion that always fires, even once the bases are full."""

    def _rejects(self, *args):
        return True
        yield  # a part of the step, written as requests like the method it replaces


def test_a_step_that_never_stops_rejecting_fails_instead_of_looping(rng):
    Y0 = random_lowrank(rng, 9, 7, 1)
    f = generic_field(rng, 9, 7)
    sol = lri.solve(lri.DenseODE(f), Y0, (0.0, 0.2), 0.1, method=_NeverAccepts(lri.Tolerance(0.1)))
    assert sol.status == "failed"
    assert "step 1 of 2" in sol.message and "rejected" in sol.message
    assert sol.Y is Y0
