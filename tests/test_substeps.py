"""Substep solvers: stage times, evaluation counts, exact increments."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators.substeps import as_substep
from tests.problems_for_tests import rk4_reference


class Recorder:
    """X' = f(t, X) that records the times at which it is evaluated."""

    def __init__(self, f):
        self.f = f
        self.times: list[float] = []

    def rhs(self, t, X):
        self.times.append(t)
        return self.f(t, X)

    def increment(self, t0, t1):
        return None


def test_rk4_uses_exactly_four_evaluations_at_the_classical_stage_times():
    ode = Recorder(lambda t, X: np.cos(t) * X)
    lri.RK4(steps=2)(ode, 1.0, 2.0, np.ones((2, 2)))
    assert ode.times == pytest.approx([1.0, 1.25, 1.25, 1.5, 1.5, 1.75, 1.75, 2.0])


@pytest.mark.parametrize("steps", [1, 3])
def test_rk4_is_fourth_order_on_a_non_autonomous_ode(steps):
    """X' = t^3 X + sin(t): wrong stage times would reduce the order."""

    def f(t, X):
        return t**3 * X + np.sin(t)

    from scipy.integrate import solve_ivp

    exact = solve_ivp(lambda t, x: f(t, x), (0.5, 1.5), [1.0], rtol=1e-13, atol=1e-14).y[0, -1]
    errs = []
    hs = [0.2, 0.1, 0.05]
    for h in hs:
        X = np.array([1.0])
        n = round(1.0 / h)
        for k in range(n):
            X = lri.RK4(steps)(Recorder(f), 0.5 + k * h, 0.5 + (k + 1) * h, X)
        errs.append(abs(X[0] - exact))
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert slope == pytest.approx(4.0, abs=0.3)


def test_euler_is_one_evaluation_at_the_start():
    ode = Recorder(lambda t, X: t * X)
    X1 = lri.Euler()(ode, 2.0, 2.5, np.full((1, 1), 3.0))
    assert ode.times == [2.0]
    assert X1[0, 0] == pytest.approx(3.0 + 0.5 * 2.0 * 3.0)


class Increment:
    def rhs(self, t, X):
        raise AssertionError("a state-independent substep must use its increment")

    def increment(self, t0, t1):
        return np.full((1, 1), t1**2 - t0**2)


@pytest.mark.parametrize("solver", [lri.Euler(), lri.RK4(), lri.RK4(steps=5)], ids=repr)
def test_every_solver_uses_the_exact_increment_when_offered(solver):
    X1 = solver(Increment(), 1.0, 3.0, np.zeros((1, 1)))
    assert X1[0, 0] == 8.0


def test_a_plain_callable_is_a_substep_solver():
    def midpoint(f, t0, t1, X0):
        h = t1 - t0
        return X0 + h * f(t0 + h / 2, X0 + h / 2 * f(t0, X0))

    solver = as_substep(midpoint)
    ode = Recorder(lambda t, X: -X)
    X1 = solver(ode, 0.0, 0.1, np.ones((1, 1)))
    assert X1[0, 0] == pytest.approx(1 - 0.1 + 0.005)
    assert ode.times == [0.0, 0.05]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_rk4_rejects_bad_step_counts(bad):
    with pytest.raises((ValueError, TypeError), match="steps"):
        lri.RK4(steps=bad)


def test_substep_argument_is_validated():
    with pytest.raises(TypeError, match="instance"):
        lri.BUG(substep=lri.RK4)
    with pytest.raises(TypeError, match="substep"):
        lri.BUG(substep=3)


# --- the fused register updates of RK4 --------------------------------------------------------


class Linear:
    """X' = X M + t: fresh outputs that no one keeps (the solver may reuse them)."""

    def __init__(self, M):
        self.M = M

    def rhs(self, t, X):
        return X @ self.M + t

    def increment(self, t0, t1):
        return None


@pytest.fixture(params=["numba", "numpy"])
def register_path(request, monkeypatch):
    """Both paths of the register updates: the numba loop and the NumPy block operations."""
    from lowrank_integrators import _fused

    if request.param == "numba":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(_fused, "use_numba", False)
    return request.param


