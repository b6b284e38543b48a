"""The step protocol: one integrator step, written as requests, serves solve and training."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.integrators import (
    AugmentedBackwardCorrectedPSI,
    MidpointBUG,
    ParallelBUG,
)
from lowrank_integrators.integrators.base import (
    Integrator,
    KStep,
    Ledger,
    LStep,
    Parallel,
    SStep,
)
from lowrank_integrators.protocol import (
    Field,
    FieldFunction,
    StepTask,
    answer_from_problem,
    received,
)
from lowrank_integrators.training import MLP, Layer, LowRankTraining


def euler_methods():
    keep = lri.Tolerance(0.0)
    return [
        lri.BUG(substep=lri.Euler()),
        lri.ProjectorSplitting(substep=lri.Euler()),
        lri.ProjectorSplitting(order=2, substep=lri.Euler()),
        lri.AugmentedBUG(keep, substep=lri.Euler()),
        ParallelBUG(keep, reject=False, substep=lri.Euler()),
        ParallelBUG(lri.Tolerance(1e-3, relative=True), substep=lri.Euler()),
        ParallelBUG(keep, reject=False, order=2, substep=lri.Euler()),
        MidpointBUG(keep, substep=lri.Euler()),
        AugmentedBackwardCorrectedPSI(keep, substep=lri.Euler()),
    ]


IDS = [
    "bug",
    "ksl",
    "strang",
    "augmented-bug",
    "parallel-bug",
    "parallel-bug-reject",
    "parallel-bug-2",
    "midpoint-bug",
    "abc-psi",
]


class ConstantField(lri.MatrixODE):
    """``F(t, Y) = A`` for every ``Y``: products that do not depend on the point's factors."""

    def __init__(self, A):
        self.A = A

    def apply_right(self, t, Y, V):
        return self.A @ V

    def apply_left(self, t, Y, U):
        return self.A.T @ U

    def project(self, t, Y, U, V):
        return U.T @ (self.A @ V)


class ConstantGradient:
    """The training side of the same field: the loss ``-<A, W>``, whose gradient is ``-A``."""

    def __init__(self, A):
        self.A = A
        self.points = []

    def __call__(self, weights, params, batch):
        self.points.append(list(weights))
        return _ConstantPass(self.A)


class _ConstantPass:
    loss = 0.0
    param_grads = ()

    def __init__(self, A):
        self.A = A

    def right(self, layer, V):
        return -(self.A @ V)

    def left(self, layer, U):
        return -(self.A.T @ U)

    def project(self, layer, U, V):
        return -(U.T @ (self.A @ V))


