r"""``TuckerConv2d``: a convolution whose 4-way kernel is a Tucker tensor.

The kernel ``W`` (``out x in x kh x kw``) is ``C x_1 U_1 x_2 U_2 x_3 U_3 x_4 U_4`` with the
core ``C`` (``r_1 x r_2 x r_3 x r_4``) and the factors as parameters. The forward pass never
forms ``W``: the ``1 x 1`` convolution with ``U_2^T`` (``in -> r_2`` channels), the
convolution with the small kernel ``C x_3 U_3 x_4 U_4`` (``r_2 -> r_1`` channels) and the
``1 x 1`` convolution with ``U_1`` (``r_1 -> out``). The multilinear ranks adapt per mode when
:class:`~lowrank_integrators.torch.DLRTOptimizer` moves the layer by the rank-adaptive Tucker
BUG integrator (Ceruti, Lubich, Sulz 2023, arXiv:2201.10291), as in TDLRT (Zangrando, Schotthöfer,
Ceruti, Kusch, Tudisco 2023, arXiv:2305.19059).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as tf

from ..tucker import TuckerTensor
from .layers import _check_positive, _pair, replace_data

__all__ = ["TuckerConv2d"]

_ROLES = ("core", "U1", "U2", "U3", "U4")


def tucker_rank_limits(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The largest rank of each mode unfolding of a tensor of ``shape``."""
    return tuple(
        min(n, math.prod(m for j, m in enumerate(shape) if j != i)) for i, n in enumerate(shape)
    )


