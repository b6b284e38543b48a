"""Stage requests that carry their Runge-Kutta register updates.

Specification: an RK4 stage request of a forward substep carries its register updates
(:class:`~lowrank_integrators.protocol.StageUpdate`). The compiled Sylvester fields (CSR
operators, numba) fold them into the stage's pass and answer with the registers updated; a
driver that does not (training, a problem without compiled fields) answers with the
derivative and the solver updates the registers itself. Both give the same steps bit for bit;
the folded stage equals the stage followed by the updates; backward substeps carry no
updates; a fold declines arrays it cannot update in place.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _fused, problems
from lowrank_integrators.integrators.base import KStep, Ledger, SStep
from lowrank_integrators.protocol import Field, StageUpdate, StepTask, Updated, as_array
from lowrank_integrators.substeps import FactoredStart

needs_numba = pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")

TOLERANCES = {"float64": 1e-15, "complex128": 1e-15, "float32": 1e-6}


def sylvester_problem(rng, n, dtype=np.float64):
    A = sp.diags(
        [rng.standard_normal(n - 1), rng.standard_normal(n), rng.standard_normal(n - 2)],
        [-1, 0, 2],
        format="csr",
    ).astype(dtype)
    Uc = np.linalg.qr(rng.standard_normal((n, 3)))[0].astype(dtype)
    Vc = np.linalg.qr(rng.standard_normal((n, 3)))[0].astype(dtype)
    C = lri.LowRankMatrix(Uc, rng.standard_normal((3, 3)).astype(dtype), Vc, check=False)
    return lri.SylvesterODE(A, A, C)


def start_state(rng, n, r, dtype=np.float64):
    U = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    V = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    return lri.LowRankMatrix(U, np.diag(2.0 ** -np.arange(r)).astype(dtype), V)


def random(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


@needs_numba
@pytest.mark.parametrize("stage", ["first", "middle", "last"])
@pytest.mark.parametrize("dtype_name", list(TOLERANCES))
def test_a_folded_stage_equals_the_stage_then_the_updates(rng, monkeypatch, dtype_name, stage):
    monkeypatch.setattr(_fused, "_BLOCK_ELEMENTS", 40)  # many blocks of rows
    dtype = np.dtype(dtype_name)
    n, r = 300, 5
    A = sp.diags([rng.standard_normal(n - 1), rng.standard_normal(n)], [-1, 0], format="csr")
    A = A.astype(dtype)
    M, coef = random(rng, (r, r), dtype), random(rng, (2, r), dtype)
    compiled = _fused.CSRStage(A, M, random(rng, (n, 2), dtype), coef)
    X = random(rng, (n, r), dtype)
    left, right = random(rng, (n, r), dtype), random(rng, (r, r), dtype)
    F = compiled(X)
    c, a = 0.125, 0.5
    if stage == "first":  # the start is an array (the stage's own point)
        update = StageUpdate(None, X, c, a, first=True)
        expected_acc, expected_next = X + c * F, X + a * F
    else:  # the start is factored; its small factor a transposed view (an L-step's S0^H)
        acc = random(rng, (n, r), dtype)
        x0 = FactoredStart(left, right.T)
        update = StageUpdate(acc.copy(), x0, c, a if stage == "middle" else None, first=False)
        expected_acc = acc + c * F
        expected_next = left @ right.T + a * F if stage == "middle" else None
    done = compiled.fold(X, update)
    assert type(done) is Updated
    tol = TOLERANCES[dtype_name] * np.abs(expected_acc).max()
    if stage == "first":
        np.testing.assert_array_equal(done.acc, expected_acc)
        np.testing.assert_array_equal(done.stage, expected_next)
        assert not np.shares_memory(done.acc, X) and not np.shares_memory(done.stage, X)
    else:
        assert done.acc is update.acc
        np.testing.assert_allclose(done.acc, expected_acc, rtol=0, atol=tol)
        if stage == "middle":
            np.testing.assert_allclose(done.stage, expected_next, rtol=0, atol=tol)
        else:
            assert done.stage is None


@needs_numba
def test_a_fold_declines_what_it_cannot_update_in_place(rng):
    n, r = 50, 3
    A = sp.diags([np.ones(n)], [0], format="csr")
    compiled = _fused.CSRStage(A, np.eye(r))
    X = rng.standard_normal((n, r))
    acc = rng.standard_normal((n, r))
    declined = {
        "Fortran-ordered stage": (np.asfortranarray(X), StageUpdate(acc, X, 1.0, 1.0, False)),
        "accumulator of another dtype": (
            X,
            StageUpdate(acc.astype(np.float32), X, 1.0, 1.0, False),
        ),
        "accumulator overlapping the stage": (X, StageUpdate(X, X, 1.0, 1.0, False)),
        "read-only accumulator": (X, StageUpdate(np.asarray(acc).view(), X, 1.0, 1.0, False)),
        "start of another shape": (X, StageUpdate(acc, X[:-1], 1.0, 1.0, False)),
        "stage that needs a wider dtype": (X.astype(np.float32), StageUpdate(None, X, 1, 1, True)),
    }
    declined["read-only accumulator"][1].acc.flags.writeable = False
    for name, (stage, update) in declined.items():
        assert compiled.fold(stage, update) is None, name


def test_an_update_goes_with_forward_substeps_only(rng):
    led = Ledger()
    U, V = np.eye(4, 2), np.eye(4, 2)
    X = np.zeros((4, 2))
    update = StageUpdate(None, X, 1.0, 1.0, first=True)
    assert KStep(led, V).request(0.0, X, False, update).update is update
    assert SStep(led, U, V, sign=-1).request(0.0, np.zeros((2, 2)), False, update).update is None
    assert KStep(led, V).request(0.0, X).update is None


def test_a_stage_update_has_an_accumulator_exactly_after_the_first_stage():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="acc"):
        StageUpdate(X, X, 1.0, 1.0, first=True)
    with pytest.raises(ValueError, match="acc"):
        StageUpdate(None, X, 1.0, 1.0, first=False)


STEPS = {
    "BUG": lambda: lri.BUG(),
    "KSL": lambda: lri.ProjectorSplitting(order=1),
    "Strang": lambda: lri.ProjectorSplitting(order=2),
    "AugmentedBUG": lambda: lri.AugmentedBUG(lri.FixedRank(4)),
    "BUG, two RK4 steps": lambda: lri.BUG(substep=lri.RK4(steps=2)),
}


@needs_numba
@pytest.mark.parametrize("name", list(STEPS))
def test_folded_steps_equal_steps_answered_with_derivatives(rng, monkeypatch, name):
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 4)
    folds = []
    fold = problems._CompiledField.fold

    def counted(self, t, X, update):
        out = fold(self, t, X, update)
        folds.append(out is not None)
        return out

    def declined(self, t, X, update):
        return None

    def first_only(self, t, X, update):  # later stages answered with the derivative
        return fold(self, t, X, update) if update.first else None

    def two_steps():
        method = STEPS[name]()
        state = method.init(problem, Y0, 0.0)
        for i in range(2):  # the second step reuses the work arrays of the first
            state, _ = method.step(problem, state, i * 1e-2, 1e-2)
        return state.Y

    monkeypatch.setattr(problems._CompiledField, "fold", counted)
    folded = two_steps()
    assert folds and all(folds)
    for answer in (declined, first_only):
        monkeypatch.setattr(problems._CompiledField, "fold", answer)
        generic = two_steps()
        for a, b in zip(folded, generic, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_driver_in_rounds_answers_stage_requests_with_derivatives(rng):
    """The training client's way: every field request is answered with the field's value."""
    # (tall enough for the general RK4 step: small states carry no register updates)
    problem = sylvester_problem(rng, 2000)
    Y0 = start_state(rng, 2000, 3)
    method = lri.BUG()
    state = method.init(problem, Y0, 0.0)
    task = StepTask(method.step_requests(state, 0.0, 1e-2))
    seen = 0
    while not task.done:
        answers = []
        for req in task.open_requests():
            assert type(req) is Field
            seen += req.update is not None
            answers.append(req.ode.field(problem)(req.t, as_array(req.X)))
        task.answer(answers)
    by_rounds, _ = task.value
    by_problem, _ = lri.BUG().step(problem, state, 0.0, 1e-2)
    assert seen > 0
    for a, b in zip(by_rounds.Y, by_problem.Y, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
