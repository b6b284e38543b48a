r"""Low-rank linear and convolution layers whose factors the integrators move.

A layer holds its weight as ``W = U S V^T`` with ``U`` (``n_out x r``), ``S`` (``r x r``) and
``V`` (``n_in x r``) as :class:`torch.nn.Parameter`\ s, and forms ``W`` only where the factors
do not compress it (see :meth:`FactoredLayer.forms_kernel`). For a
convolution the kernel ``(out, in, kh, kw)`` is matricised as ``out x (in kh kw)`` (as in
Schotthöfer et al. 2022, arXiv:2205.13571): the layer is a convolution with the ``r`` filters
``V^T`` followed by the ``1 x 1`` convolution with ``U S``.

After ``loss.backward()`` the gradients of the factors hold the gradients in the coordinates of
dynamical low-rank training at ``W = U S V^T`` (not the plain derivatives of ``U`` and ``V``):

* ``U.grad = grad(W) V``: the gradient of the loss with respect to ``K`` in ``W = K V^T``;
* ``V.grad = grad(W)^T U``: with respect to ``L`` in ``W = U L^T``;
* ``S.grad = U^T grad(W) V``: with respect to ``S``.

The layer also records, for the backward passes since the last optimizer step, its input and
the gradient of its output, so that :class:`~lowrank_integrators.torch.DLRTOptimizer` can form
``grad(W) V``, ``grad(W)^T U`` and ``U^T grad(W) V`` for the new bases of a step without
forming ``grad(W)``. A layer used several times in one forward pass, or several backward
passes before a step (gradient accumulation), add up as autograd does.

Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022), Low-rank lottery tickets: finding
efficient low-rank neural networks via matrix differential equations, NeurIPS 35,
arXiv:2205.13571.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as tf

from ..integrators.augmentation import leading_signs

__all__ = ["FactoredLayer", "LowRankConv2d", "LowRankLinear", "Record"]

_PAIR = tuple[int, int]


def _pair(name: str, value: Any) -> _PAIR:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def replace_data(p: torch.nn.Parameter, new: torch.Tensor) -> None:
    """Give ``p`` the values ``new`` (any shape), keeping the parameter object.

    Autograd keeps the shape a leaf had when its gradient accumulator was made (as long as an
    old graph, such as the previous loss, holds it) and renews the accumulator only when the
    dtype or device changes; passing through another dtype renews it for the new shape.
    """
    if tuple(new.shape) != tuple(p.shape):
        other = torch.float32 if p.dtype != torch.float32 else torch.float64
        p.data = torch.empty(0, dtype=other, device=p.device)
        p.grad = None
    p.data = new


def channel_map(M: torch.Tensor, t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The ``1 x 1`` convolution of ``t`` (``(N, c, H, W)``) with the ``k x c`` matrix ``M``.

    A batched matrix product over the flattened positions: on the CPU several times faster
    than ``conv2d`` with a ``1 x 1`` kernel, and the same numbers up to round-off. A ``bias``
    (``k`` entries) is added to the product in place.
    """
    out = torch.matmul(M, t.flatten(2))
    if bias is not None:
        # in place on the fresh product: baddbmm would first copy the broadcast bias over
        # the whole output
        out.add_(bias.to(out.dtype)[None, :, None])
    return out.unflatten(2, t.shape[2:])


