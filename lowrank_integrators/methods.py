r"""The one registry of methods: names, classes and the theory each class declares.

Every integrator class declares what theory says about it as class attributes (``order``,
``rank_adaptive``, ``exact_tangent``, ``exact_data``, ``norm``, ``descent``,
``max_rank_growth``, ``passes_per_step``, ...; see
:class:`~lowrank_integrators.integrators.base.StepMethod`). This module only names the
methods: the command line, the verification suite, the paper figures and training all read
:data:`METHODS`, and every property of an entry is read from its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .integrators import (
    BUG,
    AugmentedBackwardCorrectedPSI,
    AugmentedBUG,
    MidpointBUG,
    ParallelBUG,
    ProjectorSplitting,
    TuckerBUG,
    TuckerProjectorSplitting,
)
from .integrators.base import StepMethod
from .substeps import SubstepSolver
from .truncation import TruncationRule

__all__ = ["METHODS", "Method", "by_name", "matrix_methods", "training_methods"]


@dataclass(frozen=True)
class Method:
    """A named method: a class and the constructor options that select its variant.

    Attributes
    ----------
    name : str
        Label in reports, tables and figures.
    cls : type
        The integrator class.
    options : dict
        Constructor keywords besides ``truncation`` and ``substep`` (``order=2``).
    label : str
        Long name for legends.
    cli : str or None
        Name on the ``train`` command line (methods usable in training).
    """

    name: str
    cls: type[StepMethod]
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    cli: str | None = None

    @property
    def theory(self) -> dict[str, Any]:
        """The declared theory of the variant (from the class attributes)."""
        return self.cls.theory(self.options.get("order"))

    def __getattr__(self, name: str) -> Any:
        # order, rank_adaptive, exact_tangent, ... are read from the class.
        if name.startswith("_"):
            raise AttributeError(name)
        theory = self.cls.theory(self.options.get("order"))
        if name in theory:
            return theory[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def tucker(self) -> bool:
        """Whether the method integrates Tucker tensors."""
        return self.cls in (TuckerBUG, TuckerProjectorSplitting)

    def build(
        self, substep: SubstepSolver | None = None, truncation: TruncationRule | None = None
    ) -> StepMethod:
        """The integrator; rank-adaptive methods need ``truncation``, others ignore it."""
        kw: dict[str, Any] = dict(self.options)
        if substep is not None:
            kw["substep"] = substep
        if self.cls.rank_adaptive is True:
            if truncation is None:
                raise ValueError(f"{self.name} is rank-adaptive: give a truncation rule")
            return self.cls(truncation, **kw)
        return self.cls(**kw)

    def build_for_suite(
        self, substep: SubstepSolver, truncation: TruncationRule | None
    ) -> StepMethod:
        """``build`` with the argument order of the verification suite."""
        return self.build(substep, truncation)


#: Every method of the package, in a fixed order.
METHODS: tuple[Method, ...] = (
    Method("KSL", ProjectorSplitting, {"order": 1}, "projector splitting (Lie-Trotter)", "psi"),
    Method("Strang", ProjectorSplitting, {"order": 2}, "projector splitting (Strang)"),
    Method("BUG", BUG, {}, "BUG", "bug"),
    Method("AugmentedBUG", AugmentedBUG, {}, "augmented BUG", "augmented-bug"),
    Method("ParallelBUG", ParallelBUG, {"order": 1}, "parallel BUG", "parallel-bug"),
    Method("ParallelBUG2", ParallelBUG, {"order": 2}, "parallel BUG, 2nd order"),
    Method("MidpointBUG", MidpointBUG, {}, "midpoint BUG", "midpoint-bug"),
    Method(
        "abcPSI",
        AugmentedBackwardCorrectedPSI,
        {},
        "augmented backward-corrected PSI",
        "abc-psi",
    ),
    Method("TuckerPSI", TuckerProjectorSplitting, {}, "Tucker projector splitting"),
    Method("TuckerBUG", TuckerBUG, {}, "Tucker BUG"),
)


def matrix_methods() -> list[Method]:
    """The matrix methods, in registry order."""
    return [m for m in METHODS if not m.tucker]


def training_methods() -> dict[str, Method]:
    """The methods of the ``train`` command line, by their command-line name."""
    return {m.cli: m for m in METHODS if m.cli is not None}


def by_name(name: str) -> Method:
    """The method called ``name`` (a report label or a command-line name)."""
    for m in METHODS:
        if name in (m.name, m.cli):
            return m
    known = sorted({m.name for m in METHODS} | {m.cli for m in METHODS if m.cli})
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(known)}")
