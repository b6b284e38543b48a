"""Deliberately broken integrators and problems must fail the validation studies.

A suite that passes a wrong method proves nothing. Each mutation below is a bug seen in real
implementations: a backward S-step integrated with ``+`` instead of ``-``, and a missing
conjugate transpose (in a BUG basis change, and in the source term of an L-product).
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.integrators.base import KStep, Ledger, LStep, SStep
from lowrank_integrators.verify import convergence_study
from lowrank_integrators.verify.methods import MethodSpec, available_methods
from lowrank_integrators.verify.suite import collect_cases, run_cases


class ForwardSStepKSL(lri.ProjectorSplitting):
    """KSL whose 'backward' S-step runs forward (sign +1): the classic sign bug."""

    def _k_then_backward_s(self, led, Y0, t0, t1):
        U0, S0, V0 = Y0
        K1 = yield from self.substep.solve(KStep(led, V0), t0, t1, U0 @ S0)
        U1, S_hat = led.qr(K1)
        S_tilde = yield from self.substep.solve(SStep(led, U1, V0, sign=+1), t0, t1, S_hat)
        return U1, S_tilde


class PlainTransposeBUG(lri.BUG):
    """BUG with ``M = U1^T U0`` and ``N = V1^T V0``: conjugation forgotten in the basis change."""

    def step_requests(self, state, t, h):
        U0, S0, V0 = state.Y
        led = Ledger(rank_before=state.Y.rank)
        t1 = t + h
        U1 = led.orth((yield from self.substep.solve(KStep(led, V0), t, t1, U0 @ S0)))
        V1 = led.orth((yield from self.substep.solve(LStep(led, U0), t, t1, V0 @ bk.adjoint(S0))))
        M, N = U1.T @ U0, V1.T @ V0  # the mutation: ^T where ^H belongs
        S1 = yield from self.substep.solve(SStep(led, U1, V1), t, t1, M @ S0 @ bk.adjoint(N))
        Y1 = lri.LowRankMatrix(U1, S1, V1, check=False)
        return state.with_Y(Y1, t1), led.finish(Y1.rank)


def spec(name, build, **kw):
    return MethodSpec(name, build, **kw)


FLIPPED = spec(
    "KSL-flipped",
    lambda s, tr: ForwardSStepKSL(substep=s),
    order=1,
    exact_tangent=True,
    exact_data=True,
    norm="exact",
)
NOCONJ = spec(
    "BUG-noconj", lambda s, tr: PlainTransposeBUG(substep=s), order=1, exact_data=True, norm="drift"
)


def run(pattern, methods):
    cases = collect_cases(quick=True, only=pattern, methods=methods)
    assert cases, f"pattern {pattern!r} selected nothing"
    return {(r.problem, r.label): r for r in run_cases(cases)}


def failed_checks(result):
    """Names of the failed checks; a crashed study ("completed") is not a detected mutation."""
    names = [c.name for c in result.failures]
    assert "completed" not in names, result.failures
    return names


def test_correct_ksl_passes_the_studies_the_mutations_are_run_on():
    ksl = [s for s in available_methods() if s.name == "KSL"]
    results = run("V1-sylvester/*/exactness,V5-stiff-heat/*/exactness", ksl)
    assert len(results) == 2 and all(r.passed for r in results.values())


@pytest.mark.parametrize("problem", ["V1-sylvester", "V5-stiff-heat"])
def test_forward_s_step_fails_exactness_on_tangent_fields(problem):
    res = run(f"{problem}/*/exactness", [FLIPPED])[(problem, "exactness")]
    assert failed_checks(res) == ["max error over h"]
    assert res.summary["error"] > 1e3 * res.checks[0].expected  # O(1), not round-off


def test_forward_s_step_fails_convergence_on_the_nonlinear_field():
    res = run("N1-nonlinear/*/convergence", [FLIPPED])[("N1-nonlinear", "convergence")]
    # O(1) errors that do not fall: no asymptotic points to fit, and no order
    assert failed_checks(res) == ["fitted points", "order"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the broken method overflows
def test_missing_conjugate_in_bug_is_caught_only_by_complex_problems():
    real = run("V1-sylvester/*/convergence", [NOCONJ])[("V1-sylvester", "convergence")]
    assert real.passed  # real data cannot see a missing conjugation
    cplx = run("N1-nonlinear/*/convergence", [NOCONJ])[("N1-nonlinear", "convergence")]
    assert failed_checks(cplx)


class PlainSourceSylvester(lri.SylvesterODE):
    """L-product with ``C U`` instead of ``C^H U`` (a bug seen in a structured right-hand side)."""

    def _c_left(self, U):
        return self.C @ U


def test_missing_conjugate_transpose_of_the_source_needs_the_non_hermitian_variant():
    from lowrank_integrators.validation.lyapunov_source import STEPS_QUICK, Lyapunov, T

    aug = next(s for s in available_methods() if s.name == "AugmentedBUG")
    method = aug.make(lri.RK4(steps=5), lri.Tolerance(1e-2, scale_with_h=2, rmax=40))
    outcome = {}
    for complex_source in (False, True):
        setup = Lyapunov(complex_source=complex_source)
        broken = PlainSourceSylvester(setup.A, setup.A, setup.C)
        res = convergence_study(
            broken, setup.Y0, method, setup.reference, (0.0, T), STEPS_QUICK, expected_order=1
        )
        outcome[complex_source] = res.passed
    assert outcome == {False: True, True: False}
    assert np.iscomplexobj(Lyapunov(complex_source=True).C)


# --- first-order methods declared second order -------------------------------------------------
def relabelled(name, like, order):
    """``like``'s builder under another method's name and declared order (a mislabelled build)."""
    base = next(s for s in available_methods() if s.name == like)
    return spec(name, base.build, order=order, rank_adaptive=True, max_growth=base.max_growth)


@pytest.mark.parametrize(
    ("name", "like"), [("MidpointBUG", "AugmentedBUG"), ("ParallelBUG2", "ParallelBUG")]
)
def test_a_first_order_method_declared_second_order_fails_the_suite(name, like):
    fake = relabelled(name, like, order=2)
    cases = collect_cases(quick=True, methods=[fake])
    results = run_cases(c for c in cases if c.problem == "N2-nonlinear-tangent")
    assert len(results) == 1
    assert failed_checks(results[0]) == ["order"]
    assert results[0].summary["observed_order"] < 1.25


def test_the_second_order_methods_pass_where_the_first_order_ones_are_not_second_order():
    names = {"AugmentedBUG", "abcPSI", "MidpointBUG", "ParallelBUG2"}
    methods = [s for s in available_methods() if s.name in names]
    got = {
        r.method: r
        for r in run_cases(collect_cases(quick=True, only="N2-nonlinear-tangent", methods=methods))
    }
    assert all(r.passed for r in got.values()), {m: r.failures for m, r in got.items()}
    for m in names & got.keys():
        order = got[m].summary["observed_order"]
        assert (order > 1.75) if m in ("MidpointBUG", "ParallelBUG2") else (order < 1.5)
    # the same augmented BUG looks second order on the Sylvester field V1 (pitfall 7.2)
    aug = [s for s in methods if s.name == "AugmentedBUG"]
    v1 = run("V1-sylvester/*/convergence", aug)[("V1-sylvester", "convergence")]
    assert v1.summary["observed_order"] > 1.75


def test_a_second_order_method_passing_for_first_order_fails_the_ceiling():
    base = next(s for s in available_methods() if s.name == "MidpointBUG")
    fake = spec("Midpoint-as-first", base.build, order=1, rank_adaptive=True)
    res = run("N2-nonlinear-tangent/*/convergence", [fake])[("N2-nonlinear-tangent", "convergence")]
    assert failed_checks(res) == ["order not higher"]
