r"""Rank-adaptivity studies: rank versus time, error versus tolerance, accumulation of ``n theta``.

The truncation rule of Ceruti, Kusch, Lubich (2022), arXiv:2104.05247, keeps the smallest
rank whose discarded Frobenius tail is at most ``tau``; the augmented BUG can at most double
the rank per step (the midpoint BUG quadruple it). Its error bound
``c0 delta + c1 eps + c2 h + c3 n theta`` has a term that *grows* as ``h`` shrinks when the
tolerance ``theta`` is fixed and absolute: :func:`tolerance_growth_study` measures that growth,
:func:`rank_adaptivity_study` checks the rank decisions and that a smaller tolerance gives a
smaller error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._runs import final_error, run, steps_of
from .checks import Check, StudyResult, at_least, at_most, informational

__all__ = ["rank_adaptivity_study", "tolerance_growth_study", "truncation_checks"]


def truncation_checks(
    step_infos: Sequence[Any], *, rmax: int | None = None, max_growth: float = 2.0
) -> list[Check]:
    """Checks on the recorded rank decisions of one or more runs.

    * every discarded tail is ``<= tau`` (except where the rank was clamped at ``rmax``);
    * the rank never exceeds ``rmax``;
    * the rank grows at most by the factor ``max_growth`` per step (not checked when
      ``max_growth`` is infinite, e.g. for methods with repeated step rejection).
    """
    worst_excess, worst_growth, worst_rank = -math.inf, 0.0, 0
    for info in step_infos:
        worst_rank = max(worst_rank, int(info.rank_after))
        if info.rank_before > 0:
            worst_growth = max(worst_growth, info.rank_after / info.rank_before)
        rec = info.truncation
        if rec is None or not math.isfinite(rec.tolerance):
            continue
        if rmax is not None and rec.rank_after >= rmax:
            continue
        worst_excess = max(worst_excess, rec.tail - rec.tolerance * (1 + 1e-12))
    checks = [
        at_most(
            "tail - tau",
            worst_excess if worst_excess > -math.inf else 0.0,
            0.0,
            note="discarded tail within the tolerance (CKL22 rule)",
        ),
    ]
    if math.isfinite(max_growth):
        checks.append(
            at_most(
                "rank growth per step",
                worst_growth,
                float(max_growth),
                note=f"rank at most x{max_growth:g} per step",
            )
        )
    if rmax is not None:
        checks.append(at_most("max rank", worst_rank, float(rmax), note="rank <= rmax"))
    return checks


def rank_adaptivity_study(
    problem: Any,
    Y0: Any,
    make_method: Callable[[float, float], Any],
    reference: Callable[[float], Any],
    t_span: tuple[float, float],
    h: float,
    thetas: Sequence[float],
    *,
    rmax: int | None = None,
    max_growth: float = 2.0,
    error_floor: float = 0.0,
    problem_name: str = "problem",
    method_name: str = "method",
) -> StudyResult:
    """Rank versus time and error versus tolerance at a fixed step.

    Parameters
    ----------
    make_method : callable ``(theta, h) -> Integrator``
    thetas : sequence of float
        At least two tolerances.
    rmax, max_growth : rank clamps the method was built with and its growth factor per step.
    error_floor : float
        Absolute slack of the check ``error(smallest theta) <= error(largest theta)``.

    Returns
    -------
    StudyResult
        ``series``: ``theta``, ``error``, ``final_rank`` and, for the smallest tolerance,
        ``t`` and ``rank``.
    """
    ths = np.sort(np.asarray([float(x) for x in thetas]))[::-1]
    if ths.size < 2 or np.any(ths <= 0):
        raise ValueError(f"thetas must hold at least two positive tolerances, got {thetas!r}")
    errors, finals, infos = [], [], []
    t_last, r_last = [], []
    ok = 0
    for theta in ths:
        sol = run(problem, Y0, make_method(float(theta), h), t_span, h)
        ok += sol.status == "success"
        errors.append(final_error(sol, reference))
        finals.append(int(sol.ranks[-1]))
        infos.extend(sol.step_info)
        t_last, r_last = list(sol.t), [int(r) for r in sol.ranks]
    checks = [at_least("runs succeeded", ok, len(ths))]
    checks += truncation_checks(infos, rmax=rmax, max_growth=max_growth)
    checks.append(
        at_most(
            "error at smallest theta",
            errors[-1],
            errors[0],
            error_floor,
            note=f"<= error at theta = {ths[0]:.0e}",
        )
    )
    return StudyResult(
        study="rank_adaptivity",
        problem=problem_name,
        method=method_name,
        checks=checks,
        summary={"error": errors[-1], "final_rank": finals[-1]},
        series={"theta": ths, "error": errors, "final_rank": finals, "t": t_last, "rank": r_last},
    )


def tolerance_growth_study(
    problem: Any,
    Y0: Any,
    make_method: Callable[[float], Any],
    reference: Callable[[float], Any],
    t_span: tuple[float, float],
    steps: Sequence[float],
    *,
    rmax: int | None = None,
    max_growth: float = 2.0,
    problem_name: str = "problem",
    method_name: str = "method",
) -> StudyResult:
    """Error over a sweep of ``h`` with a fixed absolute tolerance (the ``n theta`` term).

    The growth ``error(h_min) / error(h_max)`` is reported, not asserted: it is the observed
    consequence of the ``c3 n theta`` term (Ceruti, Kusch, Lubich 2022). The rank decisions of
    every run are checked with :func:`truncation_checks`.
    """
    hs = steps_of(steps)
    errors, finals, infos, ok = [], [], [], 0
    for h in hs:
        sol = run(problem, Y0, make_method(float(h)), t_span, float(h))
        ok += sol.status == "success"
        errors.append(final_error(sol, reference))
        finals.append(int(sol.ranks[-1]))
        infos.extend(sol.step_info)
    checks = [at_least("runs succeeded", ok, len(hs))]
    checks += truncation_checks(infos, rmax=rmax, max_growth=max_growth)
    growth = errors[-1] / errors[0] if errors[0] > 0 else math.nan
    checks.append(
        informational("error growth as h shrinks", growth, "n*theta term of the bound (CKL22)")
    )
    return StudyResult(
        study="tolerance_growth",
        problem=problem_name,
        method=method_name,
        checks=checks,
        summary={"error": errors[-1], "growth": growth, "final_rank": finals[-1]},
        series={"h": hs, "error": errors, "final_rank": finals},
    )
