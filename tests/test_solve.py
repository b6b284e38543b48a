"""The driver: time grid, cost counters, progress, callbacks and failure handling."""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators.solve import step_times
from tests.problems_for_tests import random_lowrank, skew


@pytest.fixture
def problem_and_start(rng):
    n, r = 20, 4
    W = skew(rng, n)
    return lri.SylvesterODE(W, W), random_lowrank(rng, n, n, r)


@pytest.mark.parametrize(("t1", "h", "n"), [(1.0, 0.1, 10), (1.0, 0.3, 4), (0.7, 0.7, 1)])
def test_last_step_lands_exactly_on_t1(problem_and_start, t1, h, n):
    problem, Y0 = problem_and_start
    sol = lri.solve(problem, Y0, (0.0, t1), h)
    assert sol.t[-1] == t1
    assert sol.stats.n_steps == n == len(sol.t) - 1
    assert len(sol.ranks) == len(sol.singular_values) == n + 1


def test_step_grid_rounds_ratios_within_round_off():
    assert len(step_times(0.0, 1.0, 0.1)) == 11  # 1.0 / 0.1 is 10.000000000000002
    grid = step_times(0.0, 1.0, 0.3)
    np.testing.assert_allclose(grid, [0.0, 0.3, 0.6, 0.9, 1.0])


BUDGETS = {
    # (method, per-step F V, F^H U, U^H F V, QR, SVD) with RK4(steps=1) substeps
    "KSL": (lri.ProjectorSplitting(order=1), 4, 4, 4, 2, 0),
    "Strang": (lri.ProjectorSplitting(order=2), 8, 4, 8, 3, 0),
    "BUG": (lri.BUG(), 4, 4, 4, 2, 0),
    "AugmentedBUG": (lri.AugmentedBUG(truncation=lri.Tolerance(1e-6)), 4, 4, 4, 2, 1),
}


@pytest.mark.parametrize("name", list(BUDGETS))
def test_cost_budget_per_step(problem_and_start, name):
    """The counts define the methods: evaluations per substep, QR and SVD calls."""
    method, n_right, n_left, n_proj, n_qr, n_svd = BUDGETS[name]
    problem, Y0 = problem_and_start
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.25, method=method)
    s = sol.stats
    assert (s.n_right, s.n_left, s.n_project, s.n_qr, s.n_svd) == (
        4 * n_right,
        4 * n_left,
        4 * n_proj,
        4 * n_qr,
        4 * n_svd,
    )
    assert s.n_f == s.n_right + s.n_left + s.n_project
    assert s.wall_time > 0
    assert all(info.n_qr == n_qr for info in sol.step_info)


def test_substep_count_scales_the_evaluations(problem_and_start):
    problem, Y0 = problem_and_start
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.5, method=lri.BUG(substep=lri.RK4(steps=3)))
    assert sol.stats.n_right == 2 * 12
    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.5, method=lri.BUG(substep=lri.Euler()))
    assert sol.stats.n_f == 2 * 3


def test_rank_decisions_are_recorded(problem_and_start):
    problem, Y0 = problem_and_start
    sol = lri.solve(
        problem, Y0, (0.0, 0.5), 0.1, method=lri.AugmentedBUG(truncation=lri.Tolerance(1e-6))
    )
    for info, r_before, r_after in zip(sol.step_info, sol.ranks[:-1], sol.ranks[1:], strict=True):
        assert (info.rank_before, info.rank_after) == (r_before, r_after)
        assert info.truncation.rank_after == r_after
        assert info.truncation.tail <= 1e-6
    np.testing.assert_allclose(sol.singular_values[-1], np.diag(sol.Y.S))


