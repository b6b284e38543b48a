r"""V1: Sylvester rotation ``Y' = W1 Y + Y + Y W2^T`` (a tangent field, ``eps = 0``).

Source: the test problem of Ceruti, Lubich (2022), An unconventional robust integrator for
dynamical low-rank approximation, BIT 62:23-44, arXiv:2010.02022 (after Koch, Lubich 2007).
``W_k = (R_k - R_k^T)/2`` with ``R1, R2 = rng(1234).random((n, n))`` (R1 first), ``n = 100``,
``D = diag(2^{-j})``, ``Y0 = D_r``.

Reference (exact): the field is tangent to the rank-r manifold, so the low-rank solution is
``Y_r(t) = e^{t W1} e^t D_r (e^{t W2})^T`` and the full solution is
``A(t) = e^{t W1} e^t D (e^{t W2})^T``.

Theory: projector splitting (KSL, Strang) is exact for every ``h`` (Lubich, Oseledets 2014); a
``+`` sign in the backward S-step gives an O(1) error. BUG is first order with an error that
does not grow with the rank although ``sigma_r = 2^{-r}`` falls sharply (robustness). The
augmented BUG truncated to rank r is observed second order here (special structure); order 1
is asserted. The error-bound study measures errors against ``Y_r(t)`` (``delta = eps = 0``),
so the fitted bound is ``sum_p c_p h^p`` with constants common to ``r = 4, 8``; the RK4
factor-ODE control, finite at ``h <= 0.02``, must fail its coverage because its error grows
as ``sigma_r`` falls.
"""

from __future__ import annotations

import numpy as np

import lowrank_integrators as lri
from lowrank_integrators.verify import (
    BoundCase,
    RobustnessCase,
    StudyResult,
    at_least,
    convergence_study,
    error_bound_study,
    exactness_study,
    robustness_study,
)
from lowrank_integrators.verify.controls import FactorODERK4
from lowrank_integrators.verify.suite import Case

from ._common import Memo, fixed_rank_builder

NAME = "V1-sylvester"
T = 1.0
STEPS_QUICK = (0.1, 0.05, 0.02, 0.01)
STEPS_FULL = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
#: Allowed error of methods that are exact by theory: the RK4 substeps (internal step 0.01)
#: leave about 1e-7; a wrong sign in the backward S-step leaves O(1).
EXACT_TOL = 1e-6
#: Errors below this are round-off and are left out of order fits (methods may declare a
#: higher floor: ``MethodSpec.roundoff_floor``).
ROUNDOFF_FLOOR = 1e-9
#: Powers of ``h`` in the fitted bound: a polynomial with non-negative constants common to
#: all ranks. Up to ``h^4`` so that neither the superconvergence seen here (augmented BUG
#: order 2, midpoint BUG about 3) nor the order of the RK4 factor-ODE control can be mistaken
#: for a rank dependence: what fails coverage is an error that grows as ``sigma_r`` falls.
BOUND_H_POWERS = (1, 2, 3, 4)
#: Ranks of the error-bound study (``sigma_r = 2^-r``).
BOUND_RANKS = (4, 8)
#: Step sizes of the factor-ODE control in the error-bound study: small enough that every
#: run stays finite (``h < sigma_8``-scaled stability limit), so detection is by coverage.
BOUND_CONTROL_STEPS = (0.02, 0.01, 0.005)


class SylvesterRotation:
    """The V1 setup at size ``n`` (seed 1234)."""

    def __init__(self, n: int = 100, seed: int = 1234) -> None:
        g = np.random.default_rng(seed)
        R1 = g.random((n, n))
        R2 = g.random((n, n))
        self.n = n
        self.W1 = (R1 - R1.T) / 2
        self.W2 = (R2 - R2.T) / 2
        self.d = 2.0 ** -np.arange(1, n + 1)
        self.problem = lri.SylvesterODE(self.W1 + np.eye(n), self.W2)
        # W = Q diag(i lam) Q^H (skew-symmetric, normal): e^{tW} for many t at matmul cost.
        self._eig = [
            (lam, Q, np.linalg.inv(Q)) for lam, Q in map(np.linalg.eig, (self.W1, self.W2))
        ]
        self._E = Memo(lambda t: tuple(self.exp(k, t) for k in (0, 1)))

    def exp(self, k: int, t: float, cols: int | None = None) -> np.ndarray:
        """``e^{t W_{k+1}}`` (its first ``cols`` columns), from the eigendecomposition."""
        lam, Q, Qinv = self._eig[k]
        Qh = Qinv if cols is None else Qinv[:, :cols]
        return ((Q * np.exp(t * lam)) @ Qh).real

    def initial_value(self, r: int) -> lri.LowRankMatrix:
        """``D_r`` as ``U0 = V0 = I[:, :r]``, ``S0 = diag(2^-1, ..., 2^-r)``."""
        eye = np.eye(self.n)[:, :r]
        return lri.LowRankMatrix(eye, np.diag(self.d[:r]), eye)

    def dlra_reference(self, r: int):
        """``Y_r(t)``, exact for dynamical low-rank approximation at rank r."""

        def ref(t: float) -> np.ndarray:
            E1, E2 = self._E(t)
            return (E1[:, :r] * (np.exp(t) * self.d[:r])) @ E2[:, :r].T

        return ref

    def full_reference(self, t: float) -> np.ndarray:
        """``A(t)`` of the full problem from the full ``D``."""
        E1, E2 = self._E(t)
        return (E1 * (np.exp(t) * self.d)) @ E2.T

    def plateau(self, r: int, t: float = T) -> float:
        """``||A(t) - Y_r(t)|| = e^t ||d_{r+1:}||``."""
        return float(np.exp(t) * np.linalg.norm(self.d[r:]))


