"""Running a method once and measuring its error: what every study shares."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import _backend as bk
from ..integrators.base import StepMethod
from ..solution import Solution
from ..solve import solve

__all__ = [
    "MethodLike",
    "dense",
    "final_error",
    "frobenius",
    "method_for",
    "method_label",
    "rank_of",
    "recording_runs",
    "run",
    "steps_of",
]

#: An integrator, or a factory ``h -> integrator`` (so substeps can be refined with ``h``).
MethodLike = StepMethod | Callable[[float], StepMethod]


def method_for(method: MethodLike, h: float) -> StepMethod:
    """The integrator to use with step ``h``."""
    if isinstance(method, StepMethod):
        return method
    if callable(method):
        built = method(h)
        if not isinstance(built, StepMethod):
            raise TypeError(
                f"a method factory must return an integrator instance, got {type(built).__name__}"
            )
        return built
    raise TypeError(
        "method must be an integrator instance such as BUG() or a callable h -> integrator, "
        f"got {type(method).__name__}"
    )


def method_label(method: MethodLike) -> str:
    """A readable name for a method or a factory."""
    if isinstance(method, StepMethod):
        return type(method).__name__
    return getattr(method, "__name__", type(method).__name__)


def dense(Y: Any) -> np.ndarray:
    """A low-rank state (matrix or Tucker tensor) or an array as a dense NumPy array."""
    if bk.is_array(Y):
        return bk.to_host(Y)
    for name in ("to_dense", "to_tensor", "full"):
        if hasattr(Y, name):
            return bk.to_host(getattr(Y, name)())
    raise TypeError(f"cannot densify an object of type {type(Y).__name__}")


def frobenius(X: np.ndarray) -> float:
    """Frobenius (for tensors: Euclidean) norm of a dense array."""
    return float(np.linalg.norm(np.ravel(X)))


def steps_of(steps: Sequence[float]) -> np.ndarray:
    """Validate a sweep of step sizes (positive, finite, at least two distinct values)."""
    try:
        hs = np.asarray([float(h) for h in steps], dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"steps must be a sequence of positive numbers, got {steps!r}") from None
    if hs.ndim != 1 or hs.size < 2:
        raise ValueError(f"steps must hold at least two step sizes, got {steps!r}")
    if not np.all(np.isfinite(hs)) or np.any(hs <= 0):
        raise ValueError(f"steps must be finite and > 0, got {steps!r}")
    if np.unique(hs).size != hs.size:
        raise ValueError(f"steps must be distinct, got {steps!r}")
    return np.sort(hs)[::-1]


def run(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    t_span: tuple[float, float],
    h: float,
    **kw: Any,
) -> Solution:
    """``solve`` with the integrator for step ``h`` and no singular-value recording."""
    kw.setdefault("save_singular_values", False)
    integrator = method_for(method, h)
    log = _run_log.get()
    if log is not None:
        log.append(_describe_run(problem, Y0, integrator, t_span, h))
    return solve(problem, Y0, t_span, h, integrator, **kw)


_run_log: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "verify_run_log", default=None
)


@contextlib.contextmanager
def recording_runs() -> Iterator[list[dict[str, Any]]]:
    """Collect a description of every :func:`run` inside the block (for reports).

    Each entry holds the integrator as constructor text (its ``repr``), the problem's class,
    the shape and rank of the initial value, the time span and the step size.
    """
    log: list[dict[str, Any]] = []
    token = _run_log.set(log)
    try:
        yield log
    finally:
        _run_log.reset(token)


def _describe_run(
    problem: Any, Y0: Any, integrator: StepMethod, t_span: tuple[float, float], h: float
) -> dict[str, Any]:
    rank = getattr(Y0, "rank", None)
    shape = getattr(Y0, "shape", None)
    return {
        "method": repr(integrator),
        "problem": type(problem).__name__,
        "shape": [int(s) for s in shape] if shape is not None else None,
        "initial_rank": list(rank) if isinstance(rank, tuple) else rank,
        "t_span": [float(t_span[0]), float(t_span[1])],
        "h": float(h),
    }


def final_error(sol: Solution, reference: Callable[[float], Any]) -> float:
    """``||Y(T) - reference(T)||``; ``inf`` when the run failed."""
    if sol.status != "success":
        return math.inf
    return frobenius(dense(sol.Y) - dense(reference(float(sol.t[-1]))))


def rank_of(sol: Solution) -> Any:
    """Final rank as a JSON-ready value (int, or list for Tucker)."""
    r = sol.ranks[-1]
    return list(r) if isinstance(r, tuple) else int(r)
