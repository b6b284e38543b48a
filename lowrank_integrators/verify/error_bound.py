r"""Error-bound study: fit ``error <= c0 delta + c1 eps + c2 h + c3 n theta`` across runs.

The robust first-order bounds (Kieri, Lubich, Walach 2016; Ceruti, Lubich 2022,
arXiv:2010.02022; Ceruti, Kusch, Lubich 2022, arXiv:2104.05247) read
``||Y_n - A(t_n)|| <= c0 delta + c1 eps + c2 h (+ c3 n theta)`` with ``delta`` the initial
error, ``eps`` the normal component ``||(I - P(Y)) F(t, Y)||`` along the run and constants that
do **not** depend on the singular values of ``Y``. This study measures ``delta``, estimates
``eps`` from states along each run (:func:`~lowrank_integrators.diagnostics.normal_component`,
which forms ``F`` densely: small problems only), fits non-negative constants that are common
to all runs (non-negative least squares on relative residuals) and checks that the fitted bound
covers every run within a factor. A non-robust method, whose error explodes on the runs with
small singular values, cannot be covered by common constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..diagnostics import normal_component
from ._runs import dense, final_error, frobenius, run, steps_of
from .checks import StudyResult, at_least, at_most

__all__ = ["BoundCase", "BoundFit", "error_bound_study", "fit_error_bound"]

TERMS = ("delta", "eps", "h", "n_theta")


def _terms(h_powers: tuple[int, ...]) -> tuple[str, ...]:
    hs = tuple("h" if p == 1 else f"h^{p}" for p in h_powers)
    return ("delta", "eps", *hs, "n_theta")


@dataclass(frozen=True)
class BoundCase:
    """A problem, its initial value and the exact solution the errors are measured against.

    Attributes
    ----------
    label : str
    problem, Y0 : the ODE and its low-rank initial value.
    reference : callable ``t -> array``
        The exact solution: the full solution ``A(t)``, or the rank-r dynamical low-rank
        solution where it is known exactly (then ``delta = 0`` and the ``h`` term is not
        hidden under the fixed distance of ``A(t)`` to rank r).
    eps : float, optional
        The normal component ``eps`` when theory gives it (0 for a field tangent to the
        rank-r manifold). Default: estimated from states along each run, which counts the
        method's own departure from the manifold (e.g. the loss of orthonormality of a
        factor ODE solver) as ``eps`` and can hide its errors.
    """

    label: str
    problem: Any
    Y0: Any
    reference: Callable[[float], Any]
    eps: float | None = None


@dataclass(frozen=True)
class BoundFit:
    """Non-negative constants of ``c0 delta + c1 eps + c2 h + c3 n theta`` and the coverage.

    ``coverage`` is ``max_i error_i / bound_i``: at most about 1 when one set of constants
    explains every run.
    """

    constants: dict[str, float]
    coverage: float


def fit_error_bound(
    rows: np.ndarray, errors: np.ndarray, terms: tuple[str, ...] = TERMS
) -> BoundFit:
    """Fit non-negative constants to ``errors ~ rows @ c`` in relative terms.

    Parameters
    ----------
    rows : array, shape (k, len(terms))
        ``[delta, eps, h, n theta]`` per run (the default terms).
    errors : array, shape (k,)
    terms : tuple of str
        Names of the columns.
    """
    from scipy.optimize import nnls

    A = np.asarray(rows, dtype=float)
    e = np.asarray(errors, dtype=float)
    if A.ndim != 2 or A.shape[1] != len(terms) or A.shape[0] != e.shape[0]:
        raise ValueError(f"rows must have shape (k, {len(terms)}) matching errors")
    if not np.all(np.isfinite(e)) or not np.all(np.isfinite(A)):
        return BoundFit({t: math.nan for t in terms}, math.inf)
    pos = e > 0
    # Relative residuals weigh the small errors of fine steps as much as the large ones.
    c, _ = nnls(A[pos] / e[pos, None], np.ones(int(pos.sum())))
    bound = A @ c
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(e > 0, e / bound, 0.0)
    coverage = float(np.max(ratio)) if ratio.size else math.nan
    return BoundFit({t: float(v) for t, v in zip(terms, c, strict=True)}, coverage)


def _eps_along(problem: Any, states: Sequence[Any], times: Sequence[float], samples: int) -> float:
    idx = np.unique(np.linspace(0, len(states) - 1, min(samples, len(states))).astype(int))
    return max(normal_component(problem, float(times[i]), states[i]) for i in idx)


def error_bound_study(
    cases: Sequence[BoundCase],
    make_method: Callable[[BoundCase, float], Any],
    t_span: tuple[float, float],
    steps: Sequence[float],
    *,
    coverage_tolerance: float = 3.0,
    eps_samples: int = 11,
    eps_floor: float = 1e-10,
    delta_rtol: float = 1e-12,
    h_powers: tuple[int, ...] = (1,),
    problem_name: str = "problem",
    method_name: str = "method",
) -> StudyResult:
    """Fit the robust error bound over cases x step sizes and check that it covers all runs.

    Parameters
    ----------
    cases : sequence of BoundCase
        Typically one problem at several ranks (so ``delta`` and ``sigma_min`` vary).
    make_method : callable ``(case, h) -> Integrator``
    steps : sequence of float
    coverage_tolerance : float, default 3
        The check is ``max_i error_i / bound_i <= coverage_tolerance``.
    eps_samples : int
        States per run at which the normal component is evaluated.
    eps_floor : float, default 1e-10
        Estimates of ``eps`` at or below this are round-off of a tangent field and count as 0.
    delta_rtol : float, default 1e-12
        An initial error ``delta <= delta_rtol * ||A(t0)||`` is round-off of an exact start
        and counts as 0 (otherwise a tiny ``delta`` with a huge fitted ``c0`` could explain
        any error).
    h_powers : tuple of int, default (1,)
        Powers of ``h`` in the bound: ``(1,)`` for the first-order bounds, ``(1, 2)`` to let a
        second-order method's ``c2' h^2`` term explain its errors.

    Returns
    -------
    StudyResult
        ``summary``: fitted constants ``c_delta``, ``c_eps``, ``c_h``, ``c_n_theta`` and the
        coverage; ``series``: the table of runs.
    """
    if len(cases) < 1:
        raise ValueError("cases must hold at least one BoundCase")
    hs = steps_of(steps)
    rows, errs, labels, ok = [], [], [], 0
    for case in cases:
        A0 = dense(case.reference(float(t_span[0])))
        delta = frobenius(dense(case.Y0) - A0)
        delta = 0.0 if delta <= delta_rtol * frobenius(A0) else delta
        for h in hs:
            sol = run(
                case.problem,
                case.Y0,
                make_method(case, float(h)),
                t_span,
                float(h),
                save_states=True,
            )
            ok += sol.status == "success"
            err = final_error(sol, case.reference)
            if case.eps is not None:
                eps = float(case.eps)
            else:
                eps = (
                    _eps_along(case.problem, sol.states, sol.t, eps_samples) if sol.states else 0.0
                )
                eps = 0.0 if eps <= eps_floor else eps
            n_theta = sum(
                rec.tolerance
                for rec in (info.truncation for info in sol.step_info)
                if rec is not None and math.isfinite(rec.tolerance)
            )
            rows.append([delta, eps, *(float(h) ** p for p in h_powers), n_theta])
            errs.append(err)
            labels.append(f"{case.label} h={h:g}")
    terms = _terms(tuple(h_powers))
    fit = fit_error_bound(np.asarray(rows), np.asarray(errs), terms)
    n_runs = len(cases) * len(hs)
    checks = [
        at_least("runs succeeded", ok, n_runs),
        at_most(
            "bound coverage",
            fit.coverage,
            float(coverage_tolerance),
            note="one set of constants (independent of h, theta, sigma) covers every run",
        ),
    ]
    table = np.asarray(rows)
    return StudyResult(
        study="error_bound",
        problem=problem_name,
        method=method_name,
        checks=checks,
        summary={
            **{f"c_{k}": v for k, v in fit.constants.items()},
            "coverage": fit.coverage,
            "error": float(max(errs)),
        },
        series={
            "label": labels,
            "delta": table[:, 0],
            "eps": table[:, 1],
            "h": hs[np.tile(np.arange(hs.size), len(cases))],
            "n_theta": table[:, -1],
            "error": errs,
        },
    )
