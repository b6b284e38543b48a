"""How many tall arrays a step keeps alive at once.

At n ~ 1e6 one n x r factor is 100+ MB, and the number of such arrays alive at the peak of a
step decides whether a problem fits in memory. NumPy reports its allocations to
``tracemalloc``, so these tests count them, on a problem tall enough (n = 2^18) that the
r x r arrays and the row blocks of the in-place updates are a small fraction of one tall array.
The row- and column-blocked products that make this possible are checked against plain
products with a tiny block budget, so that every code path runs with several blocks.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.substeps import FactoredStart
from tests.problems_for_tests import rk4_reference

N, R = 2**18, 8
TALL = N * R * 8  # bytes of one float64 n x r array
SLACK = 0.5  # row blocks and r x r arrays, in units of one tall array


def peak_in_tall_arrays(fn):
    """Peak traced allocation while ``fn()`` runs, in units of one n x r float64 array."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / TALL, result


class Field:
    """``X' = X M``: one fresh tall array per evaluation; records what it was given."""

    def __init__(self, M, keep=False):
        self.M = M
        self.keep = keep
        self.seen = []

    def rhs(self, t, X):
        out = X @ self.M
        if self.keep:
            self.seen.append((X, np.array(X), out, np.array(out)))
        return out

    def increment(self, t0, t1):
        return None


@pytest.fixture(scope="module")
def tall_start():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((N, R)))[0]
    S = rng.standard_normal((R, R))
    M = 0.1 * rng.standard_normal((R, R))
    # compile the optional numba kernels of the solver once, outside the measured calls
    lri.RK4()(Field(M), 0.0, 0.1, FactoredStart(U[:5000], S))
    return U, S, M


# --- substep solvers -------------------------------------------------------------------------


def test_rk4_holds_three_tall_arrays_when_the_start_is_factored(tall_start):
    U, S, M = tall_start
    ode = Field(M)
    peak, X1 = peak_in_tall_arrays(lambda: lri.RK4()(ode, 0.0, 0.1, FactoredStart(U, S)))
    assert peak <= 3 + SLACK
    expected = rk4_reference(ode.rhs, 0.0, 0.1, U @ S)
    np.testing.assert_allclose(X1, expected, rtol=0, atol=1e-13 * np.abs(expected).max())


def test_rk4_adds_three_tall_arrays_to_an_array_start(tall_start):
    U, S, M = tall_start
    X0 = U @ S
    peak, _ = peak_in_tall_arrays(lambda: lri.RK4()(Field(M), 0.0, 0.1, X0))
    assert peak <= 3 + SLACK


def test_euler_holds_two_tall_arrays(tall_start):
    U, S, M = tall_start
    peak, X1 = peak_in_tall_arrays(lambda: lri.Euler()(Field(M), 0.0, 0.1, FactoredStart(U, S)))
    assert peak <= 2 + SLACK
    np.testing.assert_allclose(X1, U @ S + 0.1 * (U @ S @ M), atol=1e-14)


@pytest.mark.parametrize("solver", [lri.RK4(), lri.RK4(steps=3), lri.Euler()], ids=repr)
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "array"])
def test_nothing_handed_to_f_is_modified_afterwards(solver, factored):
    """f may keep what it was given (the training client caches evaluated points)."""
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.standard_normal((50, 3)))[0]
    S = rng.standard_normal((3, 3))
    X0 = FactoredStart(U, S) if factored else U @ S
    X0_copy = U @ S
    ode = Field(rng.standard_normal((3, 3)), keep=True)
    solver(ode, 0.0, 0.2, X0)
    assert ode.seen
    for arg, arg_then, out, out_then in ode.seen:
        np.testing.assert_array_equal(arg, arg_then)
        np.testing.assert_array_equal(out, out_then)
    if not factored:
        np.testing.assert_array_equal(X0, X0_copy)


def test_solvers_without_factored_starts_get_arrays():
    """A callable, or a solver that does not declare ``accepts_factored_start``, sees arrays."""
    seen = []

    def midpoint(f, t0, t1, X0):
        seen.append(type(X0))
        h = t1 - t0
        return X0 + h * f(t0 + h / 2, X0 + h / 2 * f(t0, X0))

    class Exact(lri.substeps.SubstepSolver):
        def __call__(self, ode, t0, t1, X0):
            seen.append(type(X0))
            return 1.0 * X0  # any solution will do: what matters is what it was given

        def integrate(self, f, t0, t1, X0):  # pragma: no cover - __call__ is overridden
            raise AssertionError

    rng = np.random.default_rng(2)
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((12, 10)), rank=3)
    problem = lri.SylvesterODE(np.eye(12), np.eye(10))
    for substep in (midpoint, Exact()):
        seen.clear()
        lri.BUG(substep=substep).step(problem, lri.BUG().init(problem, Y0, 0.0), 0.0, 0.1)
        assert seen and all(t is np.ndarray for t in seen)


