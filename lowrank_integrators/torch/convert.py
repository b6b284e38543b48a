r"""``convert``: replace the linear and convolution layers of any model by low-rank ones.

Each :class:`torch.nn.Linear` becomes a :class:`~lowrank_integrators.torch.LowRankLinear` and
each :class:`torch.nn.Conv2d` a :class:`~lowrank_integrators.torch.LowRankConv2d` (the kernel
matricised as ``out x (in kh kw)``, Schotthöfer et al. 2022, arXiv:2205.13571) or a
:class:`~lowrank_integrators.torch.TuckerConv2d` (Zangrando et al. 2023, arXiv:2305.19059),
starting from the best approximation of the existing weight at the given rank: the truncated
SVD (Eckart-Young), or the truncated HOSVD for Tucker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from .layers import LowRankConv2d, LowRankLinear
from .tucker_layers import TuckerConv2d

__all__ = ["convert", "resolve_rank"]


def resolve_rank(rank: int | float, limit: int) -> int:
    """The rank of a layer whose largest possible rank is ``limit``.

    Parameters
    ----------
    rank : int or float
        An int ``>= 1`` is clipped to ``limit``; a float in ``(0, 1]`` is the fraction
        ``ceil(rank * limit)`` of it.
    limit : int

    Returns
    -------
    int in ``[1, limit]``
    """
    if isinstance(rank, bool):
        raise TypeError("rank must be an int >= 1 or a float in (0, 1], got a bool")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"rank must be an int >= 1 or a float in (0, 1], got {rank}")
        return min(rank, limit)
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"rank must be an int >= 1 or a float in (0, 1], got {rank}")
        return max(1, min(limit, math.ceil(rank * limit)))
    raise TypeError(f"rank must be an int >= 1 or a float in (0, 1], got {type(rank).__name__}")


def convert(
    model: torch.nn.Module,
    rank: int | float,
    *,
    conv: str = "matrix",
    exclude: Iterable[str] = (),
) -> torch.nn.Module:
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` by low-rank layers.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place (and returned). A module that is itself a ``Linear``/``Conv2d`` is
        returned converted.
    rank : int or float
        Per layer: an int clipped to the layer's largest possible rank (per mode for Tucker),
        or a float in ``(0, 1]``, the fraction of it (see :func:`resolve_rank`).
    conv : {"matrix", "tucker"}
        :class:`LowRankConv2d` or :class:`TuckerConv2d` for the convolutions.
    exclude : iterable of str
        Qualified names (as in ``model.named_modules()``) of modules kept dense, e.g.
        ``("fc3",)`` for the classifier.

    Returns
    -------
    torch.nn.Module
        The model, its layers replaced by layers that start from the best approximation of the
        existing weights at the chosen rank, on the same device and dtype.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5)
    ... )
    >>> model = convert(model, 0.5, exclude=("2",))
    >>> type(model[0]).__name__, model[0].rank, type(model[2]).__name__
    ('LowRankLinear', 10, 'Linear')
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    resolve_rank(rank, 1)  # validates before any work
    if conv not in ("matrix", "tucker"):
        raise ValueError(f"conv must be 'matrix' or 'tucker', got {conv!r}")
    if isinstance(exclude, str):
        raise TypeError("exclude must be an iterable of module names, not a single string")
    excluded = set(exclude)
    names = {name for name, _ in model.named_modules()}
    unknown = excluded - names
    if unknown:
        raise ValueError(f"exclude names modules that model does not have: {sorted(unknown)}")
    if "" not in excluded:
        replaced = _convert_module(model, rank, conv)
        if replaced is not None:
            return replaced
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            qualified = f"{name}.{child_name}" if name else child_name
            if qualified in excluded:
                continue
            new = _convert_module(child, rank, conv)
            if new is not None:
                setattr(module, child_name, new)
    return model


def _convert_module(module: torch.nn.Module, rank: int | float, conv: str) -> Any:
    if type(module) is torch.nn.Linear:
        return _linear(module, rank)
    if type(module) is torch.nn.Conv2d:
        _check_conv(module)
        if conv == "tucker":
            return TuckerConv2d.from_conv(module, rank)
        return _conv_matrix(module, rank)
    return None


def _check_conv(module: torch.nn.Conv2d) -> None:
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError(
            "only Conv2d with groups=1, zero padding and integer padding can be converted, got "
            f"groups={module.groups}, padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r}"
        )


@torch.no_grad()
def _truncated_svd(W: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    P, sig, Qh = torch.linalg.svd(W, full_matrices=False)
    return P[:, :r], torch.diag(sig[:r]), Qh[:r].mT


@torch.no_grad()
def _linear(module: torch.nn.Linear, rank: int | float) -> LowRankLinear:
    W = module.weight
    r = resolve_rank(rank, min(W.shape))
    new = LowRankLinear(
        module.in_features,
        module.out_features,
        r,
        bias=module.bias is not None,
        device=W.device,
        dtype=W.dtype,
        factors=_truncated_svd(W.detach(), r),
    )
    if module.bias is not None:
        new.bias.copy_(module.bias)
    new.train(module.training)
    return new


@torch.no_grad()
def _conv_matrix(module: torch.nn.Conv2d, rank: int | float) -> LowRankConv2d:
    W = module.weight.detach()
    M = W.reshape(W.shape[0], -1)
    r = resolve_rank(rank, min(M.shape))
    new = LowRankConv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,  # type: ignore[arg-type]
        r,
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        bias=module.bias is not None,
        device=W.device,
        dtype=W.dtype,
        factors=_truncated_svd(M, r),
    )
    if module.bias is not None:
        new.bias.copy_(module.bias)
    new.train(module.training)
    return new
