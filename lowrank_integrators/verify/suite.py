"""The validation suite: cases (problem x method x study), selection and running.

The reference problems live in :mod:`lowrank_integrators.validation`; each module there
exposes ``cases(methods, quick) -> list[Case]``. A :class:`Case` is cheap to create: its
study runs only when :meth:`Case.run` is called.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .._progress import ProgressBar
from ..threads import limited
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
    """

    problem: str
    method: str
    study: str
    runner: Callable[[], StudyResult]

    @property
    def id(self) -> str:
        """``problem/method/study``."""
        return f"{self.problem}/{self.method}/{self.study}"

    def run(self) -> StudyResult:
        """Run the study; an exception becomes a failed result naming it."""
        start = time.perf_counter()
        try:
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
        result.summary.setdefault("seconds", time.perf_counter() - start)
        return result


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
        out.extend(c for c in module.cases(specs, quick) if matches(c, only))
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