def _control_case(setup: SylvesterRotation, ranks: tuple[int, ...], h: float) -> StudyResult:
    cases = [
        RobustnessCase(
            f"r={r}", 2.0**-r, setup.problem, setup.initial_value(r), setup.dlra_reference(r)
        )
        for r in ranks
    ]
    with np.errstate(all="ignore"):  # the control is expected to overflow
        res = robustness_study(cases, FactorODERK4(), (0.0, T), h, problem_name=NAME)
    growth_failed = not res.passed
    res.checks = [
        at_least(
            "control detected",
            float(growth_failed),
            1.0,
            note="the non-robust factor ODEs must fail the robustness study",
        )
    ]
    return res


def _bound_family(setup: SylvesterRotation) -> list[BoundCase]:
    # Errors against the exact rank-r solution Y_r(t): delta = 0 and eps = 0 (tangent field),
    # so the h terms carry the whole error instead of the fixed distance of A(t) to rank r.
    return [
        BoundCase(f"r={k}", setup.problem, setup.initial_value(k), setup.dlra_reference(k), eps=0.0)
        for k in BOUND_RANKS
    ]


def _bound_control_case(setup: SylvesterRotation) -> StudyResult:
    """The non-robust factor ODEs must fail the bound coverage while every run is finite."""
    res = error_bound_study(
        _bound_family(setup),
        lambda c, h: FactorODERK4(),
        (0.0, T),
        BOUND_CONTROL_STEPS,
        h_powers=BOUND_H_POWERS,
        problem_name=NAME,
        method_name="FactorODERK4-control",
    )
    finite = float(np.all(np.isfinite(res.series["error"])))
    coverage = res.summary["coverage"]
    tol = res.checks[-1].expected
    res.checks = [
        at_least("runs finite", finite, 1.0, note="detection must not rely on a blow-up"),
        at_least(
            "control detected",
            float(coverage > tol),
            1.0,
            note=f"coverage {coverage:.3g} must exceed {tol:g}: errors grow as sigma_r falls",
        ),
    ]
    return res


def cases(methods, quick: bool) -> list[Case]:
    setup = SylvesterRotation()
    steps = STEPS_QUICK if quick else STEPS_FULL
    r = 8
    ranks = (4, 8, 16)
    span = (0.0, T)
    Y0 = setup.initial_value(r)
    ref = setup.dlra_reference(r)
    out: list[Case] = []
    for spec in methods:
        make = fixed_rank_builder(spec, r)
        if spec.exact_tangent:
            out.append(
                Case(
                    NAME,
                    spec.name,
                    "exactness",
                    lambda make=make: exactness_study(
                        setup.problem,
                        Y0,
                        make,
                        ref,
                        span,
                        steps,
                        tolerance=EXACT_TOL,
                        problem_name=NAME,
                        note="projector splitting is exact on A Y + Y B",
                    ),
                )
            )
        else:
            out.append(
                Case(
                    NAME,
                    spec.name,
                    "convergence",
                    lambda make=make, spec=spec: convergence_study(
                        setup.problem,
                        Y0,
                        make,
                        ref,
                        span,
                        steps,
                        expected_order=spec.order,
                        assert_order=spec.fixed_rank_order,
                        floor=max(ROUNDOFF_FLOOR, spec.roundoff_floor),
                        problem_name=NAME,
                    ),
                )
            )

        def robust(spec=spec) -> StudyResult:
            fam = [
                RobustnessCase(
                    f"r={k}",
                    2.0**-k,
                    setup.problem,
                    setup.initial_value(k),
                    setup.dlra_reference(k),
                )
                for k in ranks
            ]
            return robustness_study(
                fam,
                lambda c: fixed_rank_builder(spec, c.Y0.rank),
                span,
                0.05,
                per_case_method=True,
                floor=EXACT_TOL,
                problem_name=NAME,
            )

        out.append(Case(NAME, spec.name, "robustness", robust))

        def bound(spec=spec) -> StudyResult:
            return error_bound_study(
                _bound_family(setup),
                lambda c, h: fixed_rank_builder(spec, c.Y0.rank)(h),
                span,
                steps[:3],
                h_powers=BOUND_H_POWERS,
                problem_name=NAME,
            )

        if not spec.exact_tangent:  # exact here: the exactness study is the stronger check
            out.append(Case(NAME, spec.name, "error_bound", bound))
    out.append(
        Case(NAME, "FactorODERK4-control", "robustness", lambda: _control_case(setup, ranks, 0.05))
    )
    out.append(
        Case(NAME, "FactorODERK4-control", "error_bound", lambda: _bound_control_case(setup))
    )
    return out
