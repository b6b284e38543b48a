r"""Descent checks for gradient flows ``Y' = -grad L(Y)``.

For a loss with ``L``-Lipschitz gradient and step ``h <= 1/L``, the rank-adaptive BUG with
one Euler substep (dynamical low-rank training, DLRT) does not increase the loss, up to the
truncation tolerance (Ceruti, Kusch, Lubich 2022, arXiv:2104.05247; Schotthofer et al. 2022,
arXiv:2205.13571); the augmented backward-corrected projector splitting has the same
property (Kusch, Schotthofer, Walter 2025, arXiv:2502.03006).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._runs import MethodLike, method_label, run
from .checks import Check, StudyResult, at_least, at_most, informational

__all__ = ["descent_check", "descent_study", "largest_increase"]


def largest_increase(losses: Sequence[float]) -> float:
    """``max_k (L_{k+1} - L_k)``, or ``-inf`` for fewer than two values; ``nan`` propagates."""
    v = np.asarray(losses, dtype=float)
    if v.ndim != 1:
        raise ValueError("losses must be 1-D")
    if v.size < 2:
        return -math.inf
    if not np.all(np.isfinite(v)):
        return math.nan
    return float(np.max(np.diff(v)))


def descent_check(
    losses: Sequence[float],
    *,
    slack: float = 0.0,
    required: bool = True,
    name: str = "loss non-increasing",
    note: str = "",
) -> Check:
    """Check ``L_{k+1} <= L_k + slack`` for every step.

    ``slack`` covers round-off and, with a truncation tolerance, the allowed increase
    ``O(theta ||grad L||)`` per step.
    """
    if not slack >= 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    inc = largest_increase(losses)
    return at_most(name, inc, 0.0, slack, required=required, note=note or "descent for h <= 1/Lip")


def descent_study(
    problem: Any,
    Y0: Any,
    method: MethodLike,
    loss: Callable[[Any], float],
    t_span: tuple[float, float],
    h: float,
    *,
    slack: float | None = None,
    monotone: bool = True,
    target: float | None = None,
    target_tolerance: float | None = None,
    assert_target: bool = True,
    problem_name: str = "problem",
    method_name: str | None = None,
) -> StudyResult:
    """Loss along one run of a gradient flow.

    Parameters
    ----------
    loss : callable ``Y -> float``
    slack : float, optional
        Allowed per-step increase (default ``1e-12 * max(1, L_0)``).
    monotone : bool, default True
        Whether theory guarantees descent for this method and step (``h <= 1/Lip``);
        ``False`` reports the largest increase without asserting it.
    target, target_tolerance : float, optional
        The minimal loss (e.g. the Eckart-Young value); checks
        ``L_final <= target + target_tolerance`` (default ``1e-8 max(1, |target|)``). Any
        rank-r iterate has loss ``>= target``, which is checked too (it guards the target).
    assert_target : bool, default True
        ``False`` reports the distance to the target without asserting it.
    """
    losses = [float(loss(Y0))]
    sol = run(problem, Y0, method, t_span, h, callback=lambda t, Y, info: losses.append(loss(Y)))
    if slack is None:
        slack = 1e-12 * max(1.0, abs(losses[0]))
    checks: list[Check] = [
        at_least("run succeeded", float(sol.status == "success"), 1.0, note=sol.message)
    ]
    if monotone:
        checks.append(descent_check(losses, slack=slack))
    else:
        checks.append(
            informational(
                "largest loss increase", largest_increase(losses), "descent not guaranteed here"
            )
        )
    if target is not None:
        tol = 1e-8 * max(1.0, abs(target)) if target_tolerance is None else target_tolerance
        checks.append(
            at_least(
                "loss >= minimal loss",
                losses[-1],
                float(target),
                1e-12 * max(1.0, abs(target)),
                note="Eckart-Young lower bound",
            )
        )
        if assert_target:
            checks.append(
                at_most("final loss", losses[-1], float(target), tol, note="reaches the minimum")
            )
        else:
            checks.append(informational("final loss - minimum", losses[-1] - float(target)))
    return StudyResult(
        study="descent",
        problem=problem_name,
        method=method_name or method_label(method),
        checks=checks,
        summary={
            "error": losses[-1] - target if target is not None else losses[-1],
            "final_rank": int(sol.ranks[-1]),
        },
        series={"step": np.arange(len(losses)), "loss": losses},
    )
