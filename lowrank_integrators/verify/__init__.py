"""Verification toolkit: run the studies of the validation suite on your own problem and method.

Every study returns a :class:`StudyResult` holding named :class:`Check` records (expected
value from theory, measured value, tolerance, pass/fail), headline numbers and the data
series that :func:`write_report` plots.

* :func:`convergence_study`, :func:`exactness_study`, :func:`fit_order`,
  :func:`asymptotic_prefix` -- step-size sweeps.
* :func:`robustness_study` -- error as the smallest singular value shrinks.
* :func:`rank_adaptivity_study`, :func:`tolerance_growth_study` -- rank decisions, error
  versus tolerance, the ``n theta`` growth with a fixed absolute tolerance.
* :func:`conservation_study`, :func:`drift_study` -- norm and energy drift.
* :func:`descent_study`, :func:`descent_check` -- gradient flows.
* :func:`error_bound_study`, :func:`fit_error_bound` -- ``c0 delta + c1 eps + c2 h + c3 n theta``.

Examples
--------
>>> import numpy as np
>>> import lowrank_integrators as lri
>>> from lowrank_integrators import verify
>>> rng = np.random.default_rng(0)
>>> n = 30
>>> W = rng.standard_normal((n, n)); W = (W - W.T) / (2 * np.sqrt(n))
>>> from scipy.linalg import expm
>>> Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((n, 4)) @ rng.standard_normal((4, n)),
...                                   rank=4)
>>> ref = lambda t: expm(t * W) @ Y0.to_dense() @ expm(t * W).T
>>> res = verify.convergence_study(lri.SylvesterODE(W, W), Y0, lri.BUG(), ref, (0.0, 1.0),
...                                [0.1, 0.05, 0.025])
>>> res.passed
True
"""

from .checks import Check, StudyResult, at_least, at_most, informational
from .conservation import conservation_study, drift_study, relative_drift
from .convergence import (
    OrderFit,
    asymptotic_prefix,
    convergence_study,
    exactness_study,
    fit_order,
)
from .descent import descent_check, descent_study, largest_increase
from .error_bound import BoundCase, BoundFit, error_bound_study, fit_error_bound
from .rank_adaptivity import rank_adaptivity_study, tolerance_growth_study, truncation_checks
from .report import write_report
from .robustness import RobustnessCase, robustness_study

__all__ = [
    "BoundCase",
    "BoundFit",
    "Check",
    "OrderFit",
    "RobustnessCase",
    "StudyResult",
    "asymptotic_prefix",
    "at_least",
    "at_most",
    "conservation_study",
    "convergence_study",
    "descent_check",
    "descent_study",
    "drift_study",
    "error_bound_study",
    "exactness_study",
    "fit_error_bound",
    "fit_order",
    "informational",
    "largest_increase",
    "rank_adaptivity_study",
    "relative_drift",
    "robustness_study",
    "tolerance_growth_study",
    "truncation_checks",
    "write_report",
]