def test_progress_bar_is_drawn_on_stderr(problem_and_start, capsys):
    problem, Y0 = problem_and_start
    lri.solve(problem, Y0, (0.0, 1.0), 0.1, progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "BUG" in err


def test_progress_in_a_log_file_is_a_few_whole_lines(problem_and_start, capsys):
    """Not a terminal (CI logs): no carriage returns, at most a line per tenth of the run."""
    problem, Y0 = problem_and_start
    lri.solve(problem, Y0, (0.0, 1.0), 0.01, progress=True)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 1 <= len(lines) <= 11
    assert lines[-1].startswith("BUG [####") and "100/100" in lines[-1]


def test_callback_sees_each_step_and_can_stop_the_run(problem_and_start):
    problem, Y0 = problem_and_start
    seen = []

    def callback(t, Y, info):
        seen.append(t)
        return len(seen) < 3

    sol = lri.solve(problem, Y0, (0.0, 1.0), 0.1, callback=callback)
    assert sol.status == "stopped" and not sol.success
    assert seen == pytest.approx([0.1, 0.2, 0.3])
    assert sol.t[-1] == pytest.approx(0.3)
    assert "callback" in sol.message


class BlowsUpAfter(lri.MatrixODE):
    """F = Y up to t_bad, F = inf after it: the step starting at t_bad diverges."""

    def __init__(self, t_bad):
        self.t_bad = t_bad

    def _scale(self, t):
        return np.inf if t > self.t_bad + 1e-12 else 1.0

    def apply_right(self, t, Y, V):
        return self._scale(t) * Y.matmul(V)

    def apply_left(self, t, Y, U):
        return self._scale(t) * Y.rmatmul_adjoint(U)


@pytest.mark.parametrize(
    "method",
    [lri.ProjectorSplitting(), lri.BUG(), lri.AugmentedBUG(truncation=lri.Tolerance(1e-8))],
    ids=repr,
)
def test_divergence_stops_with_status_message_and_last_good_state(rng, method):
    Y0 = random_lowrank(rng, 8, 7, 2)
    with np.errstate(all="ignore"):
        sol = lri.solve(BlowsUpAfter(0.3), Y0, (0.0, 1.0), 0.1, method=method)
    assert sol.status == "failed" and not sol.success
    assert "step 4 of 10" in sol.message and "t = 0.3" in sol.message
    assert sol.t[-1] == pytest.approx(0.3)
    assert np.all(np.isfinite(sol.Y.to_dense()))
    # the last good state is the exact solution e^t Y0 up to substep error
    np.testing.assert_allclose(sol.Y.to_dense(), np.exp(0.3) * Y0.to_dense(), rtol=1e-5)


def test_errors_that_are_not_divergence_propagate(rng):
    def f(t, Y):
        raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        lri.solve(lri.DenseODE(f), random_lowrank(rng, 5, 5, 1), (0, 1), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"h": 0.0}, ValueError, "h must be"),
        ({"h": -0.1}, ValueError, "h must be"),
        ({"h": float("inf")}, ValueError, "h must be"),
        ({"h": "0.1"}, TypeError, "h must be"),
        ({"t_span": (1.0, 1.0)}, ValueError, "t_span"),
        ({"t_span": (1.0, 0.0)}, ValueError, "t_span"),
        ({"t_span": (0.0,)}, TypeError, "t_span"),
        ({"t_span": (0.0, float("nan"))}, ValueError, "t_span"),
        ({"method": "bug"}, TypeError, "method"),
        ({"method": lri.BUG}, TypeError, "method"),
    ],
)
def test_solve_rejects_bad_arguments(problem_and_start, kwargs, exc, match):
    problem, Y0 = problem_and_start
    args = {"t_span": (0.0, 1.0), "h": 0.1} | kwargs
    with pytest.raises(exc, match=match):
        lri.solve(problem, Y0, **args)


def test_solve_requires_a_lowrank_initial_value(problem_and_start):
    problem, Y0 = problem_and_start
    with pytest.raises(TypeError, match="Y0 must be a LowRankMatrix"):
        lri.solve(problem, Y0.to_dense(), (0, 1), 0.1)


def test_save_states_keeps_the_trajectory(problem_and_start):
    problem, Y0 = problem_and_start
    sol = lri.solve(problem, Y0, (0.0, 0.3), 0.1, save_states=True)
    assert len(sol.states) == 4 and sol.states[0] is Y0 and sol.states[-1] is sol.Y