@pytest.mark.parametrize("method", euler_methods(), ids=IDS)
def test_one_integrator_object_gives_bit_identical_steps_through_solve_and_training(rng, method):
    m, n, r, lr = 14, 11, 3, 0.3
    A = rng.standard_normal((m, n))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((m, n)), rank=r)
    sol = lri.solve(ConstantField(A), Y0, (0.0, lr), lr, method=method)
    client = LowRankTraining(method, ConstantGradient(A))
    state, report = client.step(client.init([Y0]), None, lr)
    (W1,) = state.weights
    for a, b in zip(sol.Y, W1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert report.layer_info[0].n_f == sol.stats.n_right + sol.stats.n_left + sol.stats.n_project


@pytest.mark.parametrize("method", euler_methods(), ids=IDS)
def test_passes_per_step_follow_from_the_declared_structure(rng, method):
    net = MLP([Layer(12, 9, "lowrank", 3), Layer(9, 7, "lowrank", 2), Layer(7, 4, "dense")])
    client = LowRankTraining(method, net.gradient)
    state = client.init(*net.init(rng))
    for _ in range(2):
        b = (rng.standard_normal((40, 12)), rng.integers(0, 4, 40))
        state, report = client.step(state, b, 0.1)
        assert report.n_passes == method.passes_per_step


def test_the_declared_passes_are_the_documented_ones():
    assert lri.AugmentedBUG.passes_per_step == 1
    assert ParallelBUG.passes_per_step == 1
    assert AugmentedBackwardCorrectedPSI.passes_per_step == 1
    assert lri.BUG.passes_per_step == 2
    assert MidpointBUG.passes_per_step == 2
    assert lri.ProjectorSplitting.passes_per_step == 3
    assert lri.ProjectorSplitting(order=2).passes_per_step == 5


def test_training_starts_no_thread(rng, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the training client started a thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    net = MLP([Layer(12, 9, "lowrank", 3), Layer(9, 4, "dense")])
    client = LowRankTraining(lri.BUG(substep=lri.Euler()), net.gradient)
    b = (rng.standard_normal((20, 12)), rng.integers(0, 4, 20))
    _, report = client.step(client.init(*net.init(rng)), b, 0.1)
    assert report.n_passes == 2


def test_the_k_and_l_steps_of_bug_are_open_together(rng):
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    method = lri.BUG(substep=lri.Euler())
    task = StepTask(method.step_requests(method.init(None, Y0, 0.0), 0.0, 0.1))
    first = task.open_requests()
    assert [type(req) for req in first] == [Field, Field]
    assert [req.kind for req in first] == ["right", "left"]
    assert all(req.point is Y0 for req in first)  # declared at the start point


def test_a_synchronous_substep_solver_serves_solve_but_not_training(rng):
    def euler(f, t0, t1, X0):
        return X0 + (t1 - t0) * f(t0, X0)

    problem = lri.SylvesterODE(np.eye(9), np.eye(8))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    by_callable = lri.solve(problem, Y0, (0.0, 0.2), 0.1, method=lri.BUG(substep=euler))
    by_requests = lri.solve(problem, Y0, (0.0, 0.2), 0.1, method=lri.BUG(substep=lri.Euler()))
    np.testing.assert_allclose(by_callable.Y.to_dense(), by_requests.Y.to_dense(), atol=1e-14)
    with pytest.raises(TypeError, match="substep"):
        LowRankTraining(lri.BUG(substep=euler), ConstantGradient(np.eye(9, 8)))


class WorkedExampleBUG(Integrator):
    """The worked example of ``integrators/base.py``, as a user would write it."""

    order, passes_per_step = 1, 2

    def step_requests(self, state, t, h):
        Y0 = state.Y
        U0, S0, V0 = Y0
        led = Ledger(rank_before=Y0.rank)

        def k_step():
            K0 = self.start(U0, S0)
            K1 = yield from self.substep.solve(KStep(led, V0, at=Y0), t, t + h, K0)
            return led.orth(K1)

        def l_step():
            L0 = self.start(V0, bk.adjoint(S0))
            L1 = yield from self.substep.solve(LStep(led, U0, at=Y0), t, t + h, L0)
            return led.orth(L1)

        U1, V1 = yield Parallel(k_step(), l_step())
        S_start = (bk.adjoint(U1) @ U0) @ S0 @ (bk.adjoint(V0) @ V1)
        S1 = yield from self.substep.solve(SStep(led, U1, V1), t, t + h, S_start)
        Y1 = lri.LowRankMatrix(U1, S1, V1, check=False)
        return state.with_Y(Y1, t + h), led.finish(Y1.rank)


def test_the_worked_example_runs_in_solve_and_in_training(rng):
    problem = lri.SylvesterODE(rng.standard_normal((9, 9)) / 3, rng.standard_normal((8, 8)) / 3)
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    mine = lri.solve(problem, Y0, (0.0, 0.5), 0.1, method=WorkedExampleBUG(substep=lri.RK4()))
    ref = lri.solve(problem, Y0, (0.0, 0.5), 0.1, method=lri.BUG(substep=lri.RK4()))
    np.testing.assert_allclose(mine.Y.to_dense(), ref.Y.to_dense(), atol=1e-13)
    assert mine.stats.n_f == ref.stats.n_f

    net = MLP([Layer(12, 9, "lowrank", 3), Layer(9, 4, "dense")])
    W, P = net.init(rng)
    b = (rng.standard_normal((20, 12)), rng.integers(0, 4, 20))
    results = []
    for method in (WorkedExampleBUG(substep=lri.Euler()), lri.BUG(substep=lri.Euler())):
        client = LowRankTraining(method, net.gradient)
        state, report = client.step(client.init(W, P), b, 0.1)
        results.append((state.weights[0].to_dense(), report.n_passes))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-14)
    assert results[0][1] == results[1][1] == 2


def test_a_step_driven_by_the_problem_equals_integrator_step(rng):
    problem = lri.SylvesterODE(rng.standard_normal((9, 9)), rng.standard_normal((8, 8)))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    method = lri.AugmentedBUG(lri.Tolerance(1e-8))
    state = method.init(problem, Y0, 0.0)
    a, info_a = method.step(problem, state, 0.0, 0.1)
    b, info_b = answer_from_problem(problem, method.step_requests(state, 0.0, 0.1))
    for x, y in zip(a.Y, b.Y, strict=True):
        np.testing.assert_array_equal(x, y)
    assert info_a == info_b


def test_a_wrongly_shaped_product_is_named(rng):
    class Broken(ConstantField):
        def project(self, t, Y, U, V):
            return np.zeros((1, 1))

    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    with pytest.raises(ValueError, match="s_field"):
        lri.solve(Broken(np.ones((9, 8))), Y0, (0.0, 0.1), 0.1, method=lri.BUG())


def test_a_request_of_a_subclass_is_answered_in_rounds(rng):
    class MyRight(lri.protocol.Right):
        pass

    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((6, 5)), rank=2)

    def step():
        out = yield MyRight(0.0, Y0, Y0.V)
        return out

    task = StepTask(step())
    (req,) = task.open_requests()
    assert type(req) is MyRight and not task.done
    task.answer([np.ones((6, 2))])
    assert task.done
    np.testing.assert_array_equal(task.value, np.ones((6, 2)))


def test_a_step_that_yields_something_else_is_refused(rng):
    def step():
        yield 42

    with pytest.raises(TypeError, match="int, which is not a request"):
        StepTask(step())


def test_a_product_asked_to_be_handed_over_is_held_by_the_step_alone(rng):
    import sys

    from lowrank_integrators.protocol import Left, Right
    from lowrank_integrators.substeps import owned_result

    problem = lri.SylvesterODE(rng.standard_normal((9, 9)), rng.standard_normal((8, 8)))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    owned = []

    def step(hand_over):
        for req in (
            Right(0.0, Y0, Y0.V, hand_over=hand_over),
            Left(0.0, Y0, Y0.U, None, hand_over),
        ):
            out = received((yield req))
            refs = sys.getrefcount(out)
            owned.append(owned_result(out, refs))
        return out

    np.testing.assert_array_equal(
        answer_from_problem(problem, step(True)), problem.apply_left(0.0, Y0, Y0.U)
    )
    # without the handover, the driver holds each answer until the step yields again
    answer_from_problem(problem, step(False))
    assert owned == [True, True, False, False]


# --- small substeps: the field as a function --------------------------------------------------


def _answer_in_rounds(problem, gen):
    """Run a step in rounds, as the training client does (a request per evaluation, no field
    functions), answering each request from ``problem``."""

    def one(req):
        return received((yield req))

    task = StepTask(gen)
    while not task.done:
        task.answer([answer_from_problem(problem, one(req)) for req in task.open_requests()])
    return task.value


def rk4_methods():
    keep = lri.Tolerance(1e-10)
    return [
        lri.BUG(),
        lri.ProjectorSplitting(),
        lri.ProjectorSplitting(order=2),
        lri.AugmentedBUG(keep),
        ParallelBUG(keep),
        MidpointBUG(keep),
        AugmentedBackwardCorrectedPSI(keep),
        lri.BUG(substep=lri.RK4(steps=2)),
        lri.BUG(substep=lri.Euler()),
    ]


RK4_IDS = ["bug", "ksl", "strang", "augmented-bug", "parallel-bug", "midpoint-bug", "abc-psi"]
RK4_IDS += ["bug-rk4x2", "bug-euler"]


@pytest.mark.parametrize("method", rk4_methods(), ids=RK4_IDS)
def test_small_substeps_called_as_functions_equal_their_requests(rng, method):
    problem = lri.SylvesterODE(
        0.3 * rng.standard_normal((9, 9)),
        0.3 * rng.standard_normal((8, 8)),
        lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=2),
    )
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    state = method.init(problem, Y0, 0.0)
    a, info_a = method.step(problem, state, 0.0, 0.1)
    b, info_b = _answer_in_rounds(problem, method.step_requests(state, 0.0, 0.1))
    for x, y in zip(a.Y, b.Y, strict=True):
        np.testing.assert_array_equal(x, y)
    assert info_a == info_b  # the same evaluations counted


