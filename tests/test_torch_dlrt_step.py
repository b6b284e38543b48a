"""The direct DLRT step: orthonormal augmented bases whatever the gradient, refusal of NaN."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators.errors import NonFiniteError  # noqa: E402
from lowrank_integrators.torch import LowRankLinear  # noqa: E402
from lowrank_integrators.torch.dlrt_step import (  # noqa: E402
    augmented_bases,
    augmented_core,
    require_finite_cores,
)


def layer_with_gradient(dtype, scale):
    g = torch.Generator().manual_seed(0)
    layer = LowRankLinear(40, 30, 5, dtype=dtype, generator=g)
    x = torch.randn(8, 40, dtype=dtype, generator=g)
    (layer(x).square().sum() * scale).backward()
    W = (layer.U @ layer.S @ layer.V.T).detach().requires_grad_(True)
    (gW,) = torch.autograd.grad(((x @ W.T + layer.bias).square().sum() * scale), W)
    return layer, gW


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 0.0], ids=["gradient", "zero-gradient"])
def test_augmented_bases_are_orthonormal_and_keep_the_start_basis(dtype, scale):
    # a zero gradient puts K1 = U0 S0 inside range(U0): the projected QR sees only rounding
    # and the bases come from one QR of [U0, K1]
    layer, _ = layer_with_gradient(dtype, scale)
    ((U_hat, V_hat),) = augmented_bases([(layer, 0.1)])
    tol = 50 * torch.finfo(dtype).eps
    for B, B0 in ((U_hat, layer.U.detach()), (V_hat, layer.V.detach())):
        assert B.shape == (B0.shape[0], 2 * B0.shape[1])
        assert torch.equal(B[:, : B0.shape[1]], B0)
        eye = torch.eye(B.shape[1], dtype=dtype)
        assert float((B.mT @ B - eye).abs().max()) < tol


def test_the_galerkin_core_is_the_projection_of_one_euler_step():
    layer, gW = layer_with_gradient(torch.float64, 1.0)
    U0, S0, V0 = (p.detach() for p in (layer.U, layer.S, layer.V))
    ((U_hat, V_hat),) = augmented_bases([(layer, 0.1)])
    core = augmented_core(layer, 0.1, U_hat, V_hat)
    expected = U_hat.mT @ (U0 @ S0 @ V0.mT - 0.1 * gW) @ V_hat
    torch.testing.assert_close(core.S_hat, expected, rtol=1e-12, atol=1e-12)


def test_a_non_finite_core_is_refused_before_its_svd():
    layer, _ = layer_with_gradient(torch.float64, 1.0)
    with torch.no_grad():
        layer.U.grad[0, 0] = float("inf")
    ((U_hat, V_hat),) = augmented_bases([(layer, 0.1)])
    with pytest.raises(NonFiniteError, match="layer 0"):
        require_finite_cores([augmented_core(layer, 0.1, U_hat, V_hat)])