def channel_contract(G: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum over samples and positions of G a^T``: ``(N, o, H, W), (N, k, H, W) -> o x k``."""
    return torch.matmul(G.flatten(2), a.flatten(2).mT).sum(dim=0)


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


class Record(NamedTuple):
    """One recorded backward pass of a :class:`FactoredLayer`.

    Attributes
    ----------
    x : torch.Tensor or None
        The layer's input; None where ``grad`` is formed.
    G : torch.Tensor or None
        The gradient of the loss with respect to the layer's output (before the bias); None
        where ``grad`` is formed.
    formed : tuple or None
        ``(U0, G U0, V0, x V0)``: the products with the factors that the pass formed, for
        bases that extend them; None where none is to be reused.
    grad : torch.Tensor or None
        ``grad(W)`` (``n_out x n_in``) where the pass formed it (see
        :meth:`FactoredLayer.forms_gradient`); every product of the step is then taken from it,
        and the record does not keep ``x`` and ``G``.
    """

    x: torch.Tensor | None
    G: torch.Tensor | None
    formed: tuple[torch.Tensor, ...] | None
    grad: torch.Tensor | None


class _FactoredProduct(torch.autograd.Function):
    """``z = out(in(x, V), U S)`` with DLRT-coordinate gradients and a record of ``(x, G)``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, U: Any, S: Any, V: Any, bias: Any, layer: Any
    ) -> torch.Tensor:
        if layer.forms_kernel(int(S.shape[0])):
            # the factored product would cost at least the dense one
            z = layer._apply_kernel(x, (U @ S) @ V.mT, bias)
            a = None
        else:
            a = layer._apply_in(x, V)
            z = layer._apply_out(a, U @ S, bias)
        ctx.save_for_backward(x, a, U, S, V)
        ctx.layer = layer
        return z

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        x, a, U0, S, V0 = ctx.saved_tensors
        layer = ctx.layer
        # under autocast (bfloat16 forward, float32 factors) the backward runs in the dtype of
        # the output gradient; autograd casts the gradients to the dtypes of the inputs
        cd = G.dtype
        # detached: a 2-D by 3-D matmul with an operand that requires grad is folded into one
        # product over copies of transposes (the channel maps of a convolution)
        x, U, S, V = (t.detach().to(cd) for t in (x, U0, S, V0))
        G = G.detach()
        grad_x = grad_b = None
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        if a is None or layer.forms_gradient(int(S.shape[0])):
            # grad(W) (n_out x n_in), the bias gradient, and the input gradient through the
            # kernel where the forward formed it: one backward of the dense layer
            W = (U @ S) @ V.mT if a is None and need_x else None
            grad_x, gW, grad_b = layer._kernel_backward(x, G, W, need_b)
            if need_x and a is not None:
                grad_x = layer._apply_in_grad(x, V, layer._apply_out_adjoint(G, U @ S))
            # every product of the step comes from grad(W): the input and the output gradient
            # are released with this backward, as a dense layer's are, not kept until the
            # optimizer's step (measured 2-6 % faster per LeNet5 training step, batch 64-128)
            layer._records.append(Record(None, None, None, gW))
            gK = gW @ V  # grad(W) V
            gL = gW.mT @ U  # grad(W)^T U
            return grad_x, gK, U.mT @ gK, gL, grad_b, None
        if need_b:
            grad_b = layer._bias_gradient(G)
        a = a.detach().to(cd)
        gu = layer._apply_out_adjoint(G, U)  # (G U) in the layout of a
        if ctx.needs_input_grad[0]:
            grad_x = layer._apply_in_grad(x, V, layer._apply_out_adjoint_core(gu, S))
        # the products with U and V that this pass formed, for bases that extend them
        layer._records.append(Record(x, G, (U0.detach(), gu, V0.detach(), a), None))
        gK = layer._contract(G, a)  # grad(W) V
        gL = layer._apply_in_adjoint(x, gu)  # grad(W)^T U
        gS = U.mT @ gK  # U^T grad(W) V, from the small product
        return grad_x, gK, gS, gL, grad_b, None


