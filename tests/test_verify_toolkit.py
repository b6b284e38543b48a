"""The verification toolkit itself: order fits, checks, descent, bounds, reports, the suite."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.linalg import expm

import lowrank_integrators as lri
from lowrank_integrators import verify
from lowrank_integrators.integrators.base import StepInfo
from lowrank_integrators.truncation import TruncationRecord
from lowrank_integrators.verify.controls import FactorODERK4
from lowrank_integrators.verify.report import SCHEMA, format_table
from lowrank_integrators.verify.suite import Case, matches


# --- a small tangent problem with an exact solution -----------------------------------------
def rotation(n=24, r=6, seed=7):
    g = np.random.default_rng(seed)
    W1, W2 = ((R - R.T) / 2 for R in (g.random((n, n)), g.random((n, n))))
    d = 2.0 ** -np.arange(1, r + 1)
    eye = np.eye(n)[:, :r]
    Y0 = lri.LowRankMatrix(eye, np.diag(d), eye)
    problem = lri.SylvesterODE(W1 + np.eye(n), W2)

    def ref(t):
        return (expm(t * W1)[:, :r] * (np.exp(t) * d)) @ expm(t * W2)[:, :r].T

    return problem, Y0, ref


# --- order fit --------------------------------------------------------------------------------
def test_fit_order_recovers_a_known_slope_with_an_interval_containing_it(rng):
    h = 0.1 * 2.0 ** -np.arange(6)
    errors = 3.0 * h**1.7 * np.exp(0.02 * rng.standard_normal(h.size))
    fit = verify.fit_order(h, errors)
    assert abs(fit.order - 1.7) < 0.05
    assert fit.ci_low < 1.7 < fit.ci_high
    assert fit.ci_high - fit.ci_low < 0.2
    assert fit.n_points == 6


def test_fit_order_is_exact_on_noise_free_data_and_drops_the_floor():
    h = np.array([0.1, 0.05, 0.025, 0.0125])
    errors = 2.0 * h**2
    errors[-1] = 1e-15  # round-off
    fit = verify.fit_order(h, errors, floor=1e-12)
    assert fit.n_points == 3
    assert fit.order == pytest.approx(2.0, abs=1e-10)
    assert math.exp(fit.intercept) == pytest.approx(2.0, rel=1e-8)


def test_fit_order_with_two_points_has_an_unbounded_interval_and_one_point_none():
    two = verify.fit_order([0.1, 0.05], [1e-2, 2.5e-3])
    assert two.order == pytest.approx(2.0)
    assert (two.ci_low, two.ci_high) == (-math.inf, math.inf)
    assert math.isnan(verify.fit_order([0.1, 0.05], [1e-2, math.inf]).order)


def test_asymptotic_prefix_stops_at_the_first_stagnating_error():
    h = [0.1, 0.05, 0.02, 0.01, 0.005]
    # the midpoint BUG on V1 (audit): errors fall, then rise at h = 0.005 (round-off)
    errors = [2.5e-4, 3.1e-5, 2.0e-6, 3.8e-7, 1.4e-6]
    assert verify.asymptotic_prefix(h, errors) == 4
    # a decrease by less than (h_prev / h) ** 0.5 is stagnation too
    assert verify.asymptotic_prefix([0.1, 0.05, 0.025], [1e-3, 5e-4, 4e-4]) == 2
    assert verify.asymptotic_prefix([0.1, 0.05], [math.inf, 1.0]) == 0
    assert verify.asymptotic_prefix([0.1, 0.05, 0.025], [1e-3, math.nan, 1e-5]) == 1


def fake_method(errors_by_h):
    """A factory whose runs end ``errors_by_h[h]`` away from the zero reference."""

    class Offset(lri.integrators.base.Integrator):
        order = 1

        def __init__(self, err):
            super().__init__(None)
            self.err = err

        def step(self, problem, state, t, h):
            U, _, V = state.Y
            Y1 = lri.LowRankMatrix(U, np.array([[self.err]]), V, check=False)
            return state.with_Y(Y1, t + h), StepInfo(rank_before=1, rank_after=1)

    return lambda h: Offset(errors_by_h[round(h, 12)])


def zero_problem():
    x = np.zeros((4, 1))
    x[0] = 1.0
    return lri.DenseODE(lambda t, Y: 0 * Y), lri.LowRankMatrix(x, np.array([[1.0]]), x)


def test_an_asserted_order_needs_three_points_above_the_floor_and_before_stagnation():
    problem, Y0 = zero_problem()
    zero = lambda t: np.zeros((4, 4))  # noqa: E731
    steps = (0.1, 0.05, 0.025)
    clean = fake_method({0.1: 4e-3, 0.05: 2e-3, 0.025: 1e-3})
    res = verify.convergence_study(problem, Y0, clean, zero, (0.0, 0.1), steps, expected_order=1)
    assert res.passed and res.summary["observed_order"] == pytest.approx(1.0)
    # the third error stagnates: two points give an unbounded interval, so the check fails
    stalled = fake_method({0.1: 4e-3, 0.05: 2e-3, 0.025: 1.9e-3})
    res = verify.convergence_study(problem, Y0, stalled, zero, (0.0, 0.1), steps, expected_order=1)
    assert [c.name for c in res.failures] == ["fitted points"]
    assert res.series["fitted"] == [True, True, False]


def test_errors_all_below_the_floor_pass_only_where_theory_declares_exactness():
    problem, Y0 = zero_problem()
    zero = lambda t: np.zeros((4, 4))  # noqa: E731
    steps = (0.1, 0.05, 0.025)
    tiny = fake_method({0.1: 1e-12, 0.05: 1e-12, 0.025: 1e-12})
    kw = dict(expected_order=1, floor=1e-9)
    res = verify.convergence_study(problem, Y0, tiny, zero, (0.0, 0.1), steps, **kw)
    assert not res.passed and "fitted points" in [c.name for c in res.failures]
    exact = verify.convergence_study(problem, Y0, tiny, zero, (0.0, 0.1), steps, exact=True, **kw)
    assert exact.passed and exact.checks[-1].name == "error at round-off floor"
    big = fake_method({0.1: 1e-3, 0.05: 1e-12, 0.025: 1e-12})
    res = verify.convergence_study(problem, Y0, big, zero, (0.0, 0.1), steps, exact=True, **kw)
    assert not res.passed


def test_max_order_fails_a_method_that_converges_faster_than_theory_allows():
    problem, Y0 = zero_problem()
    zero = lambda t: np.zeros((4, 4))  # noqa: E731
    steps = (0.1, 0.05, 0.025)
    second = fake_method({0.1: 4e-3, 0.05: 1e-3, 0.025: 2.5e-4})
    kw = dict(expected_order=1, max_order=1.5)
    res = verify.convergence_study(problem, Y0, second, zero, (0.0, 0.1), steps, **kw)
    assert [c.name for c in res.failures] == ["order not higher"]


def test_fit_order_rejects_mismatched_input():
    with pytest.raises(ValueError, match="equal length"):
        verify.fit_order([0.1, 0.05], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        verify.fit_order([0.1, 0.05], [1.0, 0.5], confidence=1.5)


# --- checks -----------------------------------------------------------------------------------
def test_checks_compare_with_tolerance_and_never_pass_non_finite_values():
    assert verify.at_least("order", 0.8, 1.0, 0.25).passed
    assert not verify.at_least("order", 0.7, 1.0, 0.25).passed
    assert verify.at_most("error", 1e-9, 1e-8).passed
    assert not verify.at_most("error", math.nan, 1e-8).passed
    assert not verify.at_most("error", math.inf, math.inf).passed
    info = verify.informational("observed order", math.nan)
    assert info.passed and not info.required


def test_study_result_fails_only_on_required_checks():
    res = verify.StudyResult("x", "p", "m", checks=[verify.informational("a", 1.0)])
    assert res.passed
    res.checks.append(verify.at_most("b", 2.0, 1.0))
    assert not res.passed and [c.name for c in res.failures] == ["b"]
    json.dumps(res.as_dict(), allow_nan=False)


def test_check_rejects_unknown_relation():
    with pytest.raises(ValueError, match="relation"):
        verify.Check("x", "==", 1.0, 1.0, 0.0, True)


# --- descent ----------------------------------------------------------------------------------
def test_descent_check_catches_a_single_increase():
    assert verify.descent_check([3.0, 2.0, 2.0, 1.0]).passed
    bad = verify.descent_check([3.0, 2.0, 2.1, 1.0])
    assert not bad.passed and bad.measured == pytest.approx(0.1)
    assert verify.descent_check([3.0, 2.0, 2.1, 1.0], slack=0.2).passed
    assert not verify.descent_check([3.0, math.nan, 1.0]).passed


def test_descent_check_allows_each_step_its_own_truncation_slack_and_no_more():
    from lowrank_integrators.verify.descent import truncation_slack

    losses = [3.0, 2.0, 2.05, 1.0]
    assert not verify.descent_check(losses).passed
    assert verify.descent_check(losses, step_slack=[0.0, 0.06, 0.0]).passed
    assert not verify.descent_check(losses, step_slack=[0.06, 0.0, 0.0]).passed  # wrong step
    with pytest.raises(ValueError, match="one non-negative value per step"):
        verify.descent_check(losses, step_slack=[0.1])
    assert truncation_slack(0.1, 2.0, 1.0) == pytest.approx(0.1 * (2.0 + 0.15))
    # L(Y) = |Y - a|^2 / 2 in 1-D: truncating Yhat = a + g0 by t raises L by exactly this much
    a, g0, t = 0.0, 1.0, 0.25
    rise = 0.5 * (a + g0 + t - a) ** 2 - 0.5 * g0**2
    assert rise <= truncation_slack(t, abs(g0 + t), 1.0)


def test_descent_study_on_a_gradient_flow_reaches_the_eckart_young_minimum():
    g = np.random.default_rng(3)
    m, n, r = 30, 20, 3
    Ua = np.linalg.qr(g.standard_normal((m, n)))[0]
    Va = np.linalg.qr(g.standard_normal((n, n)))[0]
    sigma = 0.7 ** np.arange(n)
    A = (Ua * sigma) @ Va.T
    Y0 = lri.LowRankMatrix.from_dense(g.standard_normal((m, n)), rank=r)
    problem = lri.SylvesterODE(-np.eye(m), None, A)
    minimum = 0.5 * float(np.sum(sigma[r:] ** 2))

    def loss(Y):
        return 0.5 * float(np.linalg.norm(Y.to_dense() - A) ** 2)

    method = lri.AugmentedBUG(lri.FixedRank(r), substep=lri.Euler())
    res = verify.descent_study(problem, Y0, method, loss, (0.0, 60.0), 1.0, target=minimum)
    assert res.passed, [c.describe() for c in res.checks]
    # a target below the true minimum is caught by the final-loss check
    wrong = verify.descent_study(problem, Y0, method, loss, (0.0, 60.0), 1.0, target=0.9 * minimum)
    assert not wrong.passed


# --- convergence and exactness -----------------------------------------------------------------
def test_convergence_study_confirms_first_order_of_bug_and_fails_against_a_wrong_reference():
    problem, Y0, ref = rotation()
    steps = (0.1, 0.05, 0.025)
    good = verify.convergence_study(problem, Y0, lri.BUG(), ref, (0.0, 1.0), steps)
    assert good.passed and good.summary["expected_order"] == 1
    assert good.summary["observed_order"] > 0.75
    wrong = verify.convergence_study(
        problem, Y0, lri.BUG(), lambda t: ref(0.9 * t), (0.0, 1.0), steps
    )
    assert not wrong.passed


def test_exactness_study_separates_projector_splitting_from_bug():
    problem, Y0, ref = rotation()
    steps = (0.1, 0.05)
    psi = verify.exactness_study(
        problem,
        Y0,
        lambda h: lri.ProjectorSplitting(substep=lri.RK4(steps=max(1, round(h / 0.01)))),
        ref,
        (0.0, 1.0),
        steps,
        tolerance=1e-6,
    )
    assert psi.passed
    bug = verify.exactness_study(problem, Y0, lri.BUG(), ref, (0.0, 1.0), steps, tolerance=1e-6)
    assert not bug.passed


def test_study_arguments_are_validated():
    problem, Y0, ref = rotation()
    with pytest.raises(ValueError, match="at least two"):
        verify.convergence_study(problem, Y0, lri.BUG(), ref, (0.0, 1.0), [0.1])
    with pytest.raises(ValueError, match="> 0"):
        verify.convergence_study(problem, Y0, lri.BUG(), ref, (0.0, 1.0), [0.1, -0.1])
    with pytest.raises(TypeError, match="integrator"):
        verify.convergence_study(problem, Y0, "BUG", ref, (0.0, 1.0), [0.1, 0.05])
    with pytest.raises(ValueError, match="tolerance"):
        verify.exactness_study(problem, Y0, lri.BUG(), ref, (0.0, 1.0), [0.1, 0.05], tolerance=0)


# --- robustness ---------------------------------------------------------------------------------
def robustness_family():
    cases = []
    for r in (3, 10):
        problem, Y0, ref = rotation(r=r)
        cases.append(verify.RobustnessCase(f"r={r}", 2.0**-r, problem, Y0, ref))
    return cases


def test_robustness_study_passes_bug_and_fails_the_factor_ode_control():
    cases = robustness_family()
    assert verify.robustness_study(cases, lri.BUG(), (0.0, 1.0), 0.05).passed
    with np.errstate(all="ignore"):
        control = verify.robustness_study(cases, FactorODERK4(), (0.0, 1.0), 0.05)
    assert not control.passed


# --- error bound ----------------------------------------------------------------------------------
def test_fit_error_bound_recovers_constants_and_coverage():
    g = np.random.default_rng(1)
    rows = np.column_stack([g.random(12), np.zeros(12), g.random(12) * 0.1, np.zeros(12)])
    errors = rows @ np.array([2.0, 0.0, 5.0, 0.0])
    fit = verify.fit_error_bound(rows, errors)
    assert fit.constants["delta"] == pytest.approx(2.0, rel=1e-8)
    assert fit.constants["h"] == pytest.approx(5.0, rel=1e-8)
    assert fit.coverage == pytest.approx(1.0, rel=1e-8)
    # one run that no common constants explain
    errors[0] *= 100
    assert verify.fit_error_bound(rows, errors).coverage > 3
    errors[1] = math.inf
    assert verify.fit_error_bound(rows, errors).coverage == math.inf


def test_error_bound_study_estimates_a_zero_normal_component_on_a_tangent_field():
    cases = [verify.BoundCase(f"r={r}", *rotation(r=r)) for r in (3, 5)]
    res = verify.error_bound_study(cases, lambda case, h: lri.BUG(), (0.0, 1.0), (0.1, 0.05))
    assert res.passed
    assert np.all(np.asarray(res.series["eps"]) == 0.0)
    assert res.summary["c_h"] > 0


def test_error_bound_coverage_fails_a_finite_non_robust_method_against_the_rank_r_solution():
    # V1 at ranks 4, 8 (sigma_r = 2^-r): the factor ODEs stay finite at h <= 0.02 but their
    # error grows as sigma_r falls, which no constants common to both ranks can cover.
    from lowrank_integrators.validation.sylvester_rotation import (
        BOUND_CONTROL_STEPS,
        BOUND_H_POWERS,
        SylvesterRotation,
        _bound_family,
    )

    setup = SylvesterRotation()
    fam = _bound_family(setup)
    with np.errstate(all="ignore"):
        control = verify.error_bound_study(
            fam,
            lambda c, h: FactorODERK4(),
            (0.0, 1.0),
            BOUND_CONTROL_STEPS,
            h_powers=BOUND_H_POWERS,
        )
    assert np.all(np.isfinite(control.series["error"]))
    assert [c.name for c in control.failures] == ["bound coverage"]
    # measured against the full solution the plateau e * delta hides the same control
    full = [verify.BoundCase(c.label, c.problem, c.Y0, setup.full_reference) for c in fam]
    with np.errstate(all="ignore"):
        hidden = verify.error_bound_study(
            full, lambda c, h: FactorODERK4(), (0.0, 1.0), BOUND_CONTROL_STEPS
        )
    assert hidden.passed


# --- conservation -------------------------------------------------------------------------------
def schrodinger_like(n=20, r=4, seed=5):
    g = np.random.default_rng(seed)
    H = g.standard_normal((n, n)) + 1j * g.standard_normal((n, n))
    H = (H + H.conj().T) / 2
    D = np.diag(np.cos(np.arange(n)))
    # F(Y) = -i (H Y + Y H + D Y D): Re <Y, F(Y)> = 0, not tangent (D Y D)
    problem = lri.DenseODE(lambda t, Y: -1j * (H @ Y + Y @ H + D @ Y @ D))
    X = g.standard_normal((n, n)) + 1j * g.standard_normal((n, n))
    return problem, lri.LowRankMatrix.from_dense(X, rank=r)


def test_conservation_study_passes_projector_splitting_and_reports_bug_drift():
    problem, Y0 = schrodinger_like()

    def norm(t, Y):
        return float(np.linalg.norm(Y.to_dense()))

    psi = verify.conservation_study(
        problem,
        Y0,
        lri.ProjectorSplitting(substep=lri.RK4(4)),
        (0.0, 0.5),
        0.05,
        {"norm": norm},
        tolerance=1e-6,
    )
    assert psi.passed
    strict = verify.conservation_study(
        problem, Y0, lri.BUG(), (0.0, 0.5), 0.05, {"norm": norm}, tolerance=1e-6
    )
    assert not strict.passed  # BUG does not conserve the norm
    drift = verify.drift_study(problem, Y0, lri.BUG(), (0.0, 0.5), (0.1, 0.05, 0.025), norm)
    assert drift.passed and drift.summary["observed_order"] > 0.75


def test_relative_drift():
    assert np.allclose(verify.relative_drift([2.0, 2.2, 1.9]), [0.0, 0.1, 0.05])
    with pytest.raises(ValueError):
        verify.relative_drift([])


# --- rank adaptivity ----------------------------------------------------------------------------
def info(before, after, tail, tol):
    rec = TruncationRecord(rank_before=2 * before, rank_after=after, tail=tail, tolerance=tol)
    return StepInfo(rank_before=before, rank_after=after, truncation=rec)


def test_truncation_checks_catch_a_tail_above_tolerance_and_too_fast_growth():
    good = verify.truncation_checks([info(2, 4, 1e-7, 1e-6), info(4, 5, 0.0, 1e-6)], rmax=8)
    assert all(c.passed for c in good)
    tail = verify.truncation_checks([info(2, 3, 2e-6, 1e-6)])
    assert not tail[0].passed
    growth = verify.truncation_checks([info(2, 5, 0.0, 1e-6)], max_growth=2)
    assert not next(c for c in growth if c.name == "rank growth per step").passed
    clamped = verify.truncation_checks([info(4, 8, 1.0, 1e-6)], rmax=8)
    assert all(c.passed for c in clamped)  # the rmax clamp may leave a larger tail


def test_rank_adaptivity_study_on_a_lyapunov_problem():
    n = 30
    A = np.diag(-2 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    B = np.random.default_rng(11).standard_normal((n, 2))
    C = B @ B.T / np.linalg.norm(B) ** 2
    problem = lri.SylvesterODE(A, A, C)
    x = np.ones((n, 1)) / np.sqrt(n)
    Y0 = lri.LowRankMatrix(x, np.array([[0.1]]), x)
    L = np.kron(A, np.eye(n)) + np.kron(np.eye(n), A)
    Linv_c = np.linalg.solve(L, C.ravel())

    def ref(t):  # variation of constants with the dense n^2 x n^2 operator
        E = expm(t * L)
        return (E @ (Y0.to_dense().ravel() + Linv_c) - Linv_c).reshape(n, n)

    res = verify.rank_adaptivity_study(
        problem,
        Y0,
        lambda th, h: lri.AugmentedBUG(lri.Tolerance(th, rmax=20)),
        ref,
        (0.0, 1.0),
        0.05,
        (1e-2, 1e-6),
        rmax=20,
    )
    assert res.passed, [c.describe() for c in res.checks]
    assert res.series["rank"][0] == 1 and max(res.series["rank"]) > 1


# --- report and suite ---------------------------------------------------------------------------
def sample_results():
    conv = verify.StudyResult(
        "convergence",
        "P",
        "BUG",
        checks=[verify.at_least("order", 0.98, 1.0, 0.25)],
        summary={"error": 1e-3, "observed_order": 0.98, "expected_order": 1, "final_rank": 4},
        series={"h": [0.1, 0.05], "error": [2e-3, 1e-3]},
    )
    ranks = verify.StudyResult(
        "rank_adaptivity",
        "P",
        "AugmentedBUG",
        checks=[verify.at_most("tail - tau", 1.0, 0.0)],
        summary={"error": math.nan, "final_rank": 3},
        series={"t": [0.0, 0.5, 1.0], "rank": [1, 2, 3]},
    )
    return [conv, ranks]


def test_report_schema_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    report = verify.write_report(sample_results(), tmp_path / "out", meta={"mode": "quick"})
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["schema"] == SCHEMA
    assert set(data) >= {
        "version",
        "created",
        "environment",
        "meta",
        "summary",
        "results",
        "figures",
        "figures_note",
    }
    assert data["summary"] == {
        "studies": 2,
        "passed": 1,
        "informational": 0,
        "failed": 1,
        "checks": 2,
        "required_checks": 2,
        "informational_checks": 0,
        "failed_checks": 1,
        "ok": False,
    }
    first = data["results"][0]
    assert set(first) >= {
        "study",
        "label",
        "problem",
        "method",
        "passed",
        "verdict",
        "summary",
        "checks",
        "series",
    }
    assert set(first["checks"][0]) == {
        "name",
        "relation",
        "expected",
        "measured",
        "tolerance",
        "passed",
        "required",
        "note",
    }
    assert data["results"][1]["summary"]["error"] == "nan"
    assert sorted(data["figures"]) == ["convergence.png", "ranks.png"]
    for name in data["figures"]:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = verify.write_report(sample_results(), tmp_path)
    assert report["figures"] == [] and "matplotlib is not installed" in report["figures_note"]
    assert (tmp_path / "report.json").exists()


def test_a_study_asserting_only_that_its_runs_succeeded_is_informational(tmp_path):
    smoke = verify.StudyResult(
        "convergence",
        "P",
        "M",
        checks=[
            verify.at_least("runs succeeded", 3, 3),
            verify.informational("observed order", 0.7),
        ],
    )
    assert smoke.passed and not smoke.substantive and smoke.verdict == "info"
    results = [*sample_results(), smoke]
    assert format_table(results).splitlines()[-1].split()[-1] == "info"
    summary = verify.write_report(results, tmp_path, figures=False)["summary"]
    assert (summary["passed"], summary["informational"], summary["failed"]) == (1, 1, 1)
    assert (summary["required_checks"], summary["informational_checks"]) == (3, 1)
    smoke.checks.append(verify.at_most("error", 2.0, 1.0))
    assert smoke.verdict == "FAIL"


def test_table_lists_problem_method_order_and_verdict():
    table = format_table(sample_results())
    lines = table.splitlines()
    assert lines[0].split() == [
        "problem",
        "method",
        "study",
        "error",
        "order",
        "expected",
        "rank",
        "result",
    ]
    assert lines[2].split()[-1] == "pass" and lines[3].split()[-1] == "FAIL"


def test_case_patterns_are_globs_or_substrings():
    case = Case("V1-sylvester", "BUG", "convergence", lambda: None)
    assert matches(case, None) and matches(case, "sylvester")
    assert matches(case, "V1*/bug/*") and not matches(case, "V3*")
    assert matches(case, "V3*, v1-sylvester/BUG")


def test_a_crashing_case_becomes_a_failed_result():
    def boom():
        raise RuntimeError("broken study")

    res = Case("P", "M", "convergence", boom).run()
    assert not res.passed and "broken study" in res.checks[0].note


def test_error_bound_with_a_second_order_term_explains_second_order_errors():
    g = np.random.default_rng(2)
    h = np.tile([0.1, 0.05, 0.025], 4)
    delta = np.repeat(g.random(4) * 1e-3, 3)
    errors = 0.5 * delta + 3.0 * h**2
    first = verify.fit_error_bound(np.column_stack([delta, 0 * h, h, 0 * h]), errors)
    second = verify.fit_error_bound(
        np.column_stack([delta, 0 * h, h, h**2, 0 * h]),
        errors,
        ("delta", "eps", "h", "h^2", "n_theta"),
    )
    assert second.coverage == pytest.approx(1.0, rel=1e-6)
    assert second.constants["h^2"] == pytest.approx(3.0, rel=1e-6)
    assert first.coverage > second.coverage


def test_the_package_docstring_example_runs():
    import doctest

    assert doctest.testmod(verify, verbose=False).failed == 0