@pytest.mark.parametrize("rows", [40, 5000], ids=["small", "several blocks"])
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "array"])
def test_fused_rk4_equals_the_textbook_formula(monkeypatch, register_path, rows, factored):
    from lowrank_integrators import substeps

    monkeypatch.setattr(substeps, "_STAGE_BLOCK_ELEMENTS", 6 * 512)
    rng = np.random.default_rng(7)
    U = np.linalg.qr(rng.standard_normal((rows, 6)))[0]
    S = rng.standard_normal((6, 6))
    ode = Linear(0.3 * rng.standard_normal((6, 6)))
    X0 = substeps.FactoredStart(U, S) if factored else U @ S
    X1 = lri.RK4(steps=2)(ode, 0.0, 0.2, X0)
    mid = rk4_reference(ode.rhs, 0.0, 0.1, U @ S)
    expected = rk4_reference(ode.rhs, 0.1, 0.2, mid)
    np.testing.assert_allclose(X1, expected, rtol=0, atol=1e-14 * np.abs(expected).max())
    if not factored:
        np.testing.assert_array_equal(X0, U @ S)


class Keeping(Linear):
    """X' = X M + t, keeping every point it is given (with a copy to check it is not changed)."""

    def __init__(self, M):
        super().__init__(M)
        self.seen = []

    def rhs(self, t, X):
        self.seen.append((X, X.copy()))
        return super().rhs(t, X)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("factored", [True, False], ids=["factored", "array"])
def test_small_rk4_steps_equal_the_general_steps_bit_for_bit(monkeypatch, factored, steps, dtype):
    """Small NumPy states take whole-array steps, with the arithmetic of the general path."""
    from lowrank_integrators import substeps

    rng = np.random.default_rng(10)
    U = np.linalg.qr(rng.standard_normal((40, 4)))[0].astype(dtype)
    S = rng.standard_normal((4, 4)).astype(dtype)
    M = (0.3 * rng.standard_normal((4, 4)) + (0.1j if dtype == np.complex128 else 0)).astype(dtype)

    def solve():
        ode = Keeping(M)
        X0 = substeps.FactoredStart(U, S) if factored else U @ S
        X1 = lri.RK4(steps=steps)(ode, 0.0, 0.2, X0)
        assert len(ode.seen) == 4 * steps
        for X, copy in ode.seen:  # nothing handed to the field is changed afterwards
            np.testing.assert_array_equal(X, copy)
        return X1

    def general_step(*args):
        raise AssertionError("a small state took the general step")

    with monkeypatch.context() as patch:
        patch.setattr(lri.RK4, "_step", staticmethod(general_step))
        small = solve()
    assert small.dtype == dtype
    monkeypatch.setattr(substeps, "_small", lambda X: False)
    np.testing.assert_array_equal(small, solve())


def test_numba_and_numpy_register_updates_agree_bit_for_bit(monkeypatch):
    pytest.importorskip("numba")
    from lowrank_integrators import _fused, substeps

    rng = np.random.default_rng(8)
    U, S = rng.standard_normal((3000, 5)), rng.standard_normal((5, 5))
    k = rng.standard_normal((3000, 5))
    results = []
    for use in (True, False):
        monkeypatch.setattr(_fused, "use_numba", use)
        acc, stage = np.empty_like(k), np.empty_like(k)
        substeps.rk4_update(acc, stage, substeps.FactoredStart(U, S), k, 0.1, 0.2, first=True)
        substeps.rk4_update(acc, stage, U @ S, k.copy(), 0.3, 0.4, first=False)
        results.append((acc, stage))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_register_updates_may_overwrite_the_start_and_the_derivative(register_path):
    """acc may hold the start (formed there) and stage may be k itself: same result."""
    from lowrank_integrators import substeps

    rng = np.random.default_rng(9)
    X0, k = rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8))
    acc, stage = np.empty_like(k), np.empty_like(k)
    substeps.rk4_update(acc, stage, X0, k, 0.1, 0.5, first=True)
    acc_inplace, k_inplace = X0.copy(), k.copy()
    substeps.rk4_update(acc_inplace, k_inplace, acc_inplace, k_inplace, 0.1, 0.5, first=True)
    np.testing.assert_array_equal(acc_inplace, acc)
    np.testing.assert_array_equal(k_inplace, stage)


