"""Dynamical low-rank training: networks whose weight matrices follow a matrix integrator.

The client (:class:`LowRankTraining`) is framework-agnostic: it takes any matrix integrator and
a ``gradient(weights, params, batch)`` callable. :class:`MLP` is the NumPy reference network;
PyTorch models train with :mod:`lowrank_integrators.torch` (the ``torch`` extra).

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), Low-rank lottery tickets: finding
efficient low-rank neural networks via matrix differential equations, NeurIPS 35,
arXiv:2205.13571.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .client import GradientPass, LowRankTraining, StepReport, TrainingDiverged, TrainState
from .data import Dataset, load_dataset
from .experiment import RunConfig, run_training
from .network import MLP, Layer, NetworkPass
from .optimizers import SGD, Adam, HeavyBall, Optimizer

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "Dataset",
    "GradientPass",
    "HeavyBall",
    "Layer",
    "LowRankTraining",
    "NetworkPass",
    "Optimizer",
    "RunConfig",
    "StepReport",
    "TrainState",
    "TrainingDiverged",
    "load_checkpoint",
    "load_dataset",
    "run_training",
    "save_checkpoint",
]
