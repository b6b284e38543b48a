"""RK4 on substep fields that are affine and the same at every time.

Specification: for ``f(X) = L(X) + c`` (``L`` linear, ``L`` and ``c`` independent of time) a
step of RK4 is the degree-4 Taylor polynomial of the flow, and RK4 may evaluate it in nested
form, ``X1 = X0 + dt f(X0 + dt/2 f(X0 + dt/3 f(X0 + dt/4 f(X0))))``: four evaluations, each
followed by ``X0 + a f`` only. The problem driver answers an
:class:`~lowrank_integrators.protocol.Affine` request from the field's own declaration
(``affine = True``: the K-, L- and S-fields of :class:`~lowrank_integrators.SylvesterODE`);
fields that do not declare it, and drivers in rounds (training), keep the classical stages bit
for bit. The nested steps agree with the classical ones to round-off, fold their updates into
compiled stages with the same entries as the generic updates, and keep the memory of a step.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _fused, problems
from lowrank_integrators.protocol import Affine, Field, StageUpdate, StepTask, as_array
from lowrank_integrators.substeps import RK4, FactoredStart, start_array

needs_numba = pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")


def plain(f, record=None):
    """An ``Evaluate`` that calls ``f(X)`` (what a driver does for an affine field)."""

    def evaluate(t, X, start=False, update=None):
        if record is not None:
            record.append(t)
        return f(start_array(X))
        yield  # pragma: no cover - makes this function a generator

    return evaluate


def run(gen):
    try:
        gen.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the solver made a request")


def sylvester_field(rng, n, k, dtype):
    A = sp.random(n, n, density=4 / n, random_state=1, format="csr").astype(dtype)
    M = rng.standard_normal((k, k)).astype(dtype)
    c = rng.standard_normal((n, k)).astype(dtype)
    return (lambda X: A @ X + X @ M + c), (lambda X: A @ X + X @ M)


@pytest.mark.parametrize("steps", [1, 2])
def test_rk4_on_an_affine_field_is_the_degree_four_taylor_polynomial(rng, steps):
    n, k, dt = 2000, 4, 0.3
    f, L = sylvester_field(rng, n, k, np.float64)
    X = X0 = rng.standard_normal((n, k))
    calls: list[float] = []
    X1 = run(RK4(steps).affine_stages(plain(f, calls), 0.0, dt, X0))
    h = dt / steps
    for _ in range(steps):
        term, total = f(X), X.copy()
        for j in range(1, 5):
            total += h**j / np.prod(range(1, j + 1)) * term
            term = L(term)
        X = total
    np.testing.assert_allclose(X1, X, rtol=1e-13, atol=1e-13 * np.abs(X).max())
    assert len(calls) == 4 * steps


@pytest.mark.parametrize("factored", [True, False], ids=["factored start", "array start"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32])
def test_nested_stages_equal_the_classical_stages_to_round_off(rng, factored, steps, dtype):
    n, k = 3000, 5
    f, _ = sylvester_field(rng, n, k, np.float64)
    left = np.linalg.qr(rng.standard_normal((n, k)))[0].astype(dtype)
    right = rng.standard_normal((k, k)).astype(dtype)
    start = (lambda: FactoredStart(left, right)) if factored else (lambda: left @ right)
    nested = run(RK4(steps).affine_stages(plain(f), 0.0, 0.05, start()))
    classical = run(RK4(steps).stages(plain(f), 0.0, 0.05, start()))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(nested, classical, rtol=0, atol=tol * np.abs(classical).max())
    assert nested.dtype == classical.dtype


def sylvester_problem(rng, n):
    T = sp.diags(
        [rng.standard_normal(n - 1), rng.standard_normal(n), rng.standard_normal(n - 1)],
        [-1, 0, 1],
        format="csr",
    )
    Uc = np.linalg.qr(rng.standard_normal((n, 3)))[0]
    Vc = np.linalg.qr(rng.standard_normal((n, 3)))[0]
    C = lri.LowRankMatrix(Uc, rng.standard_normal((3, 3)), Vc, check=False)
    return lri.SylvesterODE(T, T, C)


def start_state(rng, n, r):
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return lri.LowRankMatrix(U, np.diag(2.0 ** -np.arange(r)), V)


class UndeclaredFields(lri.MatrixODE):
    """The Sylvester problem's products and fields, without the ``affine`` declaration."""

    def __init__(self, problem):
        self.problem = problem

    def apply_right(self, t, Y, V):
        return self.problem.apply_right(t, Y, V)

    def apply_left(self, t, Y, U):
        return self.problem.apply_left(t, Y, U)

    def project(self, t, Y, U, V):
        return self.problem.project(t, Y, U, V)

    def k_field(self, V):
        field = self.problem.k_field(V)
        return lambda t, K: field(t, K)

    def l_field(self, U):
        field = self.problem.l_field(U)
        return lambda t, L: field(t, L)

    def s_field(self, U, V):
        field = self.problem.s_field(U, V)
        return lambda t, S: field(t, S)


