"""Small reference models: a multilayer perceptron and LeNet5 (dense; see :func:`convert`)."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["lenet5", "mlp"]


def mlp(widths: Sequence[int], *, dtype: torch.dtype | None = None) -> torch.nn.Sequential:
    """A dense ReLU perceptron ``Linear(w0, w1), ReLU, ..., Linear(w_{L-1}, w_L)``.

    Parameters
    ----------
    widths : sequence of int
        At least two widths, e.g. ``(784, 500, 500, 10)``; inputs are flattened first.
    dtype : torch.dtype, optional

    Returns
    -------
    torch.nn.Sequential
        Modules ``flatten``, then ``fc1, relu1, fc2, ...`` by name.
    """
    widths = list(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"widths must be at least two ints >= 1, got {widths!r}")
    layers: list[tuple[str, torch.nn.Module]] = [("flatten", torch.nn.Flatten())]
    for i, (a, b) in enumerate(itertools.pairwise(widths), start=1):
        layers.append((f"fc{i}", torch.nn.Linear(a, b, dtype=dtype)))
        if i < len(widths) - 1:
            layers.append((f"relu{i}", torch.nn.ReLU()))
    return torch.nn.Sequential(OrderedDict(layers))  # type: ignore[arg-type]


def lenet5(num_classes: int = 10, *, dtype: torch.dtype | None = None) -> torch.nn.Sequential:
    """LeNet5 for 28 x 28 grey images, as in the experiments of DLRT.

    ``conv1`` (1 -> 20, 5 x 5), max-pool, ``conv2`` (20 -> 50, 5 x 5), max-pool, ``fc1``
    (800 -> 500), ``fc2`` (500 -> ``num_classes``), with ReLU after every layer but the last
    (Schotthöfer et al. 2022, arXiv:2205.13571, Table 1).

    Parameters
    ----------
    num_classes : int, default 10
    dtype : torch.dtype, optional

    Returns
    -------
    torch.nn.Sequential
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("conv1", torch.nn.Conv2d(1, 20, 5, dtype=dtype)),
                ("relu1", torch.nn.ReLU()),
                ("pool1", torch.nn.MaxPool2d(2)),
                ("conv2", torch.nn.Conv2d(20, 50, 5, dtype=dtype)),
                ("relu2", torch.nn.ReLU()),
                ("pool2", torch.nn.MaxPool2d(2)),
                ("flatten", torch.nn.Flatten()),
                ("fc1", torch.nn.Linear(800, 500, dtype=dtype)),
                ("relu3", torch.nn.ReLU()),
                ("fc2", torch.nn.Linear(500, num_classes, dtype=dtype)),
            ]
        )  # type: ignore[arg-type]
    )
