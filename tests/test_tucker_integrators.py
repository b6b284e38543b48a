"""Specification of the Tucker integrators: exactness, orders, ranks, closed forms, backends.

The reference problem is V8 of the algorithm reference: ``F(Y) = Y + sum_k Y x_k W_k`` with
skew(-Hermitian) ``W_k``, superdiagonal core ``2^-j`` and ``U_k = I[:, :r]``. F is tangent to
the Tucker manifold, so the DLRA solution ``e^t C_r x_k e^{t W_k}[:, :r]`` is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.integrators.tucker_steps import ModeTermsCache, TuckerStepInfo
from lowrank_integrators.tucker import multi_mode_product, unfold

from .conftest import to_xp
from .test_tucker import random_orthonormal, random_tucker


class V8:
    """The Tucker analogue of the Sylvester rotation, in d modes (real or complex)."""

    def __init__(self, n=20, r=4, d=3, seed=99, complex_=False):
        rng = np.random.default_rng(seed)
        R = [rng.random((n, n)) for _ in range(d)]
        if complex_:
            R = [Rk + 1j * rng.random((n, n)) for Rk in R]
        self.W = [(Rk - Rk.conj().T) / 2 for Rk in R]
        dtype = np.complex128 if complex_ else np.float64
        core = np.zeros((r,) * d, dtype=dtype)
        for j in range(r):
            core[(j,) * d] = 2.0 ** -(j + 1)
        self.core = core
        self.Y0 = lri.TuckerTensor(core, [np.eye(n, r, dtype=dtype)] * d)
        ops = [self.W[0] + np.eye(n), *self.W[1:]]
        self.problem = lri.TensorSylvesterODE(ops)

    def exact(self, t):
        r = self.core.shape[0]
        return math.exp(t) * multi_mode_product(
            self.core, [sla.expm(t * Wk)[:, :r] for Wk in self.W]
        )


def accurate(h, dt=0.02):
    """RK4 substeps whose error is far below the splitting error (internal step <= dt)."""
    return lri.RK4(steps=max(1, math.ceil(h / dt - 1e-9)))


def error(sol, ref):
    return float(np.linalg.norm(sol.Y.to_dense() - ref))


def slope(hs, errs):
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


# --- exactness and orders on V8 ----------------------------------------------------------------


@pytest.mark.parametrize(("d", "n", "r"), [(3, 20, 4), (4, 8, 2)])
def test_projector_splitting_is_exact_on_a_tangent_field_for_every_h(d, n, r):
    v8 = V8(n=n, r=r, d=d)
    T = 0.5
    ref = v8.exact(T)
    for h in (0.5, 0.25, 0.1):
        sol = lri.solve(
            v8.problem, v8.Y0, (0.0, T), h, lri.TuckerProjectorSplitting(substep=accurate(h))
        )
        assert sol.ranks[-1] == (r,) * d
        # Exact up to the substep error (RK4 with internal steps <= 0.02).
        assert error(sol, ref) < 1e-7 * np.linalg.norm(ref)
    # Teeth: the BUG on the same problem and step is not exact.
    bug = lri.solve(v8.problem, v8.Y0, (0.0, T), 0.25, lri.TuckerBUG(substep=accurate(0.25)))
    assert error(bug, ref) > 1e-3 * np.linalg.norm(ref)


def test_projector_splitting_is_exact_for_complex_data():
    v8 = V8(n=12, r=3, complex_=True)
    Y0 = lri.TuckerTensor(v8.core * (1 + 0.5j), v8.Y0.factors)
    h = T = 0.4
    # The complex W_k have larger norms than the real ones: finer substeps.
    method = lri.TuckerProjectorSplitting(accurate(h, dt=0.005))
    sol = lri.solve(v8.problem, Y0, (0.0, T), h, method)
    assert sol.Y.dtype == np.complex128
    ref = (1 + 0.5j) * v8.exact(T)
    assert error(sol, ref) < 1e-7 * np.linalg.norm(ref)


def test_fixed_rank_tucker_bug_is_first_order():
    v8 = V8()
    T = 0.5
    ref = v8.exact(T)
    hs = np.array([0.1, 0.05, 0.025])
    errs = [
        error(lri.solve(v8.problem, v8.Y0, (0.0, T), h, lri.TuckerBUG(substep=accurate(h))), ref)
        for h in hs
    ]
    assert 0.85 < slope(hs, errs) < 1.25


def test_augmented_tucker_bug_truncated_to_fixed_ranks_is_second_order_on_v8():
    # Special structure of the Sylvester-type field (algorithm reference, V8).
    v8 = V8()
    T = 0.5
    ref = v8.exact(T)
    hs = np.array([0.1, 0.05])
    errs = [
        error(
            lri.solve(
                v8.problem, v8.Y0, (0.0, T), h, lri.TuckerBUG(lri.FixedRank((4, 4, 4)), accurate(h))
            ),
            ref,
        )
        for h in hs
    ]
    assert slope(hs, errs) > 1.7


def test_complex_tucker_bug_converges_at_first_order():
    v8 = V8(n=12, r=3, complex_=True)
    T = 0.5
    ref = v8.exact(T)
    hs = np.array([0.1, 0.05])
    errs = [
        error(lri.solve(v8.problem, v8.Y0, (0.0, T), h, lri.TuckerBUG(substep=accurate(h))), ref)
        for h in hs
    ]
    assert 0.8 < slope(hs, errs) < 1.3


def test_tucker_bug_error_does_not_grow_with_small_singular_values():
    # Robustness: at r = 8 the smallest core singular values are 2^-8, far below h = 0.1,
    # yet the error constant stays that of r = 4.
    errs = []
    for r in (4, 8):
        v8 = V8(r=r)
        sol = lri.solve(v8.problem, v8.Y0, (0.0, 0.5), 0.1, lri.TuckerBUG(substep=accurate(0.1)))
        errs.append(error(sol, v8.exact(0.5)))
    assert 0.5 < errs[1] / errs[0] < 2.0


def test_norm_conservation_of_projector_splitting_and_rank_adaptive_bug(rng):
    # Re <Y, F(Y)> = 0 for every Y: every substep of projector splitting conserves the norm,
    # the rank-adaptive BUG conserves it up to the truncation; the fixed-rank BUG drifts.
    shape = (6, 5, 4)
    W = [random_orthonormal(rng, n, n, np.complex128) for n in shape]
    W = [(Wk - Wk.conj().T) / 2 for Wk in W]

    def f(t, Y):
        out = 1j * np.abs(Y) ** 2 * Y
        for k, Wk in enumerate(W):
            out = out + np.moveaxis(np.tensordot(Wk, Y, axes=(1, k)), 0, k)
        return out

    problem = lri.DenseTensorODE(f)
    Y0 = random_tucker(rng, shape, (2, 2, 2), np.complex128)
    n0 = Y0.norm()

    def drift(method):
        sol = lri.solve(problem, Y0, (0.0, 0.5), 0.1, method, save_states=True)
        return max(abs(Y.norm() - n0) for Y in sol.states), sol

    psi, _ = drift(lri.TuckerProjectorSplitting(accurate(0.1, dt=0.025)))
    assert psi < 1e-6 * n0
    adaptive, sol = drift(lri.TuckerBUG(lri.Tolerance(1e-2), accurate(0.1, dt=0.025)))
    assert max(sol.ranks[-1]) < 6  # the truncation did act
    # Truncating the core is an orthogonal projection: ||Y_hat||^2 - ||Y1||^2 <= sum_i tail_i^2,
    # so each step loses at most sum_i tail_i^2 / (||Y_hat|| + ||Y1||) of the norm.
    dropped = sum(rec.tail**2 for info in sol.step_info for rec in info.truncations)
    assert dropped > 0
    assert adaptive <= dropped / n0 + 1e-6 * n0
    fixed, _ = drift(lri.TuckerBUG(substep=accurate(0.1, dt=0.025)))
    assert fixed > 1e-3 * n0


# --- rank adaptivity ---------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "n"), [(3, 20), (4, 8)])
def test_rank_adaptive_tucker_bug_keeps_the_ranks_of_a_tangent_field(d, n):
    v8 = V8(n=n, r=2, d=d)
    T, h = 0.5, 0.1
    # An RK4 polynomial of the core flow is not a product of mode-wise factors: it adds
    # spurious mode directions of the size of the substep error, which the tolerance must
    # exceed. With exact substeps the augmented core has exactly the initial ranks.
    method = lri.TuckerBUG(lri.Tolerance(1e-8), substep=accurate(h, dt=0.005))
    sol = lri.solve(v8.problem, v8.Y0, (0.0, T), h, method)
    assert all(r == (2,) * d for r in sol.ranks)
    # The augmented bases doubled every mode before the truncation went back to 2.
    assert all(rec.rank_before == 4 for info in sol.step_info for rec in info.truncations)
    assert error(sol, v8.exact(T)) < 1e-2 * np.linalg.norm(v8.exact(T))


@pytest.mark.parametrize(
    ("shape", "target_ranks"), [((10, 9, 8), (3, 2, 4)), ((6, 6, 5, 5), (2, 3, 2, 2))]
)
def test_rank_adaptive_tucker_bug_grows_the_ranks_on_a_gradient_flow(rng, shape, target_ranks):
    # F(Y) = A - Y = -grad 1/2 ||Y - A||^2 towards a low-rank target A; start at ranks 1.
    d = len(shape)
    A = random_tucker(rng, shape, target_ranks)
    problem = lri.TensorSylvesterODE([-np.eye(shape[0])] + [None] * (d - 1), C=A)
    Y0 = random_tucker(rng, shape, (1,) * d)
    Y0 = lri.TuckerTensor(0.1 * Y0.core / Y0.norm(), Y0.factors)
    T, h = 2.0, 0.05
    method = lri.TuckerBUG(lri.Tolerance(1e-6, scale_with_h=True), substep=accurate(h))
    sol = lri.solve(problem, Y0, (0.0, T), h, method, save_states=True)
    ranks = np.array(sol.ranks)
    assert tuple(ranks[0]) == (1,) * d
    assert np.all(ranks[1:] <= 2 * ranks[:-1])  # at most doubling per step
    assert np.all(ranks[-1] >= target_ranks) and np.all(ranks[-1] <= np.add(target_ranks, 1))
    exact = A.to_dense() + math.exp(-T) * (Y0.to_dense() - A.to_dense())
    assert error(sol, exact) < 1e-2 * np.linalg.norm(exact)
    # The loss of the gradient flow decreases at every step (up to the tolerance).
    loss = [0.5 * np.linalg.norm(Y.to_dense() - A.to_dense()) ** 2 for Y in sol.states]
    assert np.all(np.diff(loss) <= 1e-10)
    # Every mode's discarded tail is within the tolerance.
    for info in sol.step_info:
        assert len(info.truncations) == d
        assert all(rec.tail <= rec.tolerance for rec in info.truncations)


def _gradient_flow(rng, shape, target_ranks):
    A = random_tucker(rng, shape, target_ranks)
    problem = lri.TensorSylvesterODE([-np.eye(shape[0])] + [None] * (len(shape) - 1), C=A)
    return problem, random_tucker(rng, shape, (1,) * len(shape))


def test_rank_adaptive_tucker_bug_respects_per_mode_fixed_ranks_and_rmax(rng):
    problem, Y0 = _gradient_flow(rng, (8, 7, 6), (3, 2, 4))
    fixed = lri.TuckerBUG(lri.FixedRank((3, 2, 2)))
    sol = lri.solve(problem, Y0, (0.0, 0.5), 0.1, fixed)
    assert sol.ranks[0] == (1, 1, 1) and sol.ranks[-1] == (3, 2, 2)
    # Ranks (3, 1, 2) cannot be carried by a core: r_0 = 3 > r_1 r_2 = 2 is clamped to 2.
    clamped = lri.TuckerBUG(lri.FixedRank((3, 1, 2)))
    assert lri.solve(problem, Y0, (0.0, 0.5), 0.1, clamped).ranks[-1] == (2, 1, 2)
    capped = lri.TuckerBUG(lri.Tolerance(1e-12, rmax=2))
    sol = lri.solve(problem, Y0, (0.0, 0.5), 0.1, capped)
    assert sol.ranks[-1] == (2, 2, 2)
    assert all(max(r) <= 2 for r in sol.ranks)


# --- exact closed forms with one Euler step per substep ----------------------------------------


def _nonlinear_problem(shape, rng):
    B = [random_orthonormal(rng, n, n, np.complex128) for n in shape]

    def f(t, Y):
        out = 0.3j * Y * np.abs(Y) ** 2 + (1.0 + t) * Y
        for k, Bk in enumerate(B):
            out = out + 0.5 * np.moveaxis(np.tensordot(Bk, Y, axes=(1, k)), 0, k)
        return out

    return lri.DenseTensorODE(f), f


def _projector(U):
    Q = np.linalg.qr(U)[0]
    return Q @ Q.conj().T


def test_fixed_rank_tucker_bug_with_euler_substeps_has_its_closed_form(rng):
    shape, ranks, h = (6, 5, 4), (2, 3, 2), 0.3
    problem, f = _nonlinear_problem(shape, rng)
    Y0 = random_tucker(rng, shape, ranks, np.complex128)
    F0 = f(0.0, Y0.to_dense())
    P = []
    for i in range(3):
        U, S, V = Y0.matricize(i)  # V_i formed explicitly with the Kronecker convention
        P.append(_projector(U @ S + h * unfold(F0, i) @ V))
    Yp = multi_mode_product(Y0.to_dense(), P)
    expected = multi_mode_product(Yp + h * f(0.0, Yp), P)
    sol = lri.solve(problem, Y0, (0.0, h), h, lri.TuckerBUG(substep=lri.Euler()))
    assert sol.Y.ranks == ranks
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-12)
    for i, U1 in enumerate(sol.Y.factors):
        np.testing.assert_allclose(U1 @ U1.conj().T, P[i], atol=1e-12)


def test_rank_adaptive_tucker_bug_with_euler_substeps_has_its_closed_form(rng):
    # Without truncation: Y1 = Y0 + h F(Y0) x_j P_j with P_j onto [U_j, Mat_j(F(Y0)) V_j].
    shape, ranks, h = (7, 6, 5), (2, 2, 2), 0.2
    problem, f = _nonlinear_problem(shape, rng)
    Y0 = random_tucker(rng, shape, ranks, np.complex128)
    F0 = f(0.0, Y0.to_dense())
    P = []
    for i in range(3):
        U, _, V = Y0.matricize(i)
        P.append(_projector(np.concatenate([U, unfold(F0, i) @ V], axis=1)))
    expected = Y0.to_dense() + h * multi_mode_product(F0, P)
    sol = lri.solve(problem, Y0, (0.0, h), h, lri.TuckerBUG(lri.Tolerance(0.0), lri.Euler()))
    assert sol.Y.ranks == (4, 4, 4)
    np.testing.assert_allclose(sol.Y.to_dense(), expected, atol=1e-12)


def test_tucker_bug_of_order_two_is_the_matrix_bug(rng):
    # For d = 2, Y = U_1 C U_2^T is the matrix U S V^H with S = C and V = conj(U_2).
    m, n, r = 9, 7, 3
    A1, A2 = (
        random_orthonormal(rng, m, m, np.complex128),
        random_orthonormal(rng, n, n, np.complex128),
    )

    def f(t, Y):
        return A1 @ Y + Y @ A2 + 0.5j * Y * np.abs(Y) ** 2 + t * Y

    Yt = random_tucker(rng, (m, n), (r, r), np.complex128)
    U1, U2 = Yt.factors
    Ym = lri.LowRankMatrix(U1, Yt.core, U2.conj())
    h, T = 0.1, 0.3
    cases = [
        (lri.TuckerBUG(substep=lri.RK4()), lri.BUG(substep=lri.RK4())),
        (
            lri.TuckerBUG(lri.FixedRank(r), substep=lri.RK4()),
            lri.AugmentedBUG(lri.FixedRank(r), substep=lri.RK4()),
        ),
    ]
    for tucker_method, matrix_method in cases:
        st = lri.solve(lri.DenseTensorODE(f), Yt, (0.0, T), h, tucker_method)
        sm = lri.solve(lri.DenseODE(f), Ym, (0.0, T), h, matrix_method)
        np.testing.assert_allclose(st.Y.to_dense(), sm.Y.to_dense(), atol=1e-12)


# --- driver, bookkeeping and backends ----------------------------------------------------------


def test_solve_records_tuples_and_the_cost_of_each_method():
    v8 = V8(n=10, r=2)
    d = 3
    expected = {
        # (n_right, n_project, n_qr, n_svd) per step with RK4(steps=1)
        "psi": (lri.TuckerProjectorSplitting(), (4 * d, 4 * d + 4, 2 * d, 0)),
        "bug": (lri.TuckerBUG(), (4 * d, 4, 2 * d, 0)),
        "adaptive": (lri.TuckerBUG(lri.Tolerance(1e-8)), (4 * d, 4, 2 * d, d)),
    }
    for name, (method, cost) in expected.items():
        sol = lri.solve(v8.problem, v8.Y0, (0.0, 0.2), 0.1, method)
        assert sol.status == "success", name
        if name != "adaptive":
            assert sol.ranks == [(2, 2, 2)] * 3
        assert all(isinstance(s, tuple) and len(s) == d for s in sol.singular_values)
        info = sol.step_info[0]
        assert isinstance(info, TuckerStepInfo)
        assert info.rank_before == (2, 2, 2)
        assert info.rank_after == sol.ranks[1]
        assert (info.n_right, info.n_project, info.n_qr, info.n_svd) == cost, name
        assert info.n_left == 0
        assert sol.stats.n_steps == 2
        if name == "adaptive":
            assert len(info.truncations) == d and info.truncation is info.truncations[-1]


@pytest.mark.parametrize(
    "method",
    [
        lri.TuckerProjectorSplitting(substep=lri.RK4(2)),
        lri.TuckerBUG(lri.Tolerance(1e-10), substep=lri.RK4(2)),
    ],
    ids=["psi", "adaptive-bug"],
)
def test_tucker_integrators_run_on_every_backend(xp, method):
    v8 = V8(n=8, r=2)
    ref = lri.solve(v8.problem, v8.Y0, (0.0, 0.2), 0.1, method).Y.to_dense()
    ops = [to_xp(xp, A) for A in v8.problem.operators]
    problem = lri.TensorSylvesterODE(ops)
    Y0 = lri.TuckerTensor(to_xp(xp, v8.Y0.core), [to_xp(xp, U) for U in v8.Y0.factors])
    sol = lri.solve(problem, Y0, (0.0, 0.2), 0.1, method)
    assert sol.status == "success"
    assert type(sol.Y.core) is type(Y0.core)
    np.testing.assert_allclose(bk.to_host(sol.Y.to_dense()), ref, atol=1e-12)


def test_tucker_integrators_reject_bad_input(rng):
    v8 = V8(n=8, r=2)
    for method in (lri.TuckerProjectorSplitting(), lri.TuckerBUG()):
        with pytest.raises(TypeError, match="Y0 must be a TuckerTensor"):
            lri.solve(
                v8.problem,
                lri.LowRankMatrix(np.eye(8, 2), np.eye(2), np.eye(8, 2)),
                (0, 1),
                0.1,
                method,
            )
        with pytest.raises(TypeError, match="integrates tensor problems"):
            lri.solve(lri.SylvesterODE(np.eye(8)), v8.Y0, (0, 1), 0.1, method)
        with pytest.raises(ValueError, match=r"Y has shape \(9, 9, 9\)"):
            lri.solve(v8.problem, random_tucker(rng, (9, 9, 9), (2, 2, 2)), (0, 1), 0.1, method)
        # Ranks (3, 1, 1): the mode-0 unfolding of the core has rank <= 1.
        with pytest.raises(ValueError, match="exceeds the product 1 of the other ranks"):
            lri.solve(v8.problem, random_tucker(rng, (8, 8, 8), (3, 1, 1)), (0, 1), 0.1, method)
    with pytest.raises(TypeError, match="truncation must be None"):
        lri.TuckerBUG("tolerance")
    with pytest.raises(ValueError, match="FixedRank has 2 ranks but Y0 has order 3"):
        lri.solve(v8.problem, v8.Y0, (0, 1), 0.1, lri.TuckerBUG(lri.FixedRank((2, 2))))


def test_rank_adaptive_tucker_bug_accepts_and_repairs_incompatible_ranks(rng):
    v8 = V8(n=8, r=2)
    Y0 = random_tucker(rng, (8, 8, 8), (3, 1, 1))
    sol = lri.solve(v8.problem, Y0, (0.0, 0.1), 0.1, lri.TuckerBUG(lri.Tolerance(1e-8)))
    r = sol.ranks[-1]
    assert all(r[i] <= math.prod(r[:i] + r[i + 1 :]) for i in range(3))


@pytest.mark.parametrize(
    "method",
    [lri.TuckerProjectorSplitting(), lri.TuckerBUG(), lri.TuckerBUG(lri.Tolerance(1e-4))],
    ids=["psi", "bug", "adaptive-bug"],
)
def test_single_precision_stays_single_precision(method):
    v8 = V8(n=10, r=2)
    ref = lri.solve(v8.problem, v8.Y0, (0.0, 0.3), 0.1, method).Y.to_dense()
    ops32 = [A.astype(np.float32) for A in v8.problem.operators]
    Y0 = lri.TuckerTensor(
        v8.Y0.core.astype(np.float32), [U.astype(np.float32) for U in v8.Y0.factors]
    )
    sol = lri.solve(lri.TensorSylvesterODE(ops32), Y0, (0.0, 0.3), 0.1, method)
    core, factors = sol.Y
    assert core.dtype == np.float32 and all(U.dtype == np.float32 for U in factors)
    eps32 = float(np.finfo(np.float32).eps)
    assert np.linalg.norm(sol.Y.to_dense() - ref) < 100 * eps32 * np.linalg.norm(ref)


def _count_projected_operators(monkeypatch, problem):
    """Counts the operator products ``U_k^H A_k U_k`` that ``problem`` forms."""
    calls = []
    form = problem._projected_operator

    def counted(k, U):
        calls.append(k)
        return form(k, U)

    monkeypatch.setattr(problem, "_projected_operator", counted)
    return calls


@pytest.mark.parametrize(
    ("method", "shared", "own"),
    [
        # BUG: the old bases for every mode field, the new ones for the core: 2d, not d(d-1)+d.
        (lri.TuckerBUG(), 6, 9),
        (lri.TuckerBUG(lri.Tolerance(1e-8)), 6, 9),
        # Projector splitting: the bases change mode by mode; each new basis is projected once
        # (modes 2 and 3 before their update, then every updated basis), not d - 1 times in
        # each K-step, once more in each S-step and again for the core. (The S-step of a mode
        # shares the K-step's terms D, E: d (d - 1) + d + d without shared operators.)
        (lri.TuckerProjectorSplitting(), 5, 12),
    ],
)
def test_a_step_forms_each_projected_operator_once(monkeypatch, method, shared, own):
    """Projected operators formed once per basis within a step; the step is unchanged."""
    v8 = V8(n=12, r=3, d=3)
    problem = v8.problem
    state = method.init(problem, v8.Y0, 0.0)
    calls = _count_projected_operators(monkeypatch, problem)
    once, _ = method.step(problem, state, 0.0, 0.1)
    assert len(calls) == shared

    calls.clear()
    # Without projected_operators every field forms its own products.
    monkeypatch.setattr(problem, "projected_operators", None)
    each, _ = method.step(problem, state, 0.0, 0.1)
    assert len(calls) == own
    np.testing.assert_allclose(once.Y.to_dense(), each.Y.to_dense(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", [lri.TuckerProjectorSplitting(), lri.TuckerBUG()])
def test_a_step_forms_the_terms_of_each_mode_field_once(monkeypatch, method):
    """The K- and S-step of a mode share ``D, E``: d sets of terms per step; same step."""
    v8 = V8(n=12, r=3, d=3)
    problem = v8.problem
    state = method.init(problem, v8.Y0, 0.0)
    modes = []
    form = problem.mode_terms

    def counted(bases, Q, mode, projected=None):
        modes.append(mode)
        return form(bases, Q, mode, projected)

    monkeypatch.setattr(problem, "mode_terms", counted)
    shared, _ = method.step(problem, state, 0.0, 0.1)
    assert sorted(modes) == [0, 1, 2]

    # Not shared: each field forms its own terms (2d for projector splitting), same numbers.
    modes.clear()
    monkeypatch.setattr(ModeTermsCache, "get", lambda self, *args: None)
    each, _ = method.step(problem, state, 0.0, 0.1)
    assert len(modes) == (6 if isinstance(method, lri.TuckerProjectorSplitting) else 3)
    for a, b in zip(shared.Y.factors, each.Y.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(shared.Y.core, each.Y.core)


def test_projected_operators_of_chosen_modes(rng):
    n, ranks = 7, (2, 3, 2)
    ops = [rng.standard_normal((n, n)) for _ in range(3)]
    bases = [np.linalg.qr(rng.standard_normal((n, r)))[0] for r in ranks]
    problem = lri.TensorSylvesterODE(ops)
    some = problem.projected_operators(bases, modes=[0, 2])
    assert some[1] is None
    for k in (0, 2):
        np.testing.assert_allclose(some[k], bases[k].T @ ops[k] @ bases[k], atol=1e-13)
    with pytest.raises(ValueError, match="modes"):
        problem.projected_operators(bases, modes=[3])


# --- the cost of a step: operator products, stacked K-steps ---------------------------------------


class CountingOperator:
    """A dense operator that counts its products ``A @ X``."""

    def __init__(self, A):
        self.A = A
        self.shape = A.shape
        self.dtype = A.dtype
        self.products = 0

    def __matmul__(self, X):
        self.products += 1
        return self.A @ X


@pytest.mark.parametrize(
    ("method", "field_products_per_mode", "projected"),
    [
        # K-steps only: 4 RK4 stages per mode; projected operators of the old and new bases
        (lri.TuckerBUG(), 4, 2 * 3),
        (lri.TuckerBUG(lri.FixedRank(2)), 4, 2 * 3),
        # the backward S-steps use U_i^H A_i U_i; modes 1, 2 start in old bases, then new ones
        (lri.TuckerProjectorSplitting(), 4, 2 * 3 - 1),
    ],
    ids=["bug", "augmented-bug", "psi"],
)
def test_a_step_applies_each_operator_for_its_fields_and_once_per_basis(
    method, field_products_per_mode, projected
):
    """Counted on the operators themselves: the K-step stages apply ``A_i``, and
    ``U_k^H A_k U_k`` takes one product per basis of the step (2d at d = 3 for BUG, not the
    d (d - 1) + d = 9 of forming it in every mode field and again for the core)."""
    v8 = V8(n=10, r=2)
    ops = [CountingOperator(A) for A in v8.problem.operators]
    problem = lri.TensorSylvesterODE(ops)
    state = method.init(problem, v8.Y0, 0.0)
    for k in range(3):
        state, _ = method.step(problem, state, 0.1 * k, 0.1)
    per_step = [A.products / 3 for A in ops]
    assert sum(per_step) == 3 * field_products_per_mode + projected
    # the products agree with the uninstrumented problem
    ref = lri.solve(v8.problem, v8.Y0, (0.0, 0.3), 0.1, method).Y.to_dense()
    np.testing.assert_allclose(state.Y.to_dense(), ref, atol=1e-13)


def test_the_stacked_k_steps_of_bug_are_the_mode_k_steps(rng):
    """RK4 on the stacked state [vec K_1; ...; vec K_d] is RK4 on every mode's K-step."""
    from lowrank_integrators.integrators.tucker_steps import (
        ModeKStep,
        ModeKSteps,
        TuckerLedger,
        mode_matrix_form,
    )
    from lowrank_integrators.protocol import answer_from_problem

    v8 = V8(n=9, r=2)
    Y = random_tucker(rng, (9, 9, 9), (2, 3, 2))
    C, U = Y
    led = TuckerLedger(Y.ranks)
    forms = [mode_matrix_form(led, C, i) for i in range(3)]
    solver = lri.RK4(steps=2)
    stacked = ModeKSteps(led, list(U), [Q for _, Q in forms])
    K0 = stacked.stack([Ui @ S for Ui, (S, _) in zip(U, forms, strict=True)])
    K1 = answer_from_problem(v8.problem, solver.solve(stacked, 0.0, 0.1, K0))
    assert K1.shape == (9 * 2 + 9 * 3 + 9 * 2, 1)
    assert led.info.n_right == 3 * 4 * 2
    for i, (S, Q) in enumerate(forms):
        single = ModeKStep(TuckerLedger(Y.ranks), list(U), Q, i)
        expected = answer_from_problem(v8.problem, solver.solve(single, 0.0, 0.1, U[i] @ S))
        np.testing.assert_allclose(stacked.part(K1, i), expected, rtol=0, atol=1e-15)


def test_a_mode_or_core_field_of_the_wrong_shape_is_refused():
    v8 = V8(n=8, r=2)

    class Wrong(lri.TensorSylvesterODE):
        def __init__(self, ops, which):
            super().__init__(ops)
            self.which = which

        def mode_field(self, bases, Q, mode, **shared):
            f = super().mode_field(bases, Q, mode, **shared)
            return (lambda t, K: f(t, K)[:, :1]) if self.which == "mode" else f

        def core_field(self, bases, projected=None):
            f = super().core_field(bases, projected)
            return (lambda t, C: np.moveaxis(f(t, C), 0, 1)[:, :1]) if self.which == "core" else f

    for which in ("mode", "core"):
        problem = Wrong(list(v8.problem.operators), which)
        for method in (lri.TuckerBUG(), lri.TuckerProjectorSplitting()):
            with pytest.raises(ValueError, match=f"problem.{which}_field returned an array"):
                lri.solve(problem, v8.Y0, (0.0, 0.1), 0.1, method)
