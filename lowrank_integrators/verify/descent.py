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

__all__ = ["descent_check", "descent_study", "largest_increase", "truncation_slack"]


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
    step_slack: Sequence[float] | None = None,
    required: bool = True,
    name: str = "loss non-increasing",
    note: str = "",
) -> Check:
    """Check ``L_{k+1} <= L_k + step_slack_k + slack`` for every step.

    Parameters
    ----------
    losses : sequence of float
        ``L_0, L_1, ...``.
    slack : float, default 0
        Round-off allowance, the same for every step.
    step_slack : sequence of float, optional
        Per-step allowance (one per step, ``len(losses) - 1`` values), e.g. the increase a
        truncation may cause (``truncation_slack``). The measured value is then
        ``max_k (L_{k+1} - L_k - step_slack_k)``.
    """
    if not slack >= 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    inc = largest_increase(losses)
    if step_slack is not None:
        v = np.asarray(losses, dtype=float)
        extra = np.asarray(step_slack, dtype=float)
        if extra.shape != (max(v.size - 1, 0),) or np.any(extra < 0):
            raise ValueError("step_slack needs one non-negative value per step")
        if v.size >= 2 and np.all(np.isfinite(v)):
            inc = float(np.max(np.diff(v) - extra))
    return at_most(name, inc, 0.0, slack, required=required, note=note or "descent for h <= 1/Lip")


def truncation_slack(tail: float, grad_norm: float, lipschitz: float) -> float:
    """Largest loss increase a truncation by ``tail`` can cause: ``tail (g + 3/2 Lip tail)``.

    With ``Y = Yhat + D``, ``||D|| = tail`` (the discarded singular values) and an
    ``Lip``-Lipschitz gradient, ``L(Y) - L(Yhat) <= ||grad L(Yhat)|| tail + Lip tail^2 / 2`` and
    ``||grad L(Yhat)|| <= ||grad L(Y)|| + Lip tail``; ``g = ||grad L(Y)||`` at the truncated
    iterate. The untruncated augmented step descends for ``h <= 1/Lip`` (Ceruti, Kusch, Lubich
    2022), so the loss may rise by at most this much per step.
    """
    return float(tail) * (float(grad_norm) + 1.5 * float(lipschitz) * float(tail))


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
    grad_norm: Callable[[Any], float] | None = None,
    lipschitz: float = 1.0,
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
    grad_norm : callable ``Y -> float``, optional
        ``||grad L(Y)||``. With it, each step may raise the loss by the
        ``truncation_slack`` of its recorded truncation tail (descent holds only up to the
        truncation, Ceruti, Kusch, Lubich 2022); without it, or for steps with no truncation
        record, the allowance is 0.
    lipschitz : float, default 1
        Lipschitz constant of ``grad L``.
    """
    losses = [float(loss(Y0))]
    extra: list[float] = []

    def record(t: float, Y: Any, info: Any) -> None:
        losses.append(loss(Y))
        rec = getattr(info, "truncation", None)
        tail = float(rec.tail) if rec is not None and math.isfinite(rec.tail) else 0.0
        extra.append(truncation_slack(tail, grad_norm(Y), lipschitz) if grad_norm else 0.0)

    sol = run(problem, Y0, method, t_span, h, callback=record)
    if slack is None:
        slack = 1e-12 * max(1.0, abs(losses[0]))
    checks: list[Check] = [
        at_least("run succeeded", float(sol.status == "success"), 1.0, note=sol.message)
    ]
    if monotone:
        checks.append(
            descent_check(
                losses,
                slack=slack,
                step_slack=extra if len(extra) == len(losses) - 1 else None,
                note="descent for h <= 1/Lip, up to the truncation tails"
                if grad_norm
                else "descent for h <= 1/Lip",
            )
        )
        if grad_norm:
            checks.append(
                informational(
                    "largest loss increase without slack",
                    largest_increase(losses),
                    "strict descent is observed, not guaranteed under truncation",
                )
            )
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
        series={"step": np.arange(len(losses)), "loss": losses, "slack": extra},
    )