METHODS = {
    "BUG": lambda: lri.BUG(),
    "KSL": lambda: lri.ProjectorSplitting(order=1),
    "Strang": lambda: lri.ProjectorSplitting(order=2),
    "AugmentedBUG": lambda: lri.AugmentedBUG(lri.FixedRank(4)),
    "ParallelBUG": lambda: lri.ParallelBUG(lri.FixedRank(4), reject=False),
    "abc-PSI": lambda: lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(4)),
    "MidpointBUG": lambda: lri.MidpointBUG(lri.FixedRank(4)),
    "BUG, two RK4 steps": lambda: lri.BUG(substep=lri.RK4(steps=2)),
}


def two_steps(make, problem, Y0):
    method = make()
    state = method.init(problem, Y0, 0.0)
    for i in range(2):  # the second step reuses the work arrays of the first
        state, _ = method.step(problem, state, i * 1e-2, 1e-2)
    return state.Y.to_dense()


@pytest.mark.parametrize("name", list(METHODS))
def test_steps_on_declared_fields_agree_with_classical_steps(rng, monkeypatch, name):
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 4)
    nested = two_steps(METHODS[name], problem, Y0)
    monkeypatch.setattr(RK4, "has_affine_stages", False)
    classical = two_steps(METHODS[name], problem, Y0)
    np.testing.assert_allclose(nested, classical, rtol=0, atol=1e-12 * np.abs(classical).max())


def test_the_problem_driver_takes_nested_stages_for_declared_fields_only(rng, monkeypatch):
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 4)
    taken = []
    nested = RK4.affine_stages

    def counted(self, f, t0, t1, X0):
        taken.append(t1 - t0)
        return (yield from nested(self, f, t0, t1, X0))

    monkeypatch.setattr(RK4, "affine_stages", counted)
    two_steps(METHODS["BUG"], problem, Y0)
    assert len(taken) == 4  # K and L of two steps; the small S-steps keep the classical path
    taken.clear()
    undeclared = two_steps(METHODS["BUG"], UndeclaredFields(problem), Y0)
    assert taken == []
    monkeypatch.setattr(RK4, "has_affine_stages", False)
    classical = two_steps(METHODS["BUG"], UndeclaredFields(problem), Y0)
    np.testing.assert_array_equal(undeclared, classical)


def test_sylvester_fields_declare_themselves_affine(rng, monkeypatch):
    problem = sylvester_problem(rng, 50)
    U = np.linalg.qr(rng.standard_normal((50, 3)))[0]
    for use_numba in (True, False):
        monkeypatch.setattr(_fused, "use_numba", use_numba)
        assert problem.k_field(U).affine is True
        assert problem.l_field(U).affine is True
        assert problem.s_field(U, U).affine is True
    assert not hasattr(lri.DenseODE(lambda t, Y: Y).k_field(U), "affine")


def test_a_driver_in_rounds_keeps_the_classical_stages(rng, monkeypatch):
    """Training answers every field from forward/backward passes: never asked about affinity."""
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 3)
    method = lri.BUG()
    state = method.init(problem, Y0, 0.0)
    task = StepTask(method.step_requests(state, 0.0, 1e-2))
    while not task.done:
        answers = []
        for req in task.open_requests():
            assert type(req) is Field
            answers.append(req.ode.field(problem)(req.t, as_array(req.X)))
        task.answer(answers)
    by_rounds, _ = task.value
    monkeypatch.setattr(RK4, "has_affine_stages", False)
    classical, _ = lri.BUG().step(UndeclaredFields(problem), state, 0.0, 1e-2)
    for a, b in zip(by_rounds.Y, classical.Y, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_affine_request_names_the_substep_and_its_interval(rng, monkeypatch):
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 3)
    seen = []
    answer = lri.protocol._answer

    def recorded(problem, req):
        if type(req) is Affine:
            seen.append((req.ode.kind, req.t0, req.t1))
        return answer(problem, req)

    monkeypatch.setattr(lri.protocol, "_answer", recorded)
    method = lri.BUG()
    method.step(problem, method.init(problem, Y0, 0.0), 0.5, 1e-2)
    assert sorted(seen) == [("left", 0.5, 0.51), ("right", 0.5, 0.51)]


