"""Integrators: one module per method, each reading like the algorithm box of its paper."""

from .augmented_bug import AugmentedBUG
from .base import AdaptiveIntegrator, Integrator, Ledger, State, StepInfo
from .bug import BUG
from .projector_splitting import ProjectorSplitting

__all__ = [
    "BUG",
    "AdaptiveIntegrator",
    "AugmentedBUG",
    "Integrator",
    "Ledger",
    "ProjectorSplitting",
    "State",
    "StepInfo",
]
