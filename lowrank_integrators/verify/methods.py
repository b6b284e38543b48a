r"""The methods the validation suite covers, with the behaviour theory expects of each.

Expectations are taken from the papers (see ``references`` of each integrator) and the
summary table of the algorithm reference: declared order, exactness on tangent
(Sylvester-type) fields, norm conservation, guaranteed descent of gradient flows and the
factor by which the rank can grow per step. Each integrator class declares them; the suite
reads them from the registry :mod:`lowrank_integrators.methods`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..methods import matrix_methods
from ..substeps import RK4, SubstepSolver
from ..truncation import TruncationRule

__all__ = ["MethodSpec", "available_methods", "substep_for"]


def substep_for(h: float, max_internal_step: float = 0.01) -> RK4:
    """Classical RK4 with ``max(1, ceil(h / max_internal_step))`` internal steps.

    Makes the substep error negligible next to the splitting error, as the standard
    validation setups prescribe.
    """
    return RK4(steps=max(1, math.ceil(h / max_internal_step - 1e-9)))


@dataclass(frozen=True)
class MethodSpec:
    """A method of the suite and what theory says about it.

    Attributes
    ----------
    name : str
        Label in tables and reports.
    build : callable ``(substep, truncation) -> Integrator``
        Fixed-rank methods ignore ``truncation``.
    order : int
        Declared order with exact substeps.
    rank_adaptive : bool
        Whether ``truncation`` controls the rank.
    exact_tangent : bool
        Exact for every ``h`` on ``F(Y) = A Y + Y B`` (projector splitting).
    exact_data : bool
        Reproduces rank-r explicit data ``A(t)`` to round-off (Lubich, Oseledets 2014;
        Ceruti, Lubich 2022; kept by the augmented BUG, Ceruti, Kusch, Lubich 2022).
    norm : {"exact", "truncation", "drift", "unknown"}
        Norm conservation on Schrodinger-type problems: conserved, conserved up to the
        truncation tolerance, ``O(h)`` drift, or no established statement.
    descent : bool
        Guaranteed descent of gradient flows for ``h <= 1/Lip``.
    max_growth : float
        Largest rank growth factor per step.
    second_order_sylvester : bool
        Truncated back to a fixed rank, observed order 2 on Sylvester fields (informational).
    fixed_rank_order : bool
        Whether the declared order holds when the method is truncated to a fixed rank (the
        parallel BUG truncated to a fixed rank converges erratically: no order asserted).
    roundoff_floor : float
        A known error level (for solutions of norm about 1) below which the method stops
        improving; order fits leave such errors out. Default 0: a stagnating error (e.g. the
        midpoint BUG's QR of nearly dependent ``4r`` columns on the Sylvester rotation,
        algorithm reference pitfall 7.3) is found from the sweep itself by the stagnation
        rule of :func:`~lowrank_integrators.verify.convergence.asymptotic_prefix`.
    """

    name: str
    build: Callable[[SubstepSolver, TruncationRule | None], Any]
    order: int
    rank_adaptive: bool = False
    exact_tangent: bool = False
    exact_data: bool = False
    norm: str = "unknown"
    descent: bool = False
    max_growth: float = 1.0
    second_order_sylvester: bool = False
    fixed_rank_order: bool = True
    roundoff_floor: float = 0.0

    def make(self, substep: SubstepSolver, truncation: TruncationRule | None = None) -> Any:
        """Build the integrator."""
        if self.rank_adaptive and truncation is None:
            raise ValueError(f"{self.name} is rank-adaptive: give a truncation rule")
        return self.build(substep, truncation)


def available_methods() -> list[MethodSpec]:
    """The matrix methods of the package, in registry order, with their declared theory."""
    return [
        MethodSpec(
            m.name,
            m.build_for_suite,
            order=m.order,
            rank_adaptive=bool(m.rank_adaptive),
            exact_tangent=m.exact_tangent,
            exact_data=m.exact_data,
            norm=m.norm,
            descent=m.descent,
            max_growth=m.max_rank_growth,
            second_order_sylvester=m.second_order_sylvester,
            fixed_rank_order=m.fixed_rank_order,
        )
        for m in matrix_methods()
    ]
