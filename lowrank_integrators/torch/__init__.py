"""Dynamical low-rank training of PyTorch models (needs the ``torch`` extra).

* :class:`LowRankLinear`, :class:`LowRankConv2d`: layers whose weight (or matricised kernel)
  is ``U S V^T`` with the factors as parameters; :class:`TuckerConv2d`: a convolution with a
  Tucker-factorised kernel.
* :func:`convert`: replace the ``nn.Linear`` and ``nn.Conv2d`` modules of any model by them.
* :class:`DLRTOptimizer`: a :class:`torch.optim.Optimizer` that moves the factors by the
  library's integrators (DLRT by default) and the other parameters by SGD, heavy ball or Adam.
* :func:`mlp`, :func:`lenet5`: small reference models.

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), arXiv:2205.13571 (DLRT); Zangrando,
Schotthöfer, Ceruti, Kusch, Tudisco (2023), arXiv:2305.19059 (TDLRT).
"""

from lowrank_integrators.torch.convert import convert, resolve_rank
from lowrank_integrators.torch.layers import FactoredLayer, LowRankConv2d, LowRankLinear
from lowrank_integrators.torch.models import lenet5, mlp
from lowrank_integrators.torch.optimizer import DLRTOptimizer
from lowrank_integrators.torch.tucker_layers import TuckerConv2d

__all__ = [
    "DLRTOptimizer",
    "FactoredLayer",
    "LowRankConv2d",
    "LowRankLinear",
    "TuckerConv2d",
    "convert",
    "lenet5",
    "mlp",
    "resolve_rank",
]
