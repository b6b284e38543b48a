r"""Conservation studies: drift of the norm, an energy, or any invariant along a run.

With exact substeps, every substep of projector splitting conserves ``||Y||`` when
``Re <Y, F(t, Y)> = 0`` (Schrodinger-type problems), so the method conserves the norm (derived
from Lubich, Oseledets 2014, arXiv:1301.1058). The rank-adaptive BUG conserves norm and
energy up to the truncation tolerance (Ceruti, Kusch, Lubich 2022, arXiv:2104.05247): a
truncation that discards a tail ``tau_k`` changes ``||Y||`` by at most ``tau_k``. The
fixed-rank BUG does not conserve the norm; its drift is ``O(h)`` (Ceruti, Lubich 2022,
arXiv:2010.02022), which :func:`drift_study` checks through the order of the drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._runs import MethodLike, method_label, run, steps_of
from .checks import Check, StudyResult, at_least, at_most, informational
from .convergence import fit_order

__all__ = ["conservation_study", "drift_study", "relative_drift"]

Quantity = Callable[[float, Any], float]


def relative_drift(values: Sequence[float]) -> np.ndarray:
    """``|q_k - q_0| / |q_0|`` (absolute drift when ``q_0 = 0``)."""
    q = np.asarray(values, dtype=float)
    if q.ndim != 1 or q.size == 0:
        raise ValueError("values must be a non-empty 1-D sequence")
    scale = abs(q[0]) if q[0] != 0 else 1.0
    return np.abs(q - q[0]) / scale


def _track(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    t_span: tuple[float, float],
    h: float,
    quantities: Mapping[str, Quantity],
) -> tuple[Any, dict[str, list[float]], list[float], float]:
    values = {name: [float(q(float(t_span[0]), Y0))] for name, q in quantities.items()}
    times = [float(t_span[0])]
    tails = [0.0]

    def record(t: float, Y: Any, info: Any) -> None:
        times.append(float(t))
        for name, q in quantities.items():
            values[name].append(float(q(t, Y)))
        rec = getattr(info, "truncation", None)
        tails.append(tails[-1] + (float(rec.tail) if rec is not None else 0.0))

    sol = run(problem, Y0, method, t_span, h, callback=record)
    return sol, values, times, tails


def conservation_study(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    t_span: tuple[float, float],
    h: float,
    quantities: Mapping[str, Quantity],
    *,
    tolerance: float | Mapping[str, float] = 1e-8,
    conserved: bool = True,
    truncation_weight: Mapping[str, float] | None = None,
    problem_name: str = "problem",
    method_name: str | None = None,
) -> StudyResult:
    """Relative drift of invariants along one run.

    Parameters
    ----------
    quantities : mapping name -> callable ``(t, Y) -> float``
        E.g. ``{"norm": lambda t, Y: Y.norm()}``.
    tolerance : float or mapping name -> float
        Allowed relative drift from substep and round-off error.
    conserved : bool, default True
        ``True``: theory says the method conserves the quantities; the check is
        ``max drift <= tolerance + weight * (sum of discarded tails) / |q_0|``.
        ``False``: drifts are reported without assertion (see :func:`drift_study`).
    truncation_weight : mapping name -> float, optional
        Multiplier of the accumulated truncation tail in the allowance of each quantity
        (default 1 for ``"norm"``, 0 otherwise: a discarded tail ``tau`` changes the norm by
        at most ``tau``).

    Returns
    -------
    StudyResult
        ``series``: ``t`` and ``drift_<name>`` per quantity.
    """
    if not quantities:
        raise ValueError("quantities must name at least one invariant")
    weights = {"norm": 1.0} if truncation_weight is None else dict(truncation_weight)
    sol, values, times, tails = _track(problem, Y0, method, t_span, h, quantities)
    checks: list[Check] = [
        at_least("run succeeded", float(sol.status == "success"), 1.0, note=sol.message)
    ]
    series: dict[str, Any] = {"t": times}
    summary: dict[str, Any] = {"final_rank": int(sol.ranks[-1]) if sol.ranks else None}
    for name in quantities:
        drift = relative_drift(values[name])
        series[f"drift_{name}"] = drift
        worst = float(np.max(drift)) if sol.status == "success" else math.inf
        summary[f"drift_{name}"] = worst
        if conserved:
            tol = tolerance[name] if isinstance(tolerance, Mapping) else float(tolerance)
            q0 = abs(values[name][0]) or 1.0
            allowance = weights.get(name, 0.0) * tails[-1] / q0
            checks.append(
                at_most(
                    f"{name} drift",
                    worst,
                    float(allowance),
                    float(tol),
                    note="conserved (up to substep error and discarded tails)",
                )
            )
        else:
            checks.append(informational(f"{name} drift", worst, "not conserved by this method"))
    return StudyResult(
        study="conservation",
        problem=problem_name,
        method=method_name or method_label(method),
        checks=checks,
        summary=summary,
        series=series,
    )


def drift_study(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    t_span: tuple[float, float],
    steps: Sequence[float],
    quantity: Quantity,
    *,
    name: str = "norm",
    expected_order: float = 1.0,
    order_tolerance: float = 0.25,
    problem_name: str = "problem",
    method_name: str | None = None,
) -> StudyResult:
    """Final relative drift of a quantity over a sweep of ``h``; checks it vanishes at a rate.

    For a first-order method that does not conserve an invariant the drift is ``O(h)``:
    the fitted order of the drift must be at least ``expected_order - order_tolerance``.
    """
    hs = steps_of(steps)
    drifts = []
    for h in hs:
        sol, values, _, _ = _track(problem, Y0, method, t_span, float(h), {name: quantity})
        drifts.append(
            float(relative_drift(values[name])[-1]) if sol.status == "success" else math.inf
        )
    fit = fit_order(hs, drifts)
    return StudyResult(
        study="drift",
        problem=problem_name,
        method=method_name or method_label(method),
        checks=[
            at_least(
                f"{name} drift order",
                fit.order,
                expected_order,
                order_tolerance,
                note=f"drift O(h^{expected_order:g}) vanishes as h -> 0",
            )
        ],
        summary={
            f"drift_{name}": drifts[-1],
            "observed_order": fit.order,
            "expected_order": expected_order,
        },
        series={"h": hs, f"drift_{name}": drifts},
    )
