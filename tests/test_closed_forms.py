"""With one explicit Euler step per substep every integrator has an exact closed form.

These identities (algorithm reference, section 4) pin each step's bases, evaluation points
and signs to round-off, for any h, on a generic nonlinear, non-autonomous field.
"""

from __future__ import annotations

import numpy as np

import lowrank_integrators as lri
from tests.problems_for_tests import orthonormal, proj, tangent_projection

T0, H = 0.37, 0.21


def test_bug_closed_form_I4(euler_problem):
    f, Y0 = euler_problem
    U0, S0, V0 = Y0
    Y0d = Y0.to_dense()
    F0 = f(T0, Y0d)
    U1 = np.linalg.qr(U0 @ S0 + H * F0 @ V0)[0]
    V1 = np.linalg.qr(V0 @ S0.conj().T + H * F0.conj().T @ U0)[0]
    P_U, P_V = U1 @ U1.conj().T, V1 @ V1.conj().T
    Y_galerkin = P_U @ Y0d @ P_V
    expected = P_U @ (Y_galerkin + H * f(T0, Y_galerkin)) @ P_V

    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=lri.BUG(substep=lri.Euler()))
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)


def test_projector_splitting_closed_form_I5(euler_problem):
    f, Y0 = euler_problem
    U0, S0, V0 = Y0
    K1 = U0 @ S0 + H * f(T0, Y0.to_dense()) @ V0
    U1, S_hat = np.linalg.qr(K1)
    S_tilde = S_hat - H * U1.conj().T @ f(T0, K1 @ V0.conj().T) @ V0
    Yb = U1 @ S_tilde @ V0.conj().T
    expected = Yb + H * U1 @ U1.conj().T @ f(T0, Yb)

    method = lri.ProjectorSplitting(order=1, substep=lri.Euler())
    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)


def test_strang_closed_form(euler_problem):
    """KSL over h/2, merged L-step over h, then S- and K-steps over the second half."""
    f, Y0 = euler_problem
    U0, S0, V0 = Y0
    h2, tm = H / 2, T0 + H / 2
    K1 = U0 @ S0 + h2 * f(T0, Y0.to_dense()) @ V0
    U1, S_hat = np.linalg.qr(K1)
    S_tilde = S_hat - h2 * U1.conj().T @ f(T0, K1 @ V0.conj().T) @ V0
    L0 = V0 @ S_tilde.conj().T
    L1 = L0 + H * f(T0, U1 @ L0.conj().T).conj().T @ U1
    V1, R = np.linalg.qr(L1)
    S_b = R.conj().T
    S_tilde2 = S_b - h2 * U1.conj().T @ f(tm, U1 @ S_b @ V1.conj().T) @ V1
    K0 = U1 @ S_tilde2
    K2 = K0 + h2 * f(tm, K0 @ V1.conj().T) @ V1
    expected = K2 @ V1.conj().T

    method = lri.ProjectorSplitting(order=2, substep=lri.Euler())
    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)


def test_augmented_bug_closed_form_I1(euler_problem):
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    Y0d = Y0.to_dense()
    F0 = f(T0, Y0d)
    P_U = proj(np.concatenate([U0, F0 @ V0], axis=1))
    P_V = proj(np.concatenate([V0, F0.conj().T @ U0], axis=1))
    expected = Y0d + H * P_U @ F0 @ P_V

    # keep every column: FixedRank(2r) is the full augmented rank, so nothing is truncated.
    method = lri.AugmentedBUG(truncation=lri.FixedRank(2 * Y0.rank), substep=lri.Euler())
    sol = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-13)
    assert sol.ranks == [Y0.rank, 2 * Y0.rank]


def test_closed_forms_distinguish_the_methods(euler_problem):
    """The identities are sharp: the augmented BUG is not the tangent Euler step."""
    f, Y0 = euler_problem
    U0, _, V0 = Y0
    F0 = f(T0, Y0.to_dense())
    tangent = Y0.to_dense() + H * tangent_projection(U0, V0, F0)
    method = lri.AugmentedBUG(truncation=lri.FixedRank(2 * Y0.rank), substep=lri.Euler())
    Y1 = lri.solve(lri.DenseODE(f), Y0, (T0, T0 + H), H, method=method).Y.to_dense()
    assert np.linalg.norm(Y1 - tangent) > 1e-6


def test_euler_bug_at_unit_step_on_gradient_flow_is_block_power_iteration(rng):
    """V9: for F = A - W and h = 1, the fixed-rank BUG bases are orth(A V0) and orth(A^T U0)."""
    m, n, r = 20, 15, 3
    A = rng.standard_normal((m, n))
    Y0 = lri.LowRankMatrix(orthonormal(rng, m, r), np.diag([1.0, 0.5, 0.2]), orthonormal(rng, n, r))
    problem = lri.SylvesterODE(-np.eye(m), C=A)
    sol = lri.solve(problem, Y0, (0.0, 1.0), 1.0, method=lri.BUG(substep=lri.Euler()))
    np.testing.assert_allclose(proj(sol.Y.U), proj(A @ Y0.V), atol=1e-12)
    np.testing.assert_allclose(proj(sol.Y.V), proj(A.T @ Y0.U), atol=1e-12)
