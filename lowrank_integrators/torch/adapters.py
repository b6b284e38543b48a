r"""Low-rank adapters for fine-tuning: ``W = W0 + U S V^T`` with the pretrained ``W0`` frozen.

:func:`add_adapters` wraps the chosen :class:`torch.nn.Linear` modules of a pretrained model
in a :class:`LowRankAdapter` and freezes everything else (except the modules named
``trainable``); :class:`~lowrank_integrators.torch.GeoLoRA` then moves the factors
``U, S, V`` of every adapter; :func:`merge_adapters` folds the adapters back into plain
linear layers; :func:`adapter_state_dict` and :func:`load_adapter_state_dict` save and load the
adapters (and the trainable modules) apart from the base model, at whatever rank each adapter
has reached.

The conventions follow PEFT (Mangrulkar et al., ``peft`` on PyPI) where they fit: a target
name matches a module whose qualified name equals it or ends with ``"." + name`` (a single
string is a regular expression that must match the whole qualified name); ``trainable`` plays
the part of PEFT's ``modules_to_save``; the adapter state holds the adapter tensors and the
trainable modules only, never the frozen base weights.

An adapter starts with ``S = 0`` and orthonormal ``U``, ``V`` drawn at random, so the adapted
model equals the base model exactly at step 0 (``U S V^T = 0``), as LoRA's ``B = 0`` start
(Hu et al. 2021, arXiv:2106.09685). The integrators of the library accept the zero core: the
first step writes the gradient's directions into the bases.

Schotthöfer, Zangrando, Ceruti, Tudisco, Kusch (2025), GeoLoRA: geometric integration for
parameter efficient fine-tuning, ICLR 2025, arXiv:2410.18720.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .layers import FactoredLayer, LowRankLinear

__all__ = [
    "LowRankAdapter",
    "adapter_state_dict",
    "add_adapters",
    "load_adapter_state_dict",
    "merge_adapters",
]


def _orthonormal(n: int, r: int, generator: Any, dtype: Any, device: Any) -> torch.Tensor:
    a = torch.randn(n, r, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(a)
    return q.to(dtype=dtype, device=device)


class LowRankAdapter(FactoredLayer):
    """``y = base_layer(x) + x (U S V^T)^T``: a frozen linear layer plus a low-rank adapter.

    Parameters
    ----------
    base_layer : torch.nn.Linear
        The pretrained layer. Its weight and bias are frozen (``requires_grad = False``) and
        never changed by the adapter.
    rank : int
        The initial rank, ``1 <= rank <= min(in_features, out_features)``.
    generator : torch.Generator, optional
        For the random orthonormal ``U`` and ``V`` of the start.
    factors : (U, S, V), optional
        Start from these factors instead (``U``: ``out x r``, ``S``: ``r x r``, ``V``:
        ``in x r``), for example when loading a saved adapter.

    Notes
    -----
    The adapter's parameters are ``U``, ``S``, ``V`` only; after ``loss.backward()`` their
    gradients are the gradients in the coordinates of dynamical low-rank training (see
    :class:`~lowrank_integrators.torch.FactoredLayer`), which is what
    :class:`~lowrank_integrators.torch.GeoLoRA` steps with.

    Examples
    --------
    >>> import torch
    >>> base = torch.nn.Linear(8, 4)
    >>> adapter = LowRankAdapter(base, rank=2)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.equal(adapter(x), base(x))), adapter.rank
    (True, 2)
    """

    def __init__(
        self,
        base_layer: torch.nn.Linear,
        rank: int,
        *,
        generator: torch.Generator | None = None,
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, torch.nn.Linear):
            raise TypeError(
                f"base_layer must be a torch.nn.Linear, got {type(base_layer).__name__}"
            )
        m, n = int(base_layer.out_features), int(base_layer.in_features)
        limit = min(m, n)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an int with 1 <= rank <= min(in_features, out_features) = "
                f"{limit}, got {rank!r}"
            )
        base_layer.requires_grad_(False)
        self.base_layer = base_layer
        self.in_features, self.out_features = n, m
        w = base_layer.weight
        if factors is None:
            U = _orthonormal(m, rank, generator, w.dtype, w.device)
            V = _orthonormal(n, rank, generator, w.dtype, w.device)
            S = torch.zeros(rank, rank, dtype=w.dtype, device=w.device)
        else:
            U, S, V = _checked_factors(factors, m, n, w)
        self._init_factors(U, S, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base_layer(x)`` plus the adapter, without forming ``U S V^T``."""
        return self.base_layer(x) + self._factored(x)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """The adapter's update ``U S V^T`` as an ``out x in`` matrix."""
        return (self.U @ self.S) @ self.V.mT

    def merged(self) -> torch.nn.Linear:
        """A plain :class:`torch.nn.Linear` with weight ``W0 + U S V^T`` and the base bias.

        The weight and bias keep the ``requires_grad`` flags of the base layer.
        """
        base = self.base_layer
        with torch.no_grad():
            weight = base.weight + self.delta_weight().to(base.weight.dtype)
        out = torch.nn.Linear(
            self.in_features,
            self.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        out.weight = torch.nn.Parameter(weight, requires_grad=base.weight.requires_grad)
        if base.bias is not None:
            out.bias = torch.nn.Parameter(
                base.bias.detach().clone(), requires_grad=base.bias.requires_grad
            )
        return out

    @property
    def n_adapter_parameters(self) -> int:
        """Number of adapter parameters at the current rank: ``r (out + in) + r^2``."""
        r = self.rank
        return r * (self.out_features + self.in_features) + r * r

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    # the adapter acts on the input as a linear layer does
    _apply_in = LowRankLinear._apply_in
    _apply_in_grad = LowRankLinear._apply_in_grad
    _apply_in_adjoint = LowRankLinear._apply_in_adjoint
    _apply_out = LowRankLinear._apply_out
    _apply_out_adjoint = LowRankLinear._apply_out_adjoint
    _contract = LowRankLinear._contract


def _checked_factors(
    factors: Any, m: int, n: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(factors, (tuple, list)) or len(factors) != 3:
        raise TypeError("factors must be a tuple (U, S, V) of tensors")
    U, S, V = (
        torch.as_tensor(a).detach().to(dtype=like.dtype, device=like.device).clone()
        for a in factors
    )
    r = int(S.shape[0]) if S.ndim == 2 else -1
    if (
        r < 1
        or r > min(m, n)
        or tuple(U.shape) != (m, r)
        or tuple(S.shape) != (r, r)
        or tuple(V.shape) != (n, r)
    ):
        raise ValueError(
            f"factors must have shapes ({m}, r), (r, r), ({n}, r) with 1 <= r <= {min(m, n)}, "
            f"got {tuple(U.shape)}, {tuple(S.shape)}, {tuple(V.shape)}"
        )
    return U, S, V


# --- names ---------------------------------------------------------------------------------------
def _names(arg: str, value: Any) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        out = tuple(value)
        if all(isinstance(v, str) and v for v in out):
            return out
    raise TypeError(f"{arg} must be a string, a sequence of module names or None, got {value!r}")


def _matches(name: str, pattern: str | tuple[str, ...]) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def _inside(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _adapters(model: torch.nn.Module) -> list[tuple[str, LowRankAdapter]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankAdapter)]


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


# --- public functions ----------------------------------------------------------------------------
def add_adapters(
    model: torch.nn.Module,
    rank: int,
    *,
    targets: str | Iterable[str] | None = None,
    trainable: str | Iterable[str] = (),
    generator: torch.Generator | None = None,
) -> torch.nn.Module:
    """Wrap linear layers of ``model`` in low-rank adapters and freeze the rest (in place).

    Parameters
    ----------
    model : torch.nn.Module
        The pretrained model; modified in place and returned.
    rank : int
        The initial rank of every adapter.
    targets : str or sequence of str, optional
        Which :class:`torch.nn.Linear` modules get an adapter, by qualified name (as in
        ``model.named_modules()``). A sequence matches a module whose name equals an entry or
        ends with ``"." + entry``; a single string is a regular expression matched against the
        whole name (PEFT's ``target_modules``). Default: every ``nn.Linear`` outside the
        ``trainable`` modules.
    trainable : str or sequence of str, default ()
        Modules trained in full (PEFT's ``modules_to_save``), such as a new classification
        head; matched as ``targets``. Every other parameter of the model is frozen.
    generator : torch.Generator, optional
        For the random orthonormal bases of the adapters.

    Returns
    -------
    torch.nn.Module
        ``model``, with ``LowRankAdapter`` modules in place of the targets. Its output is that
        of the base model exactly: every adapter starts at ``U S V^T = 0``.

    Raises
    ------
    ValueError
        If no module matches ``targets``, a target is not an ``nn.Linear`` or lies inside a
        trainable module, an entry of ``trainable`` matches nothing, or ``rank`` is too large
        for a target.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> net = add_adapters(net, 4, targets=["0"], trainable=["2"])
    >>> [n for n, p in net.named_parameters() if p.requires_grad]
    ['0.U', '0.S', '0.V', '2.weight', '2.bias']
    """
    _check_model(model)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    target_pat = _names("targets", targets)
    train_pat = _names("trainable", trainable)
    assert train_pat is not None
    if _adapters(model):
        raise ValueError("model already has adapters: merge them or start from the base model")
    modules = dict(model.named_modules())
    train_names = [n for n in modules if n and train_pat and _matches(n, train_pat)]
    if isinstance(train_pat, tuple):
        for p in train_pat:
            if not any(_matches(n, (p,)) for n in modules if n):
                raise ValueError(f"trainable module {p!r} matches no module of the model")
    elif train_pat and not train_names:
        raise ValueError(f"trainable pattern {train_pat!r} matches no module of the model")
    if target_pat is None:
        chosen = [
            n
            for n, m in modules.items()
            if isinstance(m, torch.nn.Linear) and not _inside(n, train_names)
        ]
    else:
        chosen = [n for n in modules if n and _matches(n, target_pat)]
    if not chosen:
        raise ValueError(f"targets {targets!r} match no nn.Linear module of the model")
    for n in chosen:
        if not isinstance(modules[n], torch.nn.Linear):
            raise ValueError(
                f"target {n!r} is a {type(modules[n]).__name__}; adapters wrap nn.Linear only"
            )
        if _inside(n, train_names):
            raise ValueError(f"target {n!r} lies inside a trainable module")
        lin = modules[n]
        limit = min(lin.in_features, lin.out_features)
        if rank > limit:
            raise ValueError(
                f"rank {rank} exceeds min(in_features, out_features) = {limit} of target {n!r}"
            )
    model.requires_grad_(False)
    for n in chosen:
        _set_module(model, n, LowRankAdapter(modules[n], rank, generator=generator))
    for n in train_names:
        model.get_submodule(n).requires_grad_(True)
    return model


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every adapter by a plain ``nn.Linear`` holding ``W0 + U S V^T`` (in place).

    Parameters
    ----------
    model : torch.nn.Module
        A model with :class:`LowRankAdapter` modules; modified in place and returned (as
        PEFT's ``merge_and_unload``). The other modules and their ``requires_grad`` flags are
        left as they are.

    Returns
    -------
    torch.nn.Module
        ``model`` without adapters; its outputs equal those of the adapted model up to the
        round-off of forming ``W0 + U S V^T``.
    """
    _check_model(model)
    found = _adapters(model)
    if not found:
        raise ValueError("model has no LowRankAdapter to merge")
    if isinstance(model, LowRankAdapter):
        return model.merged()
    for name, adapter in found:
        _set_module(model, name, adapter.merged())
    return model


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters and trainable modules of ``model``, without the frozen base weights.

    Parameters
    ----------
    model : torch.nn.Module
        A model with adapters (see :func:`add_adapters`).

    Returns
    -------
    dict of str to torch.Tensor
        ``"<name>.U"``, ``"<name>.S"``, ``"<name>.V"`` for every adapter (at its current rank)
        and ``"<name>"`` for every other parameter that requires gradients (the trainable
        modules), detached copies. Save it with :func:`torch.save`.
    """
    _check_model(model)
    found = _adapters(model)
    if not found:
        raise ValueError("model has no LowRankAdapter to save")
    out: dict[str, torch.Tensor] = {}
    factor_ids = set()
    for name, adapter in found:
        prefix = f"{name}." if name else ""
        for role in ("U", "S", "V"):
            p = adapter._parameters[role]
            out[prefix + role] = p.detach().clone()
            factor_ids.add(id(p))
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in factor_ids:
            out[name] = p.detach().clone()
    return out


def load_adapter_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """Load adapters saved by :func:`adapter_state_dict`, at any rank (in place).

    Parameters
    ----------
    model : torch.nn.Module
        The base model with or without adapters. An ``nn.Linear`` named in ``state`` is wrapped
        in a :class:`LowRankAdapter` first (frozen as by :func:`add_adapters`); an existing
        adapter takes the stored factors at their rank.
    state : mapping of str to torch.Tensor
        As returned by :func:`adapter_state_dict`.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    ValueError
        If a key names no adapter, linear layer or parameter of the model, an adapter lacks one
        of its factors, or a shape does not fit (checked before anything is changed).
    """
    _check_model(model)
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to tensors, got {type(state).__name__}")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    factors: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state[{key!r}] must be a tensor, got {type(value).__name__}")
        owner, _, role = key.rpartition(".")
        target = modules.get(owner)
        if role in ("U", "S", "V") and isinstance(target, (LowRankAdapter, torch.nn.Linear)):
            factors.setdefault(owner, {})[role] = value
        elif key in params:
            if tuple(params[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"state[{key!r}] has shape {tuple(value.shape)}, the model's parameter "
                    f"{tuple(params[key].shape)}"
                )
            plain[key] = value
        else:
            raise ValueError(f"state key {key!r} names no adapter factor or parameter of model")
    checked = {}
    for owner, fs in factors.items():
        missing = [r for r in ("U", "S", "V") if r not in fs]
        if missing:
            raise ValueError(f"adapter {owner!r} lacks the factors {missing} in state")
        target = modules[owner]
        if not owner and not isinstance(target, LowRankAdapter):
            raise ValueError("the model itself is an nn.Linear: wrap it in LowRankAdapter first")
        base = target.base_layer if isinstance(target, LowRankAdapter) else target
        checked[owner] = _checked_factors(
            (fs["U"], fs["S"], fs["V"]), base.out_features, base.in_features, base.weight
        )
    for owner, (U, S, V) in checked.items():
        target = modules[owner]
        if isinstance(target, LowRankAdapter):
            target.set_factors(U, S, V)
            target.clear_records()
        else:
            target.requires_grad_(False)
            adapter = LowRankAdapter(target, int(S.shape[0]), factors=(U, S, V))
            _set_module(model, owner, adapter)
    with torch.no_grad():
        for key, value in plain.items():
            params[key].copy_(value)
    return model