# --- structured problems -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sylvester():
    rng = np.random.default_rng(3)
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(N, N), format="csr")
    Uc = np.linalg.qr(rng.standard_normal((N, 4)))[0]
    Vc = np.linalg.qr(rng.standard_normal((N, 4)))[0]
    C = lri.LowRankMatrix(Uc, rng.standard_normal((4, 4)), Vc, check=False)
    U = np.linalg.qr(rng.standard_normal((N, R)))[0]
    V = np.linalg.qr(rng.standard_normal((N, R)))[0]
    Y0 = lri.LowRankMatrix(U, np.diag(2.0 ** -np.arange(R)), V)
    # compile the optional numba kernels once, outside the measured steps (tens of MB of
    # compiler objects, once per process and independent of n)
    small = slice(0, 5000)
    warm = lri.SylvesterODE(T[small, small], T[small, small])
    Y_small = lri.LowRankMatrix(U[small], np.eye(R), V[small], check=False)
    lri.BUG().step(warm, lri.BUG().init(warm, Y_small, 0.0), 0.0, 1e-3)
    return T, C, Y0


def test_real_sparse_operators_are_not_copied(sylvester):
    T, C, _ = sylvester
    peak, problem = peak_in_tall_arrays(lambda: lri.SylvesterODE(T, T, C))
    operator_bytes = T.data.nbytes + T.indices.nbytes + T.indptr.nbytes
    assert peak * TALL < 0.01 * operator_bytes
    assert np.shares_memory(problem.A_H.data, T.data)
    assert np.shares_memory(problem.B_conj.data, T.data)


def test_sylvester_products_allocate_one_tall_array(sylvester):
    T, C, Y0 = sylvester
    problem = lri.SylvesterODE(T, T, C)
    U, S, V = Y0
    k_field = problem.k_field(V)
    l_field = problem.l_field(U)
    K, L = U @ S, V @ S.T
    for name, call in {
        "k_field": lambda: k_field(0.0, K),
        "l_field": lambda: l_field(0.0, L),
        "apply_right": lambda: problem.apply_right(0.0, Y0, V),
        "apply_left": lambda: problem.apply_left(0.0, Y0, U),
        "project": lambda: problem.project(0.0, Y0, U, V),
        "s_field": lambda: problem.s_field(U, V),
    }.items():
        peak, _ = peak_in_tall_arrays(call)
        # the result, and at most two temporaries of a quarter of its width
        assert peak <= 1.5 + 0.1, name


# Tall arrays alive at the peak of one step, beyond the state: the three RK4 registers plus
# what each method keeps through its substeps (the new basis of a sequential method; the
# 2r-wide augmented bases of the rank-adaptive ones, and for abc-PSI its L-step in a 2r-wide
# basis; the midpoint BUG enriches 2r-wide half-step bases to 4r).
STEP_PEAKS = {
    "BUG": (lambda: lri.BUG(), 4),
    "KSL": (lambda: lri.ProjectorSplitting(order=1), 4),
    "Strang": (lambda: lri.ProjectorSplitting(order=2), 5),
    "AugmentedBUG": (lambda: lri.AugmentedBUG(lri.FixedRank(R)), 5),
    "ParallelBUG": (lambda: lri.ParallelBUG(lri.FixedRank(R), reject=False), 5),
    "abc-PSI": (lambda: lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(R)), 8),
    "MidpointBUG": (lambda: lri.MidpointBUG(lri.FixedRank(R)), 12),
}


@pytest.fixture(params=["compiled", "numpy"])
def fields(request, monkeypatch):
    """The Sylvester fields' two paths: compiled stages (where numba is installed) and NumPy."""
    from lowrank_integrators import _fused

    if request.param == "compiled" and not _fused.numba_available():
        pytest.skip("numba not installed")
    monkeypatch.setattr(_fused, "use_numba", request.param == "compiled")
    return request.param


@pytest.mark.parametrize("name", list(STEP_PEAKS))
def test_a_step_keeps_few_tall_arrays_alive(sylvester, fields, name):
    make, tall_arrays = STEP_PEAKS[name]
    T, C, Y0 = sylvester
    problem = lri.SylvesterODE(T, T, C)
    method = make()
    state = method.init(problem, Y0, 0.0)
    peak, (new, _) = peak_in_tall_arrays(lambda: method.step(problem, state, 0.0, 1e-3))
    assert peak <= tall_arrays + SLACK
    assert new.Y.rank == R and bk.all_finite(new.Y.U, new.Y.S, new.Y.V)


