"""Dynamical low-rank training of PyTorch models (needs the ``torch`` extra).

* :class:`LowRankLinear`, :class:`LowRankConv2d`: layers whose weight (or matricised kernel)
  is ``U S V^T`` with the factors as parameters; :class:`TuckerConv2d`: a convolution with a
  Tucker-factorised kernel.
* :func:`convert`: replace the ``nn.Linear`` and ``nn.Conv2d`` modules of any model by them.
* :class:`DLRTOptimizer`: a :class:`torch.optim.Optimizer` that moves the factors by the
  library's integrators (DLRT by default) and the other parameters by SGD, heavy ball or Adam.
* :func:`mlp`, :func:`lenet5`: small reference models.
* :func:`add_adapters`, :class:`LowRankAdapter`, :func:`merge_adapters`,
  :func:`adapter_state_dict`, :func:`load_adapter_state_dict`: low-rank adapters
  ``W0 + U S V^T`` on frozen pretrained linear layers, and :class:`GeoLoRA`, the optimizer that
  fine-tunes them with adaptive ranks (Schotthöfer et al. 2025, arXiv:2410.18720).

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), arXiv:2205.13571 (DLRT); Zangrando,
Schotthöfer, Ceruti, Kusch, Tudisco (2023), arXiv:2305.19059 (TDLRT).
"""

from lowrank_integrators.torch.adapters import (
    LowRankAdapter,
    adapter_state_dict,
    add_adapters,
    load_adapter_state_dict,
    merge_adapters,
)
from lowrank_integrators.torch.convert import convert, resolve_rank
from lowrank_integrators.torch.geolora import BudgetRecord, GeoLoRA, adapter_parameters
from lowrank_integrators.torch.layers import FactoredLayer, LowRankConv2d, LowRankLinear
from lowrank_integrators.torch.models import lenet5, mlp
from lowrank_integrators.torch.optimizer import DLRTOptimizer
from lowrank_integrators.torch.tucker_layers import TuckerConv2d

__all__ = [
    "BudgetRecord",
    "DLRTOptimizer",
    "FactoredLayer",
    "GeoLoRA",
    "LowRankAdapter",
    "LowRankConv2d",
    "LowRankLinear",
    "TuckerConv2d",
    "adapter_parameters",
    "adapter_state_dict",
    "add_adapters",
    "convert",
    "lenet5",
    "load_adapter_state_dict",
    "merge_adapters",
    "mlp",
    "resolve_rank",
]