@needs_numba
def test_folded_and_generic_nested_stages_mix_bit_for_bit(rng, monkeypatch):
    """A compiled field folds ``X0 + a f`` into its pass with the entries of the generic
    update, whichever stages it folds."""
    monkeypatch.setattr(_fused, "_BLOCK_ELEMENTS", 40)  # many blocks of rows
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 4)
    fold = problems._CompiledField.fold
    calls = []

    def every_other(self, t, X, update):
        calls.append(update)
        return fold(self, t, X, update) if len(calls) % 2 else None

    folded = two_steps(METHODS["BUG"], problem, Y0)
    monkeypatch.setattr(problems._CompiledField, "fold", every_other)
    mixed = two_steps(METHODS["BUG"], problem, Y0)
    monkeypatch.setattr(problems._CompiledField, "fold", lambda self, t, X, update: None)
    generic = two_steps(METHODS["BUG"], problem, Y0)
    assert calls and all(u.c is None and u.acc is None for u in calls)
    np.testing.assert_array_equal(folded, generic)
    np.testing.assert_array_equal(mixed, generic)


def test_a_stage_update_without_accumulator_names_a_next_stage_only():
    X = np.zeros((3, 2))
    StageUpdate(None, X, None, 0.5, first=False)
    for acc, a, first in ((X, 0.5, False), (None, None, False), (None, 0.5, True)):
        with pytest.raises(ValueError, match="accumulator"):
            StageUpdate(acc, X, None, a, first=first)


def test_a_subclass_with_its_own_stages_keeps_them_on_affine_fields(rng):
    seen = []

    class Recording(RK4):
        def stages(self, f, t0, t1, X0):
            seen.append(t0)
            return (yield from super().stages(f, t0, t1, X0))

    f, _ = sylvester_field(rng, 2000, 3, np.float64)
    X0 = rng.standard_normal((2000, 3))
    out = run(Recording().affine_stages(plain(f), 0.0, 0.1, X0))
    np.testing.assert_array_equal(out, run(RK4().stages(plain(f), 0.0, 0.1, X0)))
    assert seen == [0.0]


@needs_numba
@pytest.mark.parametrize("dtype", [np.complex128, np.float32])
def test_nested_steps_of_complex_and_single_precision_states(rng, monkeypatch, dtype):
    """A real CSR operator with complex factors, and a float32 problem: the compiled fields
    fold the nested updates of both; the steps agree with the classical ones to the
    precision's round-off."""
    n, r = 2000, 4
    real = np.float32 if dtype == np.float32 else np.float64
    T = sp.diags([np.ones(n - 1), -2.0 * np.ones(n), np.ones(n - 1)], [-1, 0, 1], format="csr")
    problem = lri.SylvesterODE(T.astype(real), T.astype(real))
    U, V = (random(rng, (n, r), dtype) for _ in range(2))
    U, V = np.linalg.qr(U)[0], np.linalg.qr(V)[0]
    Y0 = lri.LowRankMatrix(U, np.diag(2.0 ** -np.arange(r)).astype(dtype), V)
    fold = problems._CompiledField.fold
    folded = []

    def counted(self, t, X, update):
        out = fold(self, t, X, update)
        folded.append(out is not None)
        return out

    monkeypatch.setattr(problems._CompiledField, "fold", counted)
    nested = two_steps(METHODS["BUG"], problem, Y0)
    assert folded and all(folded)
    monkeypatch.setattr(RK4, "has_affine_stages", False)
    classical = two_steps(METHODS["BUG"], problem, Y0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert nested.dtype == classical.dtype == np.dtype(dtype)
    np.testing.assert_allclose(nested, classical, rtol=0, atol=tol * np.abs(classical).max())


def random(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)