@pytest.mark.parametrize("name", ["BUG", "KSL", "Strang"])
def test_work_arrays_kept_between_steps_add_nothing_to_the_peak(sylvester, fields, name):
    """The tall arrays a step method keeps for its next substeps (two with the compiled
    fields, which write their results into spare arrays, else one) count towards its peak,
    which stays that of a first step; the steps give the results of a fresh method."""
    make, tall_arrays = STEP_PEAKS[name]
    T, C, Y0 = sylvester
    problem = lri.SylvesterODE(T, T, C)
    method = make()
    first, _ = method.step(problem, method.init(problem, Y0, 0.0), 0.0, 1e-3)
    kept = len(method.__dict__["_workspace"])
    assert kept == (2 if fields == "compiled" else 1)
    peak, (second, _) = peak_in_tall_arrays(lambda: method.step(problem, first, 1e-3, 1e-3))
    assert peak + kept <= tall_arrays + SLACK
    fresh, _ = make().step(problem, first, 1e-3, 1e-3)
    for a, b in zip(second.Y, fresh.Y, strict=True):
        np.testing.assert_array_equal(a, b)


def fresh_tall_arrays(fn):
    """Tall memory newly allocated while ``fn()`` runs, in units of one n x r float64 array.

    The sum of the rises of the traced memory between Python-level events (allocations and
    releases inside one C call net out; enough to compare two runs of the same step).
    """
    gc.collect()
    tracemalloc.start()
    last = [tracemalloc.get_traced_memory()[0]]
    fresh = [0]

    def watch(frame, event, arg):
        now = tracemalloc.get_traced_memory()[0]
        if abs(now - last[0]) >= TALL // 2:
            fresh[0] += max(0, now - last[0])
            last[0] = now

    sys.setprofile(watch)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        tracemalloc.stop()
    return fresh[0] / TALL, result


class _KeepsNothing(lri.substeps.Workspace):
    """A workspace that keeps nothing it is given: every register is fresh."""

    def give(self, x):
        pass


# Tall arrays an augmented step no longer allocates: the L-substep's registers come from the
# K-substep (three with the compiled fields, which write into spare arrays; one, the start,
# without), and AugmentedBUG writes U_hat P into the storage of V_hat's new columns.
REUSED = {
    ("AugmentedBUG", "compiled"): 4,
    ("AugmentedBUG", "numpy"): 2,
    ("ParallelBUG", "compiled"): 3,
    ("ParallelBUG", "numpy"): 1,
    ("MidpointBUG", "compiled"): 3,
    ("MidpointBUG", "numpy"): 1,
}


@pytest.mark.parametrize("name", ["AugmentedBUG", "ParallelBUG", "MidpointBUG"])
def test_the_l_substep_of_an_augmented_step_reuses_the_k_substeps_arrays(
    sylvester, fields, name, monkeypatch
):
    from lowrank_integrators.integrators import augmentation

    make, tall_arrays = STEP_PEAKS[name]
    T, C, Y0 = sylvester
    problem = lri.SylvesterODE(T, T, C)
    state = make().init(problem, Y0, 0.0)
    fresh, (new, _) = fresh_tall_arrays(lambda: make().step(problem, state, 0.0, 1e-3))
    peak, _ = peak_in_tall_arrays(lambda: make().step(problem, state, 0.0, 1e-3))
    assert peak <= tall_arrays + SLACK

    form = augmentation.AugmentedBases.form

    def form_without_spare(self, P, S1, Q):
        self.spare = None
        return form(self, P, S1, Q)

    monkeypatch.setattr(augmentation, "Workspace", _KeepsNothing)
    monkeypatch.setattr(augmentation.AugmentedBases, "form", form_without_spare)
    fresh_all, (old, _) = fresh_tall_arrays(lambda: make().step(problem, state, 0.0, 1e-3))
    assert fresh <= fresh_all - REUSED[name, fields] + SLACK
    for a, b in zip(new.Y, old.Y, strict=True):  # the same arithmetic in other storage
        np.testing.assert_array_equal(a, b)


