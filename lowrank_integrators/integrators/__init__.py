"""Integrators: one module per method, each reading like the algorithm box of its paper."""

from .abc_psi import AugmentedBackwardCorrectedPSI
from .augmented_bug import AugmentedBUG
from .base import AdaptiveIntegrator, Integrator, Ledger, State, StepInfo, StepMethod
from .bug import BUG
from .midpoint_bug import MidpointBUG
from .parallel_bug import ParallelBUG
from .projector_splitting import ProjectorSplitting
from .tucker_bug import TuckerBUG
from .tucker_projector_splitting import TuckerProjectorSplitting
from .tucker_steps import TuckerIntegrator, TuckerState, TuckerStepInfo

__all__ = [
    "BUG",
    "AdaptiveIntegrator",
    "AugmentedBUG",
    "AugmentedBackwardCorrectedPSI",
    "Integrator",
    "Ledger",
    "MidpointBUG",
    "ParallelBUG",
    "ProjectorSplitting",
    "State",
    "StepInfo",
    "StepMethod",
    "TuckerBUG",
    "TuckerIntegrator",
    "TuckerProjectorSplitting",
    "TuckerState",
    "TuckerStepInfo",
]