class TuckerConv2d(torch.nn.Module):
    """A 2-D convolution with a Tucker-factorised kernel.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    ranks : int or sequence of 4 ints
        Multilinear ranks of the kernel in the modes (out, in, kh, kw); an int is used for
        every mode and clipped to each mode's largest possible rank.
    stride, padding, dilation : int or (int, int)
        As for :class:`torch.nn.Conv2d` (zero padding; ``groups=1``).
    bias : bool, default True
    device, dtype : optional
    generator : torch.Generator, optional
        For the initial draw: the truncated HOSVD of the draw of :class:`torch.nn.Conv2d`.
    tucker : TuckerTensor, optional
        The initial kernel instead of the draw (its ranks replace ``ranks``).

    Examples
    --------
    >>> import torch
    >>> conv = TuckerConv2d(3, 8, 3, ranks=2, padding=1)
    >>> conv(torch.randn(1, 3, 5, 5)).shape, conv.ranks
    (torch.Size([1, 8, 5, 5]), (2, 2, 2, 2))
    """

    core: torch.nn.Parameter
    U1: torch.nn.Parameter
    U2: torch.nn.Parameter
    U3: torch.nn.Parameter
    U4: torch.nn.Parameter

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        ranks: int | tuple[int, int, int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        tucker: TuckerTensor | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive("in_channels", in_channels)
        self.out_channels = _check_positive("out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _pair("padding", padding)
        self.dilation = _pair("dilation", dilation)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError("kernel_size, stride and dilation must be >= 1")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        shape = (out_channels, in_channels, *self.kernel_size)
        target = self._ranks_for(ranks, shape)
        dtype = dtype or torch.get_default_dtype()
        bound = 1.0 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        if tucker is None:
            W = torch.rand(shape, generator=generator, dtype=dtype, device=device)
            T = TuckerTensor.from_dense(W * (2 * bound) - bound, target)
        else:
            if not isinstance(tucker, TuckerTensor) or tuple(tucker.shape) != shape:
                raise ValueError(f"tucker must be a TuckerTensor of shape {shape}")
            T = TuckerTensor(
                tucker.core.to(device=device, dtype=dtype),
                [U.to(device=device, dtype=dtype) for U in tucker.factors],
                check=False,
            )
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.core = torch.nn.Parameter(T.core.contiguous())
        for i, U in enumerate(T.factors, start=1):
            setattr(self, f"U{i}", torch.nn.Parameter(U.contiguous()))
        self.bias = (
            torch.nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device))
            if bias
            else None
        )
        self._tag()

    @staticmethod
    def _ranks_for(ranks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
        limits = tucker_rank_limits(shape)
        if isinstance(ranks, int) and not isinstance(ranks, bool):
            ranks = (ranks,) * 4
        if (
            not isinstance(ranks, (tuple, list))
            or len(ranks) != 4
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks)
        ):
            raise ValueError(f"ranks must be an int >= 1 or four such ints, got {ranks!r}")
        return tuple(min(r, n) for r, n in zip(ranks, limits, strict=True))

    @classmethod
    @torch.no_grad()
    def from_conv(cls, module: torch.nn.Conv2d, rank: int | float) -> TuckerConv2d:
        """The truncated HOSVD of a :class:`torch.nn.Conv2d`'s kernel.

        Parameters
        ----------
        module : torch.nn.Conv2d
            ``groups=1``, zero padding.
        rank : int or float
            Per mode: an int clipped to the mode's largest rank, or a fraction in ``(0, 1]``.

        Returns
        -------
        TuckerConv2d
        """
        from .convert import resolve_rank

        W = module.weight.detach()
        ranks = tuple(resolve_rank(rank, n) for n in tucker_rank_limits(tuple(W.shape)))
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            ranks,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            bias=module.bias is not None,
            device=W.device,
            dtype=W.dtype,
            tucker=TuckerTensor.from_dense(W, ranks),
        )
        if module.bias is not None:
            new.bias.copy_(module.bias)
        new.train(module.training)
        return new

    def _tag(self) -> None:
        for role in _ROLES:
            p = self._parameters[role]
            p._lowrank_layer = self  # type: ignore[union-attr]
            p._lowrank_role = role  # type: ignore[union-attr]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tag()

    @property
    def ranks(self) -> tuple[int, ...]:
        """The multilinear ranks ``(r_1, r_2, r_3, r_4)``."""
        return tuple(int(n) for n in self.core.shape)

    @property
    def tucker(self) -> TuckerTensor:
        """The kernel as a :class:`~lowrank_integrators.TuckerTensor` of the parameters."""
        return TuckerTensor(
            self.core.detach(), [getattr(self, f"U{i}").detach() for i in range(1, 5)], check=False
        )

    @torch.no_grad()
    def set_tucker(self, T: TuckerTensor) -> None:
        """Replace the kernel by ``T`` (any multilinear ranks).

        Parameters
        ----------
        T : TuckerTensor
            Of shape ``(out, in, kh, kw)``.
        """
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        if tuple(T.shape) != shape:
            raise ValueError(f"T must have shape {shape}, got {tuple(T.shape)}")
        ref = self.core
        for role, new in zip(_ROLES, (T.core, *T.factors), strict=True):
            p = self._parameters[role]
            assert p is not None
            replace_data(p, new.detach().to(device=ref.device, dtype=ref.dtype).contiguous())
        self._tag()

    def clear_records(self) -> None:
        """Forget the recorded inputs and output gradients of the backward passes."""
        self._records = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (``(N, in, H, W)``) without forming the kernel."""
        spatial = torch.einsum("abcd,hc,wd->abhw", self.core, self.U3, self.U4)
        b = tf.conv2d(x, self.U2.mT[:, :, None, None])
        a = tf.conv2d(b, spatial, None, self.stride, self.padding, self.dilation)
        z = tf.conv2d(a, self.U1[:, :, None, None])
        if z.requires_grad:
            xd = x.detach()
            z.register_hook(lambda G: self._records.append((xd, G.detach())))
        return z if self.bias is None else z + self.bias[:, None, None]

    def kernel_gradient(self) -> torch.Tensor:
        """The gradient of the loss with respect to the kernel, from the recorded passes.

        It has the size of the kernel (``out x in x kh x kw``), which for a convolution is
        small next to its activations; the Tucker integrator projects it onto the bases.
        """
        if not self._records:
            raise RuntimeError(
                "TuckerConv2d has no recorded backward pass: call loss.backward() after a "
                "forward pass with gradients enabled"
            )
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        return sum(
            torch.nn.grad.conv2d_weight(x, shape, G, self.stride, self.padding, self.dilation)
            for x, G in self._records
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = [prefix + k for k in _ROLES]
        if all(k in state_dict for k in keys):
            with torch.no_grad():
                for role, k in zip(_ROLES, keys, strict=True):
                    p = self._parameters[role]
                    assert p is not None
                    shape = tuple(state_dict[k].shape)
                    if tuple(p.shape) != shape and len(shape) == p.ndim:
                        replace_data(p, torch.empty(shape, dtype=p.dtype, device=p.device))
            self.clear_records()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"ranks={self.ranks}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )
