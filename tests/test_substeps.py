"""Substep solvers: stage times, evaluation counts, exact increments."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators.substeps import as_substep


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
