r"""``TuckerConv2d``: a convolution whose 4-way kernel is a Tucker tensor.

The kernel ``W`` (``out x in x kh x kw``) is ``C x_1 U_1 x_2 U_2 x_3 U_3 x_4 U_4`` with the
core ``C`` (``r_1 x r_2 x r_3 x r_4``) and the factors as parameters. The forward pass never
forms ``W``: the ``1 x 1`` convolution with ``U_2^T`` (``in -> r_2`` channels), the
convolution with the small kernel ``C x_3 U_3 x_4 U_4`` (``r_2 -> r_1`` channels) and the
``1 x 1`` convolution with ``U_1`` (``r_1 -> out``). The multilinear ranks adapt per mode when
:class:`~lowrank_integrators.torch.DLRTOptimizer` moves the layer by the rank-adaptive Tucker
BUG integrator (Ceruti, Lubich, Sulz 2023, arXiv:2201.10291), as in TDLRT (Zangrando, Schotthöfer,
Ceruti, Kusch, Tudisco 2023, arXiv:2305.19059).

Training never forms ``W`` or its gradient either: the backward pass of the factored forward
gives the core and the factors their plain gradients and keeps the partial projections
``grad(W) x_2 U_2^T`` and ``grad(W) x_1 U_1^T`` (a channel mode reduced to its rank), from which
the K-step gradient of every mode (:meth:`TuckerConv2d.mode_gradient`) and the gradient of the
core (:meth:`TuckerConv2d.core_gradient`) are formed; products in other bases (the core step
in the augmented bases) come from the recorded inputs and output gradients
(:meth:`TuckerConv2d.kernel_projection`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as tf

from ..tucker import TuckerTensor, multi_mode_product, unfold
from .layers import _check_positive, _pair, channel_map, replace_data

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
        self._partials: list[torch.Tensor] | None = None
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
        """Forget the recorded passes: inputs, output gradients and partial projections."""
        self._records = []
        self._partials = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (``(N, in, H, W)``) without forming the kernel."""
        params = (self.core, self.U1, self.U2, self.U3, self.U4)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            z = _TuckerProduct.apply(x, *params, self)
        else:
            z = self._convolve(x, self._spatial_kernel(self.core, self.U3, self.U4))[0]
        return z if self.bias is None else z + self.bias[:, None, None]

    # --- the factored convolution and its adjoints --------------------------------------------
    @staticmethod
    def _spatial_kernel(core: torch.Tensor, U3: torch.Tensor, U4: torch.Tensor) -> torch.Tensor:
        # C x_3 U_3 x_4 U_4: r_1 x r_2 x kh x kw, the kernel expanded in the spatial modes only
        return torch.einsum("abcd,hc,wd->abhw", core, U3, U4)

    def _convolve(
        self, x: torch.Tensor, spatial: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = channel_map(self.U2.mT, x)
        a = tf.conv2d(b, spatial, None, self.stride, self.padding, self.dilation)
        return channel_map(self.U1, a), b, a

    def _weight_grad(self, inp: torch.Tensor, shape: tuple[int, ...], G: torch.Tensor) -> Any:
        # the gradient of a convolution kernel of ``shape`` mapping ``inp`` to the output of G
        return torch.nn.grad.conv2d_weight(inp, shape, G, self.stride, self.padding, self.dilation)

    def kernel_projection(
        self, bases: list[torch.Tensor | None], skip: int | None = None
    ) -> torch.Tensor:
        r"""``grad(W) x_{j != skip} bases[j]^T`` from the recorded backward passes.

        ``grad(W)`` is the gradient of the loss with respect to the kernel; it is never
        formed: the channel modes are projected on the data (``1 x 1`` convolutions of the
        inputs and the output gradients) before the gradient of a kernel with at most one
        full channel mode is taken.

        Parameters
        ----------
        bases : list of 4 tensors (or None at ``skip``), shapes ``(n_j, k_j)``
        skip : int or None
            The mode left at full size.

        Returns
        -------
        torch.Tensor
            Of shape ``(k_1, ..., n_skip, ..., k_4)``.
        """
        if not self._records:
            raise RuntimeError(
                "TuckerConv2d has no recorded backward pass: call loss.backward() after a "
                "forward pass with gradients enabled"
            )
        B = [None if j == skip else bases[j] for j in range(4)]
        kh, kw = self.kernel_size
        total = None
        dtype = next(b for b in bases if b is not None).dtype
        for x, G in self._records:
            # the passes' dtype (bfloat16 under autocast) for the products with the data
            B = [None if b is None else b.to(G.dtype) for b in B]
            xs = x if B[1] is None else channel_map(B[1].mT, x)
            Gs = G if B[0] is None else channel_map(B[0].mT, G)
            part = self._weight_grad(xs, (int(Gs.shape[1]), int(xs.shape[1]), kh, kw), Gs)
            total = part if total is None else total + part
        assert total is not None
        total = total.to(dtype)
        B = [None if j == skip else bases[j] for j in range(4)]
        return multi_mode_product(total, [None, None, _t(B[2]), _t(B[3])])

    def mode_gradient(self, mode: int, Q: torch.Tensor) -> torch.Tensor:
        r"""The K-step gradient of mode ``mode`` at the start of the step (TDLRT).

        ``Mat_i(grad(W) x_{j != i} U_j^T) Q``: the gradient of the loss with respect to
        ``K_i`` in ``W = Ten_i(K_i V_i^T)``, ``V_i = (kron_{j != i} U_j) Q``, from the partial
        projections the backward passes formed (Zangrando et al. 2023, arXiv:2305.19059).

        Parameters
        ----------
        mode : int
            0 (output channels), 1 (input channels), 2 or 3 (kernel rows, columns).
        Q : torch.Tensor, shape ``(prod_{j != i} r_j, k)``

        Returns
        -------
        torch.Tensor, shape ``(n_mode, k)``
        """
        return unfold(self.mode_projection(mode), mode) @ Q

    def mode_projection(self, mode: int) -> torch.Tensor:
        r"""``grad(W) x_{j != mode} U_j^T`` at the layer's factors, from the backward passes."""
        if self._partials is None:
            raise RuntimeError(
                "TuckerConv2d has no recorded backward pass: call loss.backward() after a "
                "forward pass with gradients enabled"
            )
        A1, A2, P = self._partials
        U3t, U4t = self.U3.detach().mT, self.U4.detach().mT
        if mode == 0:
            return multi_mode_product(A1, [None, None, U3t, U4t])
        if mode == 1:
            return multi_mode_product(A2, [None, None, U3t, U4t])
        if mode == 2:
            return multi_mode_product(P, [None, None, None, U4t])
        if mode == 3:
            return multi_mode_product(P, [None, None, U3t, None])
        raise ValueError(f"mode must be 0, 1, 2 or 3, got {mode!r}")

    def core_gradient(self) -> torch.Tensor:
        r"""``grad(W) x_j U_j^T``: the gradient with respect to the core (the S-step's)."""
        if self._partials is None:
            raise RuntimeError(
                "TuckerConv2d has no recorded backward pass: call loss.backward() after a "
                "forward pass with gradients enabled"
            )
        P = self._partials[2]
        return multi_mode_product(P, [None, None, self.U3.detach().mT, self.U4.detach().mT])

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


def _t(B: torch.Tensor | None) -> torch.Tensor | None:
    return None if B is None else B.mT


class _TuckerProduct(torch.autograd.Function):
    r"""The factored Tucker convolution; its backward also keeps TDLRT's partial projections.

    Forward: ``b = U_2^T x`` (``1 x 1``), ``a = conv(b, C x_3 U_3 x_4 U_4)``, ``z = U_1 a``
    (``1 x 1``). Backward, with ``G`` the gradient of ``z`` and ``G_a = U_1^T G``: the
    gradients of every input (the plain derivatives of ``core`` and ``U_j``), built from

    * ``A_1 = grad(W) x_2 U_2^T`` (``out x r_2 x kh x kw``), the kernel gradient of ``b -> G``;
    * ``A_2 = grad(W) x_1 U_1^T`` (``r_1 x in x kh x kw``), the kernel gradient of ``x -> G_a``;
    * ``P = A_1 x_1 U_1^T`` (``r_1 x r_2 x kh x kw``),

    which the layer keeps (summed over passes) for the K- and S-step gradients of the step.
    No tensor of the size of the kernel ``out x in x kh x kw`` is formed (unless a rank is full).
    """

    @staticmethod
    def forward(ctx: Any, x: Any, core: Any, U1: Any, U2: Any, U3: Any, U4: Any, layer: Any) -> Any:
        spatial = layer._spatial_kernel(core, U3, U4)
        z, b, _ = layer._convolve(x, spatial)
        ctx.save_for_backward(x, b, spatial, core, U1, U2, U3, U4)
        ctx.layer = layer
        return z

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        layer = ctx.layer
        pd = saved[3].dtype  # the factors' dtype
        # under autocast (bfloat16 forward, float32 factors) the backward runs in the dtype of
        # the output gradient; autograd casts the gradients to the dtypes of the inputs
        x, b, spatial, core, U1, U2, U3, U4 = (t.to(G.dtype) for t in saved)
        kh, kw = layer.kernel_size
        r1, r2 = int(core.shape[0]), int(core.shape[1])
        Ga = channel_map(U1.mT, G)
        grad_x = None
        if ctx.needs_input_grad[0]:
            Gb = torch.nn.grad.conv2d_input(
                b.shape, spatial, Ga, layer.stride, layer.padding, layer.dilation
            )
            grad_x = channel_map(U2, Gb)
        A1 = layer._weight_grad(b, (layer.out_channels, r2, kh, kw), G)
        A2 = layer._weight_grad(x, (r1, layer.in_channels, kh, kw), Ga)
        P = torch.einsum("ok,obhw->kbhw", U1, A1)
        # the plain derivatives: W = C x_j U_j, dL/dU_i = Mat_i(grad(W) x_{j != i} U_j^T) Mat_i(C)^T
        g_core = torch.einsum("abhw,hc,wd->abcd", P, U3, U4)
        g1 = torch.einsum("obhw,hc,wd,abcd->oa", A1, U3, U4, core)
        g2 = torch.einsum("aihw,hc,wd,abcd->ib", A2, U3, U4, core)
        g3 = torch.einsum("abhw,wd,abcd->hc", P, U4, core)
        g4 = torch.einsum("abhw,hc,abcd->wd", P, U3, core)
        layer._records.append((x.detach(), G.detach()))
        parts = [A.to(pd) for A in (A1, A2, P)]
        if layer._partials is None:
            layer._partials = parts
        else:
            layer._partials = [s + t for s, t in zip(layer._partials, parts, strict=True)]
        return grad_x, g_core, g1, g2, g3, g4, None
