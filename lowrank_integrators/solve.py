"""The one-call driver: integrate a problem over a time span with a fixed step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend as bk
from ._progress import ProgressBar
from .errors import StepFailure
from .factors import LowRankMatrix
from .integrators.base import StepInfo, StepMethod
from .solution import Solution, SolveStats
from .threads import limited

__all__ = ["MAX_STEPS", "solve", "step_times"]


#: The most steps one :func:`solve` call takes. A smaller ``h`` (``1e-13`` on a unit span would
#: need a time grid of 80 TB) is refused before any work; split a longer run into several calls.
MAX_STEPS = 10_000_000


def step_times(t0: float, t1: float, h: float) -> np.ndarray:
    """Grid ``t0, t0 + h, ..., t1`` whose last point is exactly ``t1``; every step is ``> 0``.

    The grid is built from an integer step count ``n``: ``t_k = t0 + k h`` for ``k < n`` and
    ``t_n = t1``. When the span is ``n h`` up to the round-off of the times themselves (a few
    units in the last place of ``max(|t0|, |t1|)``; ``t0 = 2**19`` with ``h = 1e-3`` leaves a
    span of ``1.0000000475 h``), the ``n``-th step absorbs it; otherwise the last step is
    shortened.

    Raises
    ------
    ValueError
        When the grid would have more than ``MAX_STEPS`` steps, or when ``h`` is below
        the resolution of the floating-point times (``t0 + h == t0``).
    """
    span = t1 - t0
    ratio = span / h
    if not ratio <= MAX_STEPS:  # also catches ratio = inf (h = 5e-324)
        raise ValueError(
            f"h = {h!r} over the span ({t0!r}, {t1!r}) needs {ratio:.3g} steps, more than the "
            f"limit of {MAX_STEPS:,} steps of one solve call (lowrank_integrators.solve."
            "MAX_STEPS); take a larger h or split the span into several calls"
        )
    n = max(1, round(ratio))
    resolution = 8.0 * np.finfo(float).eps * max(abs(t0), abs(t1), span)
    if abs(span - n * h) > resolution:
        n = max(1, math.ceil(ratio))
    times = t0 + h * np.arange(n + 1, dtype=float)
    times[-1] = t1
    if n > 1 and not bool(np.all(np.diff(times) > 0)):
        raise ValueError(
            f"h = {h!r} is below the resolution of the times near t = {max(abs(t0), abs(t1))!r}: "
            "t + h rounds to t, so steps would have length 0; take a larger h"
        )
    return times


@limited
def solve(
    problem: Any,
    Y0: Any,
    t_span: tuple[float, float],
    h: float,
    method: StepMethod | None = None,
    *,
    progress: bool = False,
    callback: Callable[[float, Any, StepInfo], Any] | None = None,
    save_singular_values: bool = True,
    save_states: bool = False,
) -> Solution:
    """Integrate ``Y' = F(t, Y)`` from ``t_span[0]`` to ``t_span[1]`` with step ``h``.

    Parameters
    ----------
    problem : MatrixODE (or a tensor problem for Tucker integrators)
        The right-hand side in factored form.
    Y0 : LowRankMatrix or TuckerTensor
        Initial value; its rank is the starting rank.
    t_span : (float, float)
        ``(t0, t1)`` with ``t1 > t0``. The last step is shortened to land exactly on ``t1``.
    h : float
        Step size, ``> 0``; at most ``MAX_STEPS`` steps per call (see ``step_times``).
    method : Integrator, optional
        Default ``BUG()``.
    progress : bool, default False
        Draw a progress bar on standard error.
    callback : callable, optional
        ``callback(t, Y, info)`` after each accepted step; returning ``False`` stops the run
        with status ``"stopped"``.
    save_singular_values : bool, default True
        Record the singular values of each state (a small SVD of the core per step, not
        counted in ``stats``).
    save_states : bool, default False
        Keep every state in ``sol.states`` (for error curves along the solution).

    Returns
    -------
    Solution
        ``sol.status`` is ``"failed"`` when a step produced non-finite values, a
        factorisation failed or a step raised a
        :class:`~lowrank_integrators.errors.StepFailure` (non-finite values about to be
        factorised, endless step rejection); then ``sol.Y`` is the last good state and
        ``sol.message`` names the step and its time.

    Notes
    -----
    With row-chunked Dask factors (see :class:`~lowrank_integrators.LowRankMatrix`) every
    accepted state, ``Y0`` included, is persisted once, in the row chunks of ``Y0``, and its
    finiteness checked in the same computation: each step starts from stored chunks, so the
    work per step does not grow over the run. Calling ``method.step`` in a loop of your own
    does not persist.
    """
    from .integrators.bug import BUG

    method = BUG() if method is None else method
    if not isinstance(method, StepMethod):
        raise TypeError(
            f"method must be an integrator instance such as BUG(), got {type(method).__name__}"
        )
    t0, t1 = _check_span(t_span)
    h = _check_step(h)
    times = step_times(t0, t1, h)

    state = method.init(problem, Y0, t0)
    state, _ = _settle(state, state)  # lazy factors of Y0: computed once, not in every step
    n_steps = len(times) - 1

    stats = SolveStats()
    t_rec = [t0]
    ranks = [_rank_of(state.Y)]
    svals = [_singular_values(state.Y)] if save_singular_values else []
    states = [state.Y] if save_states else []
    infos: list[StepInfo] = []
    status, message = "success", f"reached t = {t1:.6g} in {n_steps} steps"

    bar = ProgressBar(n_steps, label=type(method).__name__) if progress else None
    start = time.perf_counter()
    try:
        for k in range(n_steps):
            tk, hk = float(times[k]), float(times[k + 1] - times[k])
            failure = None
            try:
                new_state, info = method.step(problem, state, tk, hk)
            except StepFailure as exc:
                failure = str(exc)
            except Exception as exc:  # only factorisation failures become a status
                if not bk.is_linalg_error(exc):
                    raise
                failure = f"a factorisation failed ({type(exc).__name__}: {exc})"
            else:
                new_state, finite = _settle(new_state, state)
                if not finite:
                    failure = "it produced non-finite values"
            if failure is not None:
                status = "failed"
                message = (
                    f"step {k + 1} of {n_steps}, from t = {tk:.6g} to t = {tk + hk:.6g}, failed: "
                    f"{failure}; sol.Y is the last good state, at t = {tk:.6g}"
                )
                break
            state = new_state
            stats.add(info)
            infos.append(info)
            t_rec.append(float(times[k + 1]))
            ranks.append(_rank_of(state.Y))
            if save_singular_values:
                svals.append(_singular_values(state.Y))
            if save_states:
                states.append(state.Y)
            if bar is not None:
                bar.update(1, postfix=f"rank {ranks[-1]}")
            if callback is not None and callback(t_rec[-1], state.Y, info) is False:
                status = "stopped"
                message = f"stopped by the callback at t = {t_rec[-1]:.6g} after step {k + 1}"
                break
    finally:
        stats.wall_time = time.perf_counter() - start
        if bar is not None:
            bar.close()

    return Solution(
        Y=state.Y,
        t=np.asarray(t_rec),
        ranks=ranks,
        singular_values=svals,
        step_info=infos,
        stats=stats,
        status=status,
        message=message,
        states=states,
    )


def _check_span(t_span: Any) -> tuple[float, float]:
    try:
        t0, t1 = (float(v) for v in t_span)
    except (TypeError, ValueError):
        raise TypeError(f"t_span must be a pair of numbers (t0, t1), got {t_span!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t_span must be finite, got {t_span!r}")
    if t1 <= t0:
        raise ValueError(f"t_span must satisfy t1 > t0 (empty or reversed span), got {t_span!r}")
    return t0, t1


def _check_step(h: Any) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float, np.floating, np.integer)):
        raise TypeError(f"h must be a positive number, got {type(h).__name__}")
    h = float(h)
    if not math.isfinite(h) or h <= 0:
        raise ValueError(f"h must be a finite number > 0, got {h}")
    return h


def _arrays(Y: Any) -> list[Any]:
    out: list[Any] = []
    for part in Y:
        if isinstance(part, (list, tuple)):
            out.extend(part)
        else:
            out.append(part)
    return out


def _finite(Y: Any) -> bool:
    return bk.all_finite(*_arrays(Y))


def _settle(new: Any, old: Any) -> tuple[Any, bool]:
    """The accepted state, its factors materialised where they are lazy, and its finiteness.

    Lazy (Dask) factors are persisted once per step, in the row chunks of the step's input,
    with the finiteness check in the same computation (see
    :func:`lowrank_integrators._dask.settle`): the next step starts from stored chunks, not
    from the graph of the whole run.
    """
    Y = new.Y
    if isinstance(Y, LowRankMatrix) and (bk.is_lazy(Y.U) or bk.is_lazy(Y.V)):
        from ._dask import settle

        Y, finite = settle(Y, old.Y)
        return new.with_Y(Y, new.t), finite
    return new, _finite(Y)


def _rank_of(Y: Any) -> Any:
    ranks = getattr(Y, "ranks", None)
    return tuple(ranks) if ranks is not None else int(Y.rank)


def _singular_values(Y: Any) -> Any:
    return Y.singular_values()
