"""Named checks and the result of a study.

Every study of :mod:`lowrank_integrators.verify` ends in a list of :class:`Check` records:
what theory expects (a declared order, exactness, monotonicity, conservation, a bound), what
was measured, the tolerance allowed and whether the check passed. A :class:`StudyResult`
bundles the checks with a few summary numbers and the data series the report plots.

Checks are *required* by default. Informational checks (``required=False``) record
behaviour the literature observed but does not prove (for instance on stiff problems);
they are reported but never fail a suite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SMOKE_CHECKS", "Check", "StudyResult", "at_least", "at_most", "informational"]

#: Names of required checks that only say a study ran (no step failed, the study completed);
#: they can fail a study but are no evidence for a property on their own.
SMOKE_CHECKS = frozenset({"runs succeeded", "run succeeded", "completed"})

_RELATIONS = (">=", "<=", "info")


@dataclass(frozen=True)
class Check:
    """One named expectation and its outcome.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"order"`` or ``"norm drift"``.
    relation : {">=", "<=", "info"}
        How ``measured`` is compared with ``expected``.
    expected : float
        The value theory gives (a declared order, a bound, zero for exactness).
    measured : float
        What the study measured. A non-finite measurement never passes.
    tolerance : float
        Allowed deviation: ``measured >= expected - tolerance`` or
        ``measured <= expected + tolerance``.
    passed : bool
        The outcome (always ``True`` for informational checks).
    required : bool
        Whether a failure fails the study.
    note : str
        Where the expectation comes from, in a few words.
    """

    name: str
    relation: str
    expected: float
    measured: float
    tolerance: float
    passed: bool
    required: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        if self.relation not in _RELATIONS:
            raise ValueError(f"relation must be one of {_RELATIONS}, got {self.relation!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become strings)."""
        return {
            "name": self.name,
            "relation": self.relation,
            "expected": _json_number(self.expected),
            "measured": _json_number(self.measured),
            "tolerance": _json_number(self.tolerance),
            "passed": bool(self.passed),
            "required": bool(self.required),
            "note": self.note,
        }

    def describe(self) -> str:
        """One line: ``name: measured relation expected (+/- tol) -> PASS/FAIL``."""
        verdict = "info" if not self.required else ("PASS" if self.passed else "FAIL")
        if self.relation == "info":
            return f"{self.name}: {self.measured:.3g} [{verdict}] {self.note}".rstrip()
        sign = "-" if self.relation == ">=" else "+"
        return (
            f"{self.name}: {self.measured:.3g} {self.relation} {self.expected:.3g} "
            f"{sign} {self.tolerance:.2g} [{verdict}] {self.note}"
        ).rstrip()


def at_least(
    name: str,
    measured: float,
    expected: float,
    tolerance: float = 0.0,
    *,
    required: bool = True,
    note: str = "",
) -> Check:
    """A check ``measured >= expected - tolerance``."""
    measured, expected, tolerance = _floats(measured, expected, tolerance)
    ok = math.isfinite(measured) and measured >= expected - tolerance
    return Check(name, ">=", expected, measured, tolerance, ok or not required, required, note)


def at_most(
    name: str,
    measured: float,
    expected: float,
    tolerance: float = 0.0,
    *,
    required: bool = True,
    note: str = "",
) -> Check:
    """A check ``measured <= expected + tolerance``."""
    measured, expected, tolerance = _floats(measured, expected, tolerance)
    ok = math.isfinite(measured) and measured <= expected + tolerance
    return Check(name, "<=", expected, measured, tolerance, ok or not required, required, note)


def informational(name: str, measured: float, note: str = "") -> Check:
    """A measurement reported without an assertion (e.g. orders on stiff problems)."""
    return Check(name, "info", math.nan, float(measured), math.nan, True, False, note)


@dataclass
class StudyResult:
    """The outcome of one study of one method on one problem.

    Attributes
    ----------
    study : str
        Kind of study (``"convergence"``, ``"exactness"``, ``"robustness"``,
        ``"rank_adaptivity"``, ``"conservation"``, ``"descent"``, ``"error_bound"``).
    problem, method : str
        Labels.
    checks : list of Check
    summary : dict
        Headline numbers for tables: ``error``, ``observed_order``, ``expected_order``,
        ``final_rank`` where they apply.
    series : dict
        JSON-ready data for figures, e.g. ``{"h": [...], "error": [...]}``.
    label : str
        Name of the case within the suite (defaults to ``study``), e.g. ``"descent-lr1"``.
    setup : dict
        How to repeat the study, merged into :meth:`as_dict`: the suite fills in
        ``method_constructor`` (the integrator as constructor text), ``problem_setup`` (the
        problem with its parameters) and ``runs`` (every run: method, step, time span).
    """

    study: str
    problem: str
    method: str
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    setup: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = self.label or self.study

    @property
    def passed(self) -> bool:
        """Whether every required check passed."""
        return all(c.passed for c in self.checks if c.required)

    @property
    def substantive(self) -> bool:
        """Whether a required check tests more than that the runs succeeded."""
        return any(c.required and c.name not in SMOKE_CHECKS for c in self.checks)

    @property
    def verdict(self) -> str:
        """``"FAIL"`` if a required check failed, else ``"pass"`` when a substantive check
        passed and ``"info"`` when the study only measured (no property asserted)."""
        if not self.passed:
            return "FAIL"
        return "pass" if self.substantive else "info"

    @property
    def failures(self) -> list[Check]:
        """The required checks that failed."""
        return [c for c in self.checks if c.required and not c.passed]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "study": self.study,
            "label": self.label,
            "problem": self.problem,
            "method": self.method,
            "passed": self.passed,
            "verdict": self.verdict,
            "summary": {k: _json_value(v) for k, v in self.summary.items()},
            "checks": [c.as_dict() for c in self.checks],
            "series": {k: _json_value(v) for k, v in self.series.items()},
            **{str(k): _json_value(v) for k, v in self.setup.items()},
        }


def _floats(*values: Any) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise TypeError(f"check values must be real numbers, got {v!r}") from None
    return out


def _json_number(x: float) -> float | str | None:
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _json_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if hasattr(v, "tolist"):
        return _json_value(v.tolist())
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _json_number(v)
    try:
        return _json_number(float(v))
    except (TypeError, ValueError):
        return str(v)
