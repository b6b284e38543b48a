r"""Convergence studies: errors over a step-size sweep and the fitted order.

A method of order p has error ``e(h) ~ C h^p`` in its asymptotic regime, so the slope of
``log e`` against ``log h`` estimates p. :func:`fit_order` fits it by least squares and gives a
Student-t confidence interval; :func:`convergence_study` runs a method over a sweep, fits the
order on the asymptotic part of the sweep (above a round-off floor, before the error
stagnates, at least three points) and checks it against the declared order. Exactness (an error
at round-off level for every ``h``, e.g. projector splitting on Sylvester fields) is checked
by :func:`exactness_study`.

Halving ``h`` and fitting the log2 slope follows the order tests of diffrax
(``test_ode_order``) and the step-size sweeps of Ceruti and Lubich (2022), arXiv:2010.02022.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._runs import MethodLike, final_error, method_label, rank_of, run, steps_of
from .checks import StudyResult, at_least, at_most, informational

__all__ = [
    "MIN_FIT_POINTS",
    "STAGNATION_ORDER",
    "OrderFit",
    "asymptotic_prefix",
    "convergence_study",
    "exactness_study",
    "fit_order",
]


@dataclass(frozen=True)
class OrderFit:
    """A fitted convergence order ``log e = order * log h + intercept``.

    Attributes
    ----------
    order : float
        The fitted slope (``nan`` with fewer than two usable points).
    intercept : float
        ``log`` of the error constant.
    ci_low, ci_high : float
        Confidence interval of the slope (infinite with exactly two points).
    confidence : float
        Level of the interval.
    n_points : int
        Points used (those above the floor with finite positive error).
    """

    order: float
    intercept: float
    ci_low: float
    ci_high: float
    confidence: float
    n_points: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "intercept": self.intercept,
            "ci": [self.ci_low, self.ci_high],
            "confidence": self.confidence,
            "n_points": self.n_points,
        }


def fit_order(
    h: Sequence[float], errors: Sequence[float], *, confidence: float = 0.95, floor: float = 0.0
) -> OrderFit:
    """Least-squares slope of ``log(errors)`` against ``log(h)`` with a confidence interval.

    Parameters
    ----------
    h, errors : sequences of float
        Step sizes and errors of the same length.
    confidence : float, default 0.95
        Level of the two-sided Student-t interval for the slope.
    floor : float, default 0
        Errors at or below ``floor`` (round-off) are left out of the fit.

    Returns
    -------
    OrderFit
    """
    hs = np.asarray(h, dtype=float)
    es = np.asarray(errors, dtype=float)
    if hs.shape != es.shape or hs.ndim != 1:
        raise ValueError(f"h and errors must be 1-D of equal length, got {hs.shape}, {es.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    keep = np.isfinite(es) & (es > floor) & (es > 0) & np.isfinite(hs) & (hs > 0)
    x, y = np.log(hs[keep]), np.log(es[keep])
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        return OrderFit(math.nan, math.nan, math.nan, math.nan, confidence, n)
    X = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    slope, intercept = float(coef[0]), float(coef[1])
    if n == 2:
        return OrderFit(slope, intercept, -math.inf, math.inf, confidence, n)
    from scipy import stats

    resid = y - X @ coef
    s2 = float(resid @ resid) / (n - 2)
    se = math.sqrt(s2 / float(np.sum((x - x.mean()) ** 2)))
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 2))
    return OrderFit(slope, intercept, slope - q * se, slope + q * se, confidence, n)


#: Fewest points an asserted order is fitted on: two points give a slope but no error
#: estimate (the Student-t interval is unbounded), so a single bad point goes unnoticed.
MIN_FIT_POINTS = 3

#: Stagnation rule: the fit keeps the sweep (largest ``h`` first) up to the first error that
#: fails to fall by at least ``(h_prev / h) ** STAGNATION_ORDER``, i.e. whose local order is
#: below this value; that error and all finer ones are at the method's floor.
STAGNATION_ORDER = 0.5


def asymptotic_prefix(
    h: Sequence[float], errors: Sequence[float], *, min_order: float = STAGNATION_ORDER
) -> int:
    """Number of leading points (largest ``h`` first) before the error stagnates.

    Parameters
    ----------
    h, errors : sequences of float
        Step sizes in decreasing order and their errors.
    min_order : float, default ``STAGNATION_ORDER``
        A point ends the prefix when ``log(e_prev / e) / log(h_prev / h) < min_order``
        (or its error is not finite and positive); it and all later points are dropped.

    Returns
    -------
    int
        Length of the prefix, at least 1 when the first error is finite and positive.
    """
    hs = np.asarray(h, dtype=float)
    es = np.asarray(errors, dtype=float)
    if hs.size == 0 or not (np.isfinite(es[0]) and es[0] > 0):
        return 0
    k = 1
    while k < hs.size:
        e_prev, e = es[k - 1], es[k]
        if not (np.isfinite(e) and e > 0):
            break
        if math.log(e_prev / e) < min_order * math.log(hs[k - 1] / hs[k]):
            break
        k += 1
    return k


def convergence_study(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    reference: Callable[[float], Any],
    t_span: tuple[float, float],
    steps: Sequence[float],
    *,
    expected_order: float | None = None,
    order_tolerance: float = 0.25,
    floor: float = 0.0,
    assert_order: bool = True,
    exact: bool = False,
    max_order: float | None = None,
    problem_name: str = "problem",
    method_name: str | None = None,
) -> StudyResult:
    """Errors at the final time over a sweep of step sizes, with the fitted order.

    The order is fitted on the asymptotic part of the sweep: errors at or below ``floor``
    are dropped, and so is every error from the first one that stagnates on
    (:func:`asymptotic_prefix`, local order below ``STAGNATION_ORDER``). An asserted
    order needs at least ``MIN_FIT_POINTS`` fitted points; fewer fails the check.

    Parameters
    ----------
    problem, Y0 : the ODE and its low-rank initial value.
    method : Integrator or callable ``h -> Integrator``
        A factory lets substeps be refined with ``h``.
    reference : callable
        ``reference(t)``: the exact (or independently computed) solution the errors are
        measured against, as an array.
    t_span : (float, float)
    steps : sequence of float
        At least two step sizes (three for an asserted order).
    expected_order : float, optional
        The order theory declares; default ``method.order`` when ``method`` is an integrator.
    order_tolerance : float, default 0.25
        The check is ``observed order >= expected_order - order_tolerance``.
    floor : float, default 0
        Round-off floor: errors at or below it are left out of the fit.
    assert_order : bool, default True
        ``False`` reports the order without asserting it (stiff problems, methods whose
        order is not established on the problem).
    exact : bool, default False
        Theory declares the method exact on this problem (the caller says so, e.g. from
        ``MethodSpec.exact_tangent``): the check is then ``max error <= floor``. Without it,
        a sweep with too few errors above the floor fails.
    max_order : float, optional
        Also require ``observed order <= max_order``: used where theory says a method is
        *not* of higher order on the problem, so that the problem separates the orders.

    Returns
    -------
    StudyResult
        ``checks``: every run succeeded; the order. ``series``: ``h``, ``error``, ``fitted``
        (whether each point entered the fit).
    """
    hs = steps_of(steps)
    if expected_order is None:
        expected_order = getattr(method, "order", None)
    if exact and not floor > 0:
        raise ValueError("exact=True needs a positive floor (the substep and round-off level)")
    errors, ranks, ok = [], [], 0
    for h in hs:
        sol = run(problem, Y0, method, t_span, float(h))
        ok += sol.status == "success"
        errors.append(final_error(sol, reference))
        ranks.append(rank_of(sol))
    es = np.asarray(errors, dtype=float)
    above = np.isfinite(es) & (es > floor)
    n_pre = asymptotic_prefix(hs[above], es[above])
    fitted = np.zeros(hs.size, dtype=bool)
    fitted[np.flatnonzero(above)[:n_pre]] = True
    fit = fit_order(hs[fitted], es[fitted])
    checks = [at_least("runs succeeded", ok, len(hs), note="no step failed or went non-finite")]
    if expected_order is None or not assert_order:
        checks.append(informational("observed order", fit.order, "no order asserted"))
    elif exact:
        checks.append(
            at_most("error at round-off floor", max(errors), floor, note="exact by theory")
        )
    else:
        checks.append(
            at_least(
                "fitted points",
                fit.n_points,
                MIN_FIT_POINTS,
                note="errors above the floor, before stagnation",
            )
        )
        checks.append(
            at_least(
                "order",
                fit.order,
                float(expected_order),
                order_tolerance,
                note=f"declared order {expected_order:g}",
            )
        )
        if max_order is not None:
            checks.append(
                at_most(
                    "order not higher",
                    fit.order,
                    float(max_order),
                    note="theory gives no higher order here: the problem separates orders",
                )
            )
    return StudyResult(
        study="convergence",
        problem=problem_name,
        method=method_name or method_label(method),
        checks=checks,
        summary={
            "error": errors[-1],
            "observed_order": fit.order,
            "order_ci": [fit.ci_low, fit.ci_high],
            "expected_order": expected_order if assert_order else None,
            "final_rank": ranks[-1],
        },
        series={
            "h": hs,
            "error": errors,
            "rank": ranks,
            "floor": floor,
            "fitted": fitted.tolist(),
        },
    )


def exactness_study(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    reference: Callable[[float], Any],
    t_span: tuple[float, float],
    steps: Sequence[float],
    *,
    tolerance: float,
    problem_name: str = "problem",
    method_name: str | None = None,
    note: str = "exact for every h",
) -> StudyResult:
    """Check that the error stays below ``tolerance`` for every step size of a sweep.

    Used where a method is exact by theory: projector splitting on ``F = A Y + Y B``
    (Lubich-Oseledets 2014), projector splitting and BUG on rank-r explicit data.
    The tolerance accounts for substep and round-off error only.
    """
    hs = steps_of(steps)
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")
    errors, ranks = [], []
    for h in hs:
        sol = run(problem, Y0, method, t_span, float(h))
        errors.append(final_error(sol, reference))
        ranks.append(rank_of(sol))
    worst = float(max(errors))
    return StudyResult(
        study="exactness",
        problem=problem_name,
        method=method_name or method_label(method),
        checks=[at_most("max error over h", worst, float(tolerance), note=note)],
        summary={"error": worst, "final_rank": ranks[-1]},
        series={"h": hs, "error": errors, "rank": ranks},
    )
