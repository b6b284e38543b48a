"""Robust dynamical low-rank integrators for matrix and Tucker-tensor ODEs.

``Y' = F(t, Y)`` is integrated on the manifold of rank-r matrices ``Y = U S V^H`` by updating
the factors. The right-hand side is given in factored form (``F V``, ``F^H U``, ``U^H F V``);
arrays of any array-API library (NumPy, CuPy, PyTorch, array-api-strict) go through.

Examples
--------
>>> import numpy as np
>>> import lowrank_integrators as lri
>>> rng = np.random.default_rng(0)
>>> n = 50
>>> W = rng.standard_normal((n, n)); W = (W - W.T) / 2
>>> problem = lri.SylvesterODE(W, W)                 # F(Y) = W Y + Y W^T
>>> Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((n, n)), rank=5)
>>> sol = lri.solve(problem, Y0, t_span=(0.0, 1.0), h=0.05, method=lri.ProjectorSplitting())
>>> sol.status, sol.Y.rank
('success', 5)
"""

from . import diagnostics, errors, threads
from .factors import LowRankMatrix
from .integrators import (
    BUG,
    AugmentedBUG,
    Integrator,
    ProjectorSplitting,
    State,
    StepInfo,
    TuckerBUG,
    TuckerProjectorSplitting,
)
from .integrators.abc_psi import AugmentedBackwardCorrectedPSI
from .integrators.midpoint_bug import MidpointBUG
from .integrators.parallel_bug import ParallelBUG
from .problems import DataODE, DenseODE, MatrixODE, SylvesterODE
from .solution import Solution, SolveStats
from .solve import solve
from .substeps import RK4, Euler, SubstepSolver
from .tensor_problems import DenseTensorODE, TensorODE, TensorSylvesterODE
from .threads import set_thread_limit, thread_limit
from .truncation import FixedRank, Tolerance, TruncationRecord, TruncationRule
from .tucker import TuckerTensor

__version__ = "0.1.0"

__all__ = [
    "BUG",
    "RK4",
    "AugmentedBUG",
    "AugmentedBackwardCorrectedPSI",
    "DataODE",
    "DenseODE",
    "DenseTensorODE",
    "Euler",
    "FixedRank",
    "Integrator",
    "LowRankMatrix",
    "MatrixODE",
    "MidpointBUG",
    "ParallelBUG",
    "ProjectorSplitting",
    "Solution",
    "SolveStats",
    "State",
    "StepInfo",
    "SubstepSolver",
    "SylvesterODE",
    "TensorODE",
    "TensorSylvesterODE",
    "Tolerance",
    "TruncationRecord",
    "TruncationRule",
    "TuckerBUG",
    "TuckerProjectorSplitting",
    "TuckerTensor",
    "diagnostics",
    "errors",
    "set_thread_limit",
    "solve",
    "thread_limit",
    "threads",
]