@pytest.mark.parametrize(
    "method",
    [lri.TuckerProjectorSplitting(), lri.TuckerBUG(), lri.TuckerBUG(lri.FixedRank(3))],
    ids=["psi", "bug", "augmented-bug"],
)
def test_small_tucker_substeps_called_as_functions_equal_their_requests(rng, method):
    ops = [0.3 * rng.standard_normal((n, n)) for n in (7, 6, 5)]
    problem = lri.TensorSylvesterODE(ops)
    Y0 = lri.TuckerTensor.from_dense(rng.standard_normal((7, 6, 5)), ranks=(3, 3, 3))
    state = method.init(problem, Y0, 0.0)
    a, info_a = method.step(problem, state, 0.0, 0.1)
    b, info_b = _answer_in_rounds(problem, method.step_requests(state, 0.0, 0.1))
    np.testing.assert_array_equal(a.Y.core, b.Y.core)
    for x, y in zip(a.Y.factors, b.Y.factors, strict=True):
        np.testing.assert_array_equal(x, y)
    assert info_a == info_b


@pytest.mark.parametrize("n, small", [(9, True), (1200, False)], ids=["small", "tall"])
def test_a_problem_driver_calls_small_fields_and_asks_for_tall_ones(rng, monkeypatch, n, small):
    from lowrank_integrators import protocol

    kinds = []
    answer = protocol._answer

    def spy(problem, req):
        kinds.append(type(req))
        return answer(problem, req)

    monkeypatch.setattr(protocol, "_answer", spy)
    problem = lri.SylvesterODE(-np.eye(n), -np.eye(8))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((n, 8)), rank=4)
    method = lri.BUG()
    method.step(problem, method.init(problem, Y0, 0.0), 0.0, 0.1)
    if small:  # K, L and S: one function each, no request per evaluation
        assert kinds.count(FieldFunction) == 3 and Field not in kinds
    else:  # the K-step is tall (9600 entries): its evaluations are requests
        assert kinds.count(Field) == 4 and kinds.count(FieldFunction) == 2


def test_a_driver_in_rounds_declines_to_give_a_field_function(rng):
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((6, 5)), rank=2)

    def step():
        return (yield FieldFunction(KStep(Ledger(2), Y0.V, at=Y0)))

    task = StepTask(step())
    assert task.done and task.value is None


def test_a_driver_in_rounds_is_not_asked_the_queries_it_declines(rng, monkeypatch):
    """A driver in rounds answers Increment with None, Affine with False and FieldFunction with
    None: the substep solvers take those answers without yielding the queries, while a problem
    driver, which answers them, is asked."""
    from lowrank_integrators import substeps

    asked = []
    for name in ("Increment", "Affine", "FieldFunction"):
        query = getattr(substeps, name)

        def spy_init(self, *args, _query=query, _name=name, **kwargs):
            asked.append(_name)
            _query.__init__(self, *args, **kwargs)

        monkeypatch.setattr(substeps, name, type(name, (query,), {"__init__": spy_init}))
    # a tall K-step (Increment, Affine), a small L- and S-step (Increment, FieldFunction)
    problem = lri.SylvesterODE(-np.eye(3000), -np.eye(8))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((3000, 8)), rank=4)
    method = lri.AugmentedBUG(lri.FixedRank(4))
    state = method.init(problem, Y0, 0.0)

    by_rounds = _answer_in_rounds(problem, method.step_requests(state, 0.0, 0.1))[0].Y
    assert asked == []
    by_problem = method.step(problem, state, 0.0, 0.1)[0].Y
    assert {"Increment", "Affine", "FieldFunction"} <= set(asked)
    np.testing.assert_allclose(by_rounds.to_dense(), by_problem.to_dense(), rtol=1e-12)


def test_a_substep_ode_without_a_field_function_is_asked_per_evaluation(rng):
    class OwnKStep(KStep):
        field_function = None  # as a substep ODE written without the base class

    problem = lri.SylvesterODE(rng.standard_normal((9, 9)), rng.standard_normal((8, 8)))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((9, 8)), rank=3)
    counts = []

    def substep(kind):
        led = Ledger(3)
        out = yield from lri.RK4().solve(kind(led, Y0.V, at=Y0), 0.0, 0.1, Y0.U @ Y0.S)
        counts.append(led.info.n_right)
        return out

    by_calls = answer_from_problem(problem, substep(KStep))
    by_requests = answer_from_problem(problem, substep(OwnKStep))
    np.testing.assert_array_equal(by_calls, by_requests)
    assert counts == [4, 4]
