"""The validation suite: cases (problem x method x study), selection and running.

The reference problems live in :mod:`lowrank_integrators.validation`; each module there
exposes ``cases(methods, quick) -> list[Case]``. A :class:`Case` is cheap to create: its
study runs only when :meth:`Case.run` is called.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._progress import ProgressBar
from ..threads import limited
from ._runs import recording_runs
from .checks import StudyResult, at_least
from .methods import MethodSpec, available_methods

__all__ = ["Case", "collect_cases", "matches", "run_cases"]


@dataclass(frozen=True)
class Case:
    """One study of one method on one reference problem.

    Attributes
    ----------
    problem : str
        Problem identifier, e.g. ``"V1-sylvester"``.
    method : str
        Method label from :class:`~lowrank_integrators.verify.methods.MethodSpec`.
    study : str
        Kind of study, e.g. ``"convergence"``.
    runner : callable ``() -> StudyResult``
    parameters : mapping
        The reference problem's parameters (recorded in reports; filled in by
        :func:`collect_cases` from the problem module's constants).
    """

    problem: str
    method: str
    study: str
    runner: Callable[[], StudyResult]
    parameters: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        """``problem/method/study``."""
        return f"{self.problem}/{self.method}/{self.study}"

    def run(self) -> StudyResult:
        """Run the study; an exception becomes a failed result naming it."""
        start = time.perf_counter()
        runs: list[dict[str, Any]] = []
        try:
            with recording_runs() as runs:
                result = self.runner()
        except Exception as exc:  # a crash is a failure of the suite, reported, not hidden
            result = StudyResult(
                study=self.study,
                problem=self.problem,
                method=self.method,
                checks=[
                    at_least("completed", 0.0, 1.0, note=f"raised {type(exc).__name__}: {exc}")
                ],
            )
        result.problem, result.method, result.label = self.problem, self.method, self.study
        result.setup = self._setup(runs)
        result.summary.setdefault("seconds", time.perf_counter() - start)
        return result

    def _setup(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Constructor text of the methods, the problem with its parameters, the runs."""
        methods = list(dict.fromkeys(r["method"] for r in runs))
        first = runs[0] if runs else {}
        return {
            "method_constructor": methods[0] if methods else None,
            "method_constructors": methods,
            "problem_setup": {
                "name": self.problem,
                "class": first.get("problem"),
                "shape": first.get("shape"),
                "parameters": dict(self.parameters),
            },
            "runs": [
                {k: r[k] for k in ("method", "problem", "h", "t_span", "initial_rank")}
                for r in runs
            ],
        }


def problem_parameters(module: object) -> dict[str, Any]:
    """The upper-case constants of a reference-problem module (sizes, times, steps, tolerances)."""
    out: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.isupper() and name != "NAME" and _plain(value):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def matches(case: Case, pattern: str | None) -> bool:
    """Whether ``case.id`` matches ``pattern``: a shell glob, or a substring when the pattern
    has no wildcard; several patterns may be separated by commas. Case-insensitive."""
    if not pattern:
        return True
    cid = case.id.lower()
    for p in (s.strip().lower() for s in pattern.split(",")):
        if not p:
            continue
        if any(ch in p for ch in "*?["):
            if fnmatch.fnmatchcase(cid, p):
                return True
        elif p in cid:
            return True
    return False


def _problem_modules() -> list[object]:
    from ..validation import PROBLEM_MODULES

    return list(PROBLEM_MODULES)


def collect_cases(
    quick: bool = True,
    only: str | None = None,
    methods: Sequence[MethodSpec] | None = None,
) -> list[Case]:
    """All cases of the reference problems, optionally filtered by a pattern."""
    specs = list(available_methods() if methods is None else methods)
    out: list[Case] = []
    for module in _problem_modules():
        params = {"module": getattr(module, "__name__", ""), **problem_parameters(module)}
        out.extend(
            dataclasses.replace(c, parameters=params)
            for c in module.cases(specs, quick)
            if matches(c, only)
        )
    return out


@limited
def run_cases(cases: Iterable[Case], *, progress: bool = False) -> list[StudyResult]:
    """Run cases in order, with an optional progress bar on standard error."""
    cases = list(cases)
    bar = ProgressBar(len(cases), label="validate") if progress else None
    results = []
    try:
        for case in cases:
            if bar is not None:
                bar.postfix = case.id.ljust(48)
            results.append(case.run())
            if bar is not None:
                bar.update(1, postfix=case.id.ljust(48))
    finally:
        if bar is not None:
            bar.close()
    return results