def test_a_fused_csr_field_gets_the_dead_stages_as_its_outputs(monkeypatch):
    """After the second stage, a field that asks for a spare array gets the previous stage."""
    pytest.importorskip("numba")
    import scipy.sparse as sp

    from lowrank_integrators import _fused

    taken = []
    take = _fused.take_spare

    def recording_take(shape, dtype):
        out = take(shape, dtype)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(_fused, "take_spare", recording_take)
    rng = np.random.default_rng(10)
    n, r = 3000, 4
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr")
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    Y0 = lri.LowRankMatrix(U, np.diag([1.0, 0.5, 0.25, 0.125]), V)
    problem = lri.SylvesterODE(T, T)
    state = lri.BUG().init(problem, Y0, 0.0)
    new, _ = lri.BUG().step(problem, state, 0.0, 1e-3)
    assert taken == [False, False, True, True] * 2  # K- and L-step
    dense = lri.BUG(substep=lambda f, t0, t1, X0: rk4_reference(f, t0, t1, X0))
    reference, _ = dense.step(problem, dense.init(problem, Y0, 0.0), 0.0, 1e-3)
    np.testing.assert_allclose(new.Y.to_dense(), reference.Y.to_dense(), atol=1e-12)
    assert _fused._SPARE.buffer is None  # nothing left alive after the substep


@pytest.mark.parametrize(
    "method", [lri.BUG, lambda substep: lri.ProjectorSplitting(substep=substep)], ids=["BUG", "KSL"]
)
def test_substep_results_someone_holds_are_not_overwritten_by_the_step(method):
    """The QR of a substep result runs in place only when no one else references it."""
    kept = []

    def rk4_keeping(f, t0, t1, X0):
        X1 = rk4_reference(f, t0, t1, X0)
        kept.append((X1, X1.copy()))
        return X1

    rng = np.random.default_rng(11)
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((60, 50)), rank=5)
    problem = lri.SylvesterODE(-np.eye(60), np.eye(50))
    stepper = method(substep=rk4_keeping)
    new, _ = stepper.step(problem, stepper.init(problem, Y0, 0.0), 0.0, 0.01)
    assert len(kept) >= 2
    for X1, copy in kept:
        np.testing.assert_array_equal(X1, copy)
    plain = method(substep=lri.RK4())
    reference, _ = plain.step(problem, plain.init(problem, Y0, 0.0), 0.0, 0.01)
    np.testing.assert_allclose(new.Y.to_dense(), reference.Y.to_dense(), atol=1e-12)


def test_a_workspace_keeps_two_tall_arrays_of_the_last_shape():
    import copy
    import pickle

    from lowrank_integrators.substeps import TALL_ENTRIES, Workspace

    rows = TALL_ENTRIES // 4
    ws = Workspace()
    a, b, c = (np.empty((rows, 4)) for _ in range(3))
    for x in (a, b, c):
        ws.give(x)
    assert len(ws) == 2  # the oldest is dropped
    ws.give(np.empty((3, 4)))  # small arrays are not kept
    assert len(ws) == 2
    assert ws.take((rows, 4), np.float32) is None  # another dtype
    assert ws.take((rows, 4), np.float64) is b
    ws.give(np.empty((rows, 8)))  # another shape replaces the kept ones
    assert len(ws) == 1 and ws.take((rows, 4), np.float64) is None
    assert len(copy.deepcopy(ws)) == 0 and len(pickle.loads(pickle.dumps(ws))) == 0
    ws.clear()
    assert len(ws) == 0


def test_rk4_substeps_with_a_workspace_give_the_same_results(monkeypatch):
    """Registers taken from a workspace change nothing: same values as fresh arrays."""
    pytest.importorskip("numba")
    import scipy.sparse as sp

    from lowrank_integrators.substeps import FactoredStart, Workspace

    n, r = 6000, 6
    rng = np.random.default_rng(11)
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr")
    problem = lri.SylvesterODE(T, T)
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    U, S = np.linalg.qr(rng.standard_normal((n, r)))[0], rng.standard_normal((r, r))
    ode = lri.integrators.base.KStep(lri.integrators.base.Ledger(rank_before=r), V).bind(problem)
    plain = lri.RK4()(ode, 0.0, 0.1, FactoredStart(U, S))
    ws = Workspace()
    for _ in range(3):  # the second and third substeps run in kept arrays
        again = lri.RK4()(ode, 0.0, 0.1, FactoredStart(U, S, workspace=ws))
        np.testing.assert_array_equal(again, plain)
    assert len(ws) == 2