class FactoredLayer(torch.nn.Module):
    """Base class of the layers ``W = U S V^T`` (parameters ``U``, ``S``, ``V``).

    Subclasses say how ``V`` acts on the input (``_apply_in``) and ``U S`` on the result
    (``_apply_out``), with the adjoints. The rank is ``S.shape[0]``; it changes when the
    optimizer or ``load_state_dict`` gives the layer factors of another rank.
    """

    U: torch.nn.Parameter
    S: torch.nn.Parameter
    V: torch.nn.Parameter

    def _init_factors(self, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
        self.U = torch.nn.Parameter(U.contiguous())
        self.S = torch.nn.Parameter(S.contiguous())
        self.V = torch.nn.Parameter(V.contiguous())
        self._records: list[Record] = []
        self._tag()

    def _tag(self) -> None:
        # lets DLRTOptimizer(model.parameters()) find the layer of a factor
        for role in ("U", "S", "V"):
            p = self._parameters[role]
            if p is not None:
                p._lowrank_layer = self  # type: ignore[attr-defined]
                p._lowrank_role = role  # type: ignore[attr-defined]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tag()

    @property
    def rank(self) -> int:
        """The current rank ``r``."""
        return int(self.S.shape[0])

    @property
    def max_rank(self) -> int:
        """The largest rank the weight matrix can have."""
        return min(int(self.U.shape[0]), int(self.V.shape[0]))

    @torch.no_grad()
    def set_factors(self, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
        """Replace the weight by ``U S V^T`` (any rank; the parameters keep their identity).

        Parameters
        ----------
        U : torch.Tensor, shape (n_out, r)
        S : torch.Tensor, shape (r, r)
        V : torch.Tensor, shape (n_in, r)
        """
        m, n = int(self.U.shape[0]), int(self.V.shape[0])
        r = int(S.shape[0])
        if tuple(U.shape) != (m, r) or tuple(S.shape) != (r, r) or tuple(V.shape) != (n, r):
            raise ValueError(
                f"factors must have shapes ({m}, r), (r, r), ({n}, r), got {tuple(U.shape)}, "
                f"{tuple(S.shape)}, {tuple(V.shape)}"
            )
        ref = self.S
        for p, new in ((self.U, U), (self.S, S), (self.V, V)):
            replace_data(p, new.detach().to(device=ref.device, dtype=ref.dtype).contiguous())
        self._tag()

    def clear_records(self) -> None:
        """Forget the recorded inputs and output gradients of the backward passes."""
        self._records.clear()

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
        keys = [prefix + k for k in ("U", "S", "V")]
        if all(k in state_dict for k in keys):
            U, S, V = (state_dict[k] for k in keys)
            if tuple(U.shape[:1]) == tuple(self.U.shape[:1]) and tuple(V.shape[:1]) == tuple(
                self.V.shape[:1]
            ):
                r = int(S.shape[0])
                # resize to the stored rank; the values are copied by the default loader
                with torch.no_grad():
                    for p, shape in (
                        (self.U, (self.U.shape[0], r)),
                        (self.S, (r, r)),
                        (self.V, (self.V.shape[0], r)),
                    ):
                        if tuple(p.shape) != shape:
                            replace_data(p, torch.empty(shape, dtype=p.dtype, device=p.device))
                self.clear_records()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _factored(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` through ``W = U S V^T``, plus ``bias`` (added in the same product)."""
        U, S, V = self.U, self.S, self.V
        if torch.is_grad_enabled() and (U.requires_grad or S.requires_grad or V.requires_grad):
            return _FactoredProduct.apply(x, U, S, V, bias, self)
        if self.forms_kernel(int(S.shape[0])):
            return self._apply_kernel(x, (U @ S) @ V.mT, bias)
        return self._apply_out(self._apply_in(x, V), U @ S, bias)

    # --- what a subclass provides -----------------------------------------------------------
    def _apply_in(self, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_in_grad(self, x: torch.Tensor, V: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_in_adjoint(self, x: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        """``sum over samples`` of the input map's adjoint: an ``n_in x k`` matrix."""
        raise NotImplementedError

    def _apply_out(
        self, a: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def _bias_gradient(self, G: torch.Tensor) -> torch.Tensor:
        """The gradient of a bias added to the output, from the output gradient ``G``."""
        raise NotImplementedError

    def _apply_out_adjoint(self, G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_out_adjoint_core(self, gu: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        return self._apply_out_adjoint(gu, S)

    def _contract(self, G: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``G^T a`` summed over samples (and positions): ``n_out x k``."""
        raise NotImplementedError

    def _contract_core(self, gu: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._contract(gu, a)

    # --- products of the recorded gradient ----------------------------------------------------
    #: The axis of the columns (the rank index) in the products with ``U`` and ``V``.
    _column_axis = -1

    def _extend(
        self, B: torch.Tensor, B0: torch.Tensor, formed: torch.Tensor, new: Any
    ) -> torch.Tensor:
        """A product with ``B``, reusing ``formed`` (the product with ``B0``) where it can.

        The augmented bases of the integrators keep the start basis, up to column signs, as
        their leading block: then only the product with the new columns is formed.
        """
        r = int(B0.shape[1])
        if tuple(B.shape) == tuple(B0.shape):
            return formed if torch.equal(B, B0) else new(B)
        signs = leading_signs(B, B0)
        if signs is None:
            return new(B)
        shape = [1] * formed.ndim
        shape[self._column_axis] = r
        signs = signs.to(formed.dtype).reshape(shape)
        return torch.cat([formed * signs, new(B[:, r:])], dim=self._column_axis)

    def _products(self, rec: Record, U: Any, V: Any) -> tuple[Any, Any]:
        """``G U`` and ``x V`` (in the layouts of the layer) of one recorded pass."""
        x, G, formed, _ = rec
        cd = G.dtype  # the dtype of the pass (bfloat16 under autocast)
        gu = a = None
        if U is not None:

            def gu_of(B: torch.Tensor) -> torch.Tensor:
                return self._apply_out_adjoint(G, B.to(cd))

            gu = gu_of(U) if formed is None else self._extend(U, formed[0], formed[1], gu_of)
        if V is not None:

            def a_of(B: torch.Tensor) -> torch.Tensor:
                return self._apply_in(x, B.to(cd))

            a = a_of(V) if formed is None else self._extend(V, formed[2], formed[3], a_of)
        return gu, a

    def grad_right(self, V: torch.Tensor, *, records: list[Any] | None = None) -> torch.Tensor:
        """``grad(W) V`` from the recorded backward passes.

        Parameters
        ----------
        V : torch.Tensor, shape (n_in, k)
        records : list, optional
            The passes to use instead of the layer's own (entries ``(x, G, formed)``;
            ``formed`` None where no product of the pass is to be reused).

        Returns
        -------
        torch.Tensor, shape (n_out, k)
        """
        recs = self._require_records(records)
        out = sum(
            rec.grad @ V.to(rec.grad.dtype)
            if rec.grad is not None
            else self._contract(rec.G, self._products(rec, None, V)[1])
            for rec in recs
        )
        return out.to(V.dtype)

    def grad_left(self, U: torch.Tensor, *, records: list[Any] | None = None) -> torch.Tensor:
        """``grad(W)^T U`` from the recorded backward passes (shape ``(n_in, k)``)."""
        recs = self._require_records(records)
        out = sum(
            rec.grad.mT @ U.to(rec.grad.dtype)
            if rec.grad is not None
            else self._apply_in_adjoint(rec.x, self._products(rec, U, None)[0])
            for rec in recs
        )
        return out.to(U.dtype)

    def grad_project(
        self, U: torch.Tensor, V: torch.Tensor, *, records: list[Any] | None = None
    ) -> torch.Tensor:
        """``U^T grad(W) V`` from the recorded backward passes (shape ``(k_U, k_V)``)."""
        recs = self._require_records(records)
        out = sum(
            U.to(rec.grad.dtype).mT @ (rec.grad @ V.to(rec.grad.dtype))
            if rec.grad is not None
            else self._contract_core(*self._products(rec, U, V))
            for rec in recs
        )
        return out.to(U.dtype)

    def forms_gradient(self, rank: int) -> bool:
        """Whether a backward pass at ``rank`` forms ``grad(W)`` instead of products with it.

        Per sample (and output position of a convolution), forming ``grad(W)`` costs
        ``n_out n_in`` multiply-adds; the products of a DLRT step (``grad(W) V``,
        ``grad(W)^T U``, and for the new columns ``q = min(n_in, 2r) - r`` of the augmented
        ``V`` the product ``x V1`` and its contraction with the output gradient) cost
        ``(n_out + n_in)(r + q)``. The cheaper is taken: ``grad(W)`` for small kernels (such
        as a first convolution) and ranks near the break-even; the products otherwise. Either
        way the step sees the same numbers up to round-off. The weight itself is formed only
        where :meth:`forms_kernel` says.
        """
        if type(self)._kernel_gradient is FactoredLayer._kernel_gradient:
            return False  # a layer that does not say how to form it
        m, n = int(self.U.shape[0]), int(self.V.shape[0])
        q = min(n, 2 * rank) - rank
        return m * n < (m + n) * (rank + q)

    def forms_kernel(self, rank: int) -> bool:
        """Whether a forward pass at ``rank`` forms the weight ``W = U S V^T`` itself.

        Only where the factors do not compress it: ``n_out n_in <= r (n_out + n_in) + r^2``,
        the entries of ``U``, ``S`` and ``V``, such as a first convolution with one input
        channel (``20 x 25``) at rank 10 or more. The product with ``W`` then costs at most
        ``r^2`` multiply-adds per sample (and output position) more than the two factored
        products together, and it is one operation instead of two (on a CPU a convolution
        with few filters costs about as much as one with 16). The backward pass then forms
        ``grad(W)`` (see :meth:`forms_gradient`). The outputs and gradients are the same up to
        round-off.
        """
        if type(self)._apply_kernel is FactoredLayer._apply_kernel:
            return False  # a layer that does not say how to apply it
        m, n = int(self.U.shape[0]), int(self.V.shape[0])
        return m * n <= rank * (m + n + rank)

    def _apply_kernel(
        self, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` through the formed weight ``W`` (``n_out x n_in``), plus ``bias``."""
        raise NotImplementedError

    def _apply_kernel_input_grad(
        self, x: torch.Tensor, W: torch.Tensor, G: torch.Tensor
    ) -> torch.Tensor:
        """The gradient with respect to the input ``x`` of :meth:`_apply_kernel`."""
        raise NotImplementedError

    def _kernel_gradient(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """``grad(W)`` (``n_out x n_in``) of one pass."""
        raise NotImplementedError

    def _kernel_backward(
        self, x: torch.Tensor, G: torch.Tensor, W: torch.Tensor | None, need_bias: bool
    ) -> tuple[Any, torch.Tensor, Any]:
        """``(grad_x, grad(W), grad_b)`` of the dense layer with kernel ``W``.

        ``grad_x`` only where ``W`` is given, ``grad_b`` only where ``need_bias`` (else
        ``None``). A subclass whose library computes them together overrides this.
        """
        grad_x = None if W is None else self._apply_kernel_input_grad(x, W, G)
        grad_b = self._bias_gradient(G) if need_bias else None
        return grad_x, self._kernel_gradient(x, G), grad_b

    def _require_records(self, records: list[Any] | None = None) -> list[Any]:
        recs = self._records if records is None else records
        if not recs:
            raise RuntimeError(
                f"{type(self).__name__} has no recorded backward pass: call loss.backward() "
                "after a forward pass with gradients enabled"
            )
        return recs


def _initial_factors(
    m: int, n: int, rank: int, fan_in: int, dtype: Any, device: Any, generator: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the best rank-r approximation of nn.Linear's default draw U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    W = torch.rand(m, n, generator=generator, dtype=dtype, device=device) * (2 * bound) - bound
    P, sig, Qh = torch.linalg.svd(W, full_matrices=False)
    return P[:, :rank], torch.diag(sig[:rank]), Qh[:rank].mT


def _checked(
    factors: Any, m: int, n: int, rank: int, dtype: Any, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(factors, (tuple, list)) or len(factors) != 3:
        raise TypeError("factors must be a tuple (U, S, V) of tensors")
    U, S, V = (torch.as_tensor(a).detach().to(device=device, dtype=dtype) for a in factors)
    shapes = (tuple(U.shape), tuple(S.shape), tuple(V.shape))
    if shapes != ((m, rank), (rank, rank), (n, rank)):
        raise ValueError(
            f"factors must have shapes ({m}, {rank}), ({rank}, {rank}), ({n}, {rank}), got "
            f"{tuple(U.shape)}, {tuple(S.shape)}, {tuple(V.shape)}"
        )
    return U, S, V


class LowRankLinear(FactoredLayer):
    """``y = x (U S V^T)^T + b``: a linear layer of rank ``r``.

    Parameters
    ----------
    in_features, out_features : int
        As for :class:`torch.nn.Linear`.
    rank : int
        ``1 <= rank <= min(in_features, out_features)``.
    bias : bool, default True
    device, dtype : optional
    generator : torch.Generator, optional
        For the initial draw: the best rank-``r`` approximation of the draw of
        :class:`torch.nn.Linear`.
    factors : (U, S, V), optional
        Initial factors instead of the draw (``U`` orthonormal ``out x r``, ``V`` orthonormal
        ``in x r``).

    Examples
    --------
    >>> import torch
    >>> layer = LowRankLinear(20, 10, rank=4)
    >>> layer(torch.randn(3, 20)).shape, layer.rank
    (torch.Size([3, 10]), 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _check_positive("in_features", in_features)
        self.out_features = _check_positive("out_features", out_features)
        limit = min(in_features, out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an int with 1 <= rank <= min(in_features, out_features) = "
                f"{limit}, got {rank!r}"
            )
        dtype = dtype or torch.get_default_dtype()
        if factors is None:
            factors = _initial_factors(
                out_features, in_features, rank, in_features, dtype, device, generator
            )
        self._init_factors(*_checked(factors, out_features, in_features, rank, dtype, device))
        self.bias = (
            torch.nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
            if bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b``, without forming ``W`` where the factors compress it."""
        return self._factored(x, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )

    def _apply_in(self, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return x @ V

    def _apply_in_grad(self, x: torch.Tensor, V: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        return ga @ V.mT

    def _apply_in_adjoint(self, x: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]).mT @ ga.reshape(-1, ga.shape[-1])

    def _apply_out(
        self, a: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return tf.linear(a, K, bias)

    def _bias_gradient(self, G: torch.Tensor) -> torch.Tensor:
        return G.reshape(-1, G.shape[-1]).sum(0)

    def _apply_out_adjoint(self, G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return G @ U

    def _contract(self, G: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return G.reshape(-1, G.shape[-1]).mT @ a.reshape(-1, a.shape[-1])

    def _kernel_gradient(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return self._contract(G, x)

    def _apply_kernel(
        self, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return tf.linear(x, W, bias)

    def _apply_kernel_input_grad(
        self, x: torch.Tensor, W: torch.Tensor, G: torch.Tensor
    ) -> torch.Tensor:
        return G @ W


class LowRankConv2d(FactoredLayer):
    """A 2-D convolution whose kernel, matricised as ``out x (in kh kw)``, is ``U S V^T``.

    The layer is the convolution with the ``r`` filters ``V^T`` (reshaped to
    ``(r, in, kh, kw)``) followed by the ``1 x 1`` convolution with ``U S`` and the bias.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    rank : int
        ``1 <= rank <= min(out_channels, in_channels * kh * kw)``.
    stride, padding, dilation : int or (int, int)
        As for :class:`torch.nn.Conv2d` (zero padding; ``groups=1``).
    bias : bool, default True
    device, dtype : optional
    generator : torch.Generator, optional
        For the initial draw (as for :class:`LowRankLinear`).
    factors : (U, S, V), optional
        Initial factors of the matricised kernel instead of the draw.

    Examples
    --------
    >>> import torch
    >>> conv = LowRankConv2d(3, 8, 3, rank=2, padding=1)
    >>> conv(torch.randn(1, 3, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | _PAIR,
        rank: int,
        stride: int | _PAIR = 1,
        padding: int | _PAIR = 0,
        dilation: int | _PAIR = 1,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive("in_channels", in_channels)
        self.out_channels = _check_positive("out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _pair("padding", padding)
        self.dilation = _pair("dilation", dilation)
        for name, v in (("kernel_size", self.kernel_size), ("stride", self.stride)):
            if min(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if min(self.padding) < 0 or min(self.dilation) < 1:
            raise ValueError(
                f"padding must be >= 0 and dilation >= 1, got {self.padding} and {self.dilation}"
            )
        n = in_channels * self.kernel_size[0] * self.kernel_size[1]
        limit = min(out_channels, n)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an int with 1 <= rank <= min(out_channels, in_channels * kh * kw)"
                f" = {limit}, got {rank!r}"
            )
        dtype = dtype or torch.get_default_dtype()
        if factors is None:
            factors = _initial_factors(out_channels, n, rank, n, dtype, device, generator)
        self._init_factors(*_checked(factors, out_channels, n, rank, dtype, device))
        self.bias = (
            torch.nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device))
            if bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (``(N, in, H, W)``), without forming the kernel where the
        factors compress it."""
        return self._factored(x, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )

    _column_axis = 1

    def _filters(self, V: torch.Tensor) -> torch.Tensor:
        return V.mT.reshape(V.shape[1], self.in_channels, *self.kernel_size)

    def _apply_in(self, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return tf.conv2d(x, self._filters(V), None, self.stride, self.padding, self.dilation)

    def _conv_backward(
        self, ga: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: tuple[bool, bool, bool]
    ) -> tuple[Any, Any, Any]:
        # The backward of conv2d(x, w) called with the real input and filters:
        # torch.nn.grad.conv2d_input and conv2d_weight stand in a stride-0 expanded tensor for
        # the operand they do not need, which oneDNN took 10-15 % longer over (LeNet5's conv2).
        return torch.ops.aten.convolution_backward(
            ga, x, w, None, self.stride, self.padding, self.dilation, False, [0], 1, mask
        )

    def _apply_in_grad(self, x: torch.Tensor, V: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        return self._conv_backward(ga, x, self._filters(V), (True, False, False))[0]

    def _apply_in_adjoint(self, x: torch.Tensor, ga: torch.Tensor) -> torch.Tensor:
        k = ga.shape[1]
        w = ga.new_empty((k, self.in_channels, *self.kernel_size))  # its shape only
        return self._conv_backward(ga, x, w, (False, True, False))[1].reshape(k, -1).mT

    def _apply_out(
        self, a: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return channel_map(K, a, bias)  # the 1 x 1 convolution with K

    def _bias_gradient(self, G: torch.Tensor) -> torch.Tensor:
        return G.sum((0, 2, 3))

    def _apply_out_adjoint(self, G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return channel_map(U.mT, G)

    def _contract(self, G: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return channel_contract(G, a)

    def _kernel_gradient(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        w = torch.nn.grad.conv2d_weight(x, shape, G, self.stride, self.padding, self.dilation)
        return w.reshape(self.out_channels, -1)

    def _kernel_backward(
        self, x: torch.Tensor, G: torch.Tensor, W: torch.Tensor | None, need_bias: bool
    ) -> tuple[Any, torch.Tensor, Any]:
        # one convolution backward, as for nn.Conv2d: the bias gradient is summed in the
        # same pass over G instead of a second one
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        kernel = G.new_empty(1).expand(shape) if W is None else self._kernel(W)
        grad_x, gW, grad_b = torch.ops.aten.convolution_backward(
            G, x, kernel, [self.out_channels] if need_bias else None, self.stride,
            self.padding, self.dilation, False, [0], 1, (W is not None, True, need_bias),
        )  # fmt: skip
        return grad_x, gW.reshape(self.out_channels, -1), grad_b

    def _kernel(self, W: torch.Tensor) -> torch.Tensor:
        return W.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def _apply_kernel(
        self, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return tf.conv2d(x, self._kernel(W), bias, self.stride, self.padding, self.dilation)

    def _apply_kernel_input_grad(
        self, x: torch.Tensor, W: torch.Tensor, G: torch.Tensor
    ) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(
            x.shape, self._kernel(W), G, self.stride, self.padding, self.dilation
        )
