r"""Robustness study: the error must not grow as the smallest singular value shrinks.

The robust integrators (projector splitting, BUG and its variants) have error bounds
``c0 delta + c1 eps + c2 h`` whose constants do not depend on the singular values of the
approximation (Kieri, Lubich, Walach 2016; Ceruti, Lubich 2022, arXiv:2010.02022). Run at a
fixed step size on a family of cases whose ``sigma_min`` spans several decades -- e.g. the
Sylvester rotation at ranks 4, 8 and 16 -- the error must stay within a modest factor of the
error of the best-conditioned case. The Koch-Lubich factor ODEs
(:class:`~lowrank_integrators.verify.controls.FactorODERK4`) fail this study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._runs import MethodLike, final_error, method_label, rank_of, run
from .checks import StudyResult, at_least, at_most

__all__ = ["RobustnessCase", "robustness_study"]


@dataclass(frozen=True)
class RobustnessCase:
    """One member of a family: a problem whose approximation has smallest singular value
    ``sigma_min``, with its initial value and reference solution."""

    label: str
    sigma_min: float
    problem: Any
    Y0: Any
    reference: Callable[[float], Any]


def robustness_study(
    cases: Sequence[RobustnessCase],
    method: MethodLike | Callable[[RobustnessCase], MethodLike],
    t_span: tuple[float, float],
    h: float,
    *,
    growth_tolerance: float = 10.0,
    floor: float = 0.0,
    per_case_method: bool = False,
    problem_name: str = "problem",
    method_name: str | None = None,
) -> StudyResult:
    """Error at a fixed ``h`` across cases with shrinking ``sigma_min``.

    Parameters
    ----------
    cases : sequence of RobustnessCase
        At least two; sorted internally by decreasing ``sigma_min``.
    method : Integrator, callable ``h -> Integrator``, or (with ``per_case_method``) a
        callable ``case -> method`` (for instance to truncate to each case's rank).
    growth_tolerance : float, default 10
        The check is ``max error <= growth_tolerance * error(largest sigma_min) + floor``.
    floor : float, default 0
        Absolute slack for methods whose errors sit at round-off.

    Returns
    -------
    StudyResult
        ``series``: ``sigma_min``, ``error``, ``label``.
    """
    if len(cases) < 2:
        raise ValueError(f"cases must hold at least two RobustnessCase, got {len(cases)}")
    for c in cases:
        if not isinstance(c, RobustnessCase):
            raise TypeError(f"cases must be RobustnessCase instances, got {type(c).__name__}")
    if not growth_tolerance >= 1:
        raise ValueError(f"growth_tolerance must be >= 1, got {growth_tolerance}")
    ordered = sorted(cases, key=lambda c: -c.sigma_min)
    errors, ranks, ok = [], [], 0
    label = method_name
    for case in ordered:
        m = method(case) if per_case_method else method
        label = label or method_label(m)
        sol = run(case.problem, case.Y0, m, t_span, h)
        ok += sol.status == "success"
        errors.append(final_error(sol, case.reference))
        ranks.append(rank_of(sol))
    base = errors[0]
    worst = float(max(errors))
    checks = [
        at_least("runs succeeded", ok, len(ordered), note="no blow-up for small sigma_min"),
        at_most(
            "error growth",
            worst,
            growth_tolerance * base if math.isfinite(base) else math.inf,
            floor,
            note=f"max error <= {growth_tolerance:g} x error at sigma_min = "
            f"{ordered[0].sigma_min:.1e} (bounds independent of singular values)",
        ),
    ]
    return StudyResult(
        study="robustness",
        problem=problem_name,
        method=label or "method",
        checks=checks,
        summary={
            "error": worst,
            "growth": worst / base if base > 0 else math.nan,
            "final_rank": ranks[-1],
        },
        series={
            "sigma_min": np.asarray([c.sigma_min for c in ordered]),
            "error": errors,
            "label": [c.label for c in ordered],
        },
    )
