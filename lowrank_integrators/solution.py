"""The result of :func:`~lowrank_integrators.solve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .integrators.base import StepInfo

__all__ = ["Solution", "SolveStats"]


@dataclass
class SolveStats:
    """Counters of a run (the integrator's own work; diagnostics are not counted).

    Attributes
    ----------
    n_steps : int
        Accepted steps.
    n_right, n_left, n_project : int
        Applications of ``F V``, ``F^H U`` and ``U^H F V``.
    n_qr, n_svd : int
        QR and SVD factorisations made by the integrator.
    n_rejected : int
        Rejected step attempts.
    wall_time : float
        Seconds spent in the driver loop.
    """

    n_steps: int = 0
    n_right: int = 0
    n_left: int = 0
    n_project: int = 0
    n_qr: int = 0
    n_svd: int = 0
    n_rejected: int = 0
    wall_time: float = 0.0

    @property
    def n_f(self) -> int:
        """Total factored ``F`` applications."""
        return self.n_right + self.n_left + self.n_project

    def add(self, info: StepInfo) -> None:
        self.n_steps += 1
        self.n_right += info.n_right
        self.n_left += info.n_left
        self.n_project += info.n_project
        self.n_qr += info.n_qr
        self.n_svd += info.n_svd
        self.n_rejected += info.rejected

    def as_dict(self) -> dict[str, float]:
        return {
            "n_steps": self.n_steps,
            "n_right": self.n_right,
            "n_left": self.n_left,
            "n_project": self.n_project,
            "n_f": self.n_f,
            "n_qr": self.n_qr,
            "n_svd": self.n_svd,
            "n_rejected": self.n_rejected,
            "wall_time": self.wall_time,
        }


@dataclass
class Solution:
    """What :func:`~lowrank_integrators.solve` returns.

    Attributes
    ----------
    Y : LowRankMatrix or TuckerTensor
        The final state, or the last good state when the run failed.
    t : numpy.ndarray
        Times of the recorded states, starting at ``t0``.
    ranks : list
        Rank at each time of ``t`` (tuples for Tucker tensors).
    singular_values : list of numpy.ndarray
        Singular values of the state at each time of ``t`` (for Tucker tensors: a tuple of
        the singular values of the core unfoldings); empty when not recorded.
    step_info : list of StepInfo
        Per-step costs and rank decisions (rank before/after, discarded tail).
    stats : SolveStats
        Totals.
    status : {"success", "failed", "stopped"}
        ``"failed"``: a step produced non-finite values or a factorisation failed;
        ``"stopped"``: the callback asked to stop.
    message : str
        Human-readable account of how the run ended.
    states : list
        All states along the run when ``save_states=True``, else empty.
    """

    Y: Any
    t: np.ndarray
    ranks: list[Any]
    singular_values: list[Any]
    step_info: list[StepInfo]
    stats: SolveStats
    status: str
    message: str
    states: list[Any] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """Whether the run reached the end of the time span."""
        return self.status == "success"

    def __repr__(self) -> str:
        return (
            f"Solution(status={self.status!r}, t_end={self.t[-1]:.6g}, rank={self.ranks[-1]}, "
            f"steps={self.stats.n_steps}, message={self.message!r})"
        )