def test_the_midpoint_bug_keeps_two_wide_arrays_between_steps_at_the_same_peak(
    sylvester, fields, monkeypatch
):
    """MidpointBUG keeps two n x 4r arrays between steps, for U_hat and V_hat, which hold the
    half step's registers and bases before. The next step does not allocate them again, its
    peak with the kept arrays is that of a first step, it allocates none of the tall arrays
    of its half step and enrichment but the products F V and F^H U, and it gives the step of
    a fresh method exactly."""
    from lowrank_integrators.integrators import augmentation

    make, tall_arrays = STEP_PEAKS["MidpointBUG"]
    T, C, Y0 = sylvester
    problem = lri.SylvesterODE(T, T, C)
    method = make()
    first, _ = method.step(problem, method.init(problem, Y0, 0.0), 0.0, 1e-3)
    kept = method.__dict__["_kept_storage"]
    assert len(kept) == 2 and kept.nbytes == 8 * TALL
    peak, (second, _) = peak_in_tall_arrays(lambda: method.step(problem, first, 1e-3, 1e-3))
    assert peak + 8 <= tall_arrays + SLACK
    reused, _ = fresh_tall_arrays(lambda: method.step(problem, first, 1e-3, 1e-3))
    # F V and F^H U (2r wide each) and the new state's factors U1 and V1; the NumPy fields
    # also allocate each stage's result (four stages in each of the two substeps)
    assert reused <= 4 + 2 + (0 if fields == "compiled" else 8) + SLACK
    monkeypatch.setattr(augmentation.KeptStorage, "take", classmethod(lambda *a, **k: None))
    unkept = make()
    fresh, (again, _) = fresh_tall_arrays(lambda: unkept.step(problem, first, 1e-3, 1e-3))
    # besides: the K-substep's registers (three with the compiled fields, one without), the
    # half step's bases (2r wide) and U_hat, V_hat (4r wide)
    assert reused <= fresh - (3 if fields == "compiled" else 1) - 4 - 8 + SLACK
    for a, b in zip(second.Y, again.Y, strict=True):
        np.testing.assert_array_equal(a, b)


# --- the blocked products equal the plain ones -------------------------------------------------


@pytest.fixture
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_OTHER", 7)


def test_blocked_helpers_equal_plain_products(tiny_blocks, xp):
    rng = np.random.default_rng(4)
    X = xp.asarray(rng.standard_normal((23, 5)))
    W = xp.asarray(rng.standard_normal((23, 5)))
    M = xp.asarray(rng.standard_normal((5, 5)))
    A = xp.asarray(rng.standard_normal((23, 23)))
    assert len(bk.row_blocks(X)) > 5

    out = bk.copy(W)
    bk.add_product(out, X, M, alpha=0.5)
    assert np.allclose(bk.to_host(out), bk.to_host(W + 0.5 * (X @ M)))
    out = bk.copy(W)
    bk.add_scaled(out, -2.0, X)
    assert np.allclose(bk.to_host(out), bk.to_host(W - 2.0 * X))
    assert np.allclose(bk.to_host(bk.sandwich(W, A, X)), bk.to_host(bk.adjoint(W) @ (A @ X)))
    assert np.allclose(bk.to_host(bk.apply_to_product(A, X, M)), bk.to_host(A @ (X @ M)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_a_product_added_in_place_is_the_plain_sum(dtype):
    """Real row-major arrays take one BLAS gemm in place, others row blocks; the sum is
    right also when X is out itself."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 6)).astype(dtype)
    M = rng.standard_normal((6, 4)).astype(dtype)
    W = rng.standard_normal((300, 4)).astype(dtype)
    out = W.copy()
    assert bk.add_product(out, X, M, alpha=-0.5) is out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, W - 0.5 * (X @ M), rtol=tol, atol=tol)
    out = W.copy()
    bk.add_product(out, out, M[:4])  # out += out M: X is out itself
    np.testing.assert_allclose(out, W + W @ M[:4], rtol=tol, atol=tol)


def test_blocked_steps_equal_unblocked_steps(monkeypatch):
    """Every method on a non-symmetric complex SylvesterODE: tiny blocks change nothing."""
    rng = np.random.default_rng(5)
    m, n, r = 30, 26, 4

    def cplx(*shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    A = sp.csr_matrix(sp.random(m, m, density=0.2, random_state=1) * (1 + 0.5j))
    C = lri.LowRankMatrix.from_dense(cplx(m, 2) @ cplx(2, n), rank=2)
    problem = lri.SylvesterODE(A, cplx(n, n) / n, C)
    Y0 = lri.LowRankMatrix.from_dense(cplx(m, n), rank=r)
    methods = [make() for make, _ in STEP_PEAKS.values()]
    plain = [m_.step(problem, m_.init(problem, Y0, 0.0), 0.0, 0.05)[0].Y for m_ in methods]
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    for method, Y_plain in zip(methods, plain, strict=True):
        Y = method.step(problem, method.init(problem, Y0, 0.0), 0.0, 0.05)[0].Y
        np.testing.assert_allclose(Y.to_dense(), Y_plain.to_dense(), atol=1e-12)
