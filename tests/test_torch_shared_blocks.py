"""The step's shared blocks on torch tensors: the same bases and cores as on NumPy arrays,
signs of the leading block known without a check, non-finite input refused."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators import _backend as bk  # noqa: E402
from lowrank_integrators.errors import NonFiniteError  # noqa: E402
from lowrank_integrators.integrators.augmentation import (  # noqa: E402
    augment_projected,
    leading_signs,
    project_out,
)
from lowrank_integrators.integrators.base import Ledger  # noqa: E402
from lowrank_integrators.torch import DLRTOptimizer, LowRankLinear  # noqa: E402
from lowrank_integrators.truncation import Tolerance  # noqa: E402


def orthonormal(rng, m, r):
    return np.linalg.qr(rng.standard_normal((m, r)))[0]


@pytest.mark.parametrize(
    ("m", "r", "scale"),
    [(40, 5, 1.0), (8, 5, 1.0), (40, 5, 0.0)],
    ids=["new-columns", "basis-fills-the-space", "inside-the-span"],
)
def test_torch_augmentation_is_the_numpy_augmentation(m, r, scale):
    # the last two take the one-QR path: r + k > rows, and new columns at rounding level
    rng = np.random.default_rng(3)
    U0 = orthonormal(rng, m, r)
    X = U0 @ rng.standard_normal((r, r)) + scale * rng.standard_normal((m, r))
    got, want = [], []
    for to, out in ((torch.from_numpy, got), (np.asarray, want)):
        U0_, X_ = to(U0.copy()), to(X.copy())
        led = Ledger()
        U_hat, d = augment_projected(led, project_out(U0_, X_, check=False), U0_)
        out += [bk.to_host(U_hat), bk.to_host(d), led.info.n_qr]
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2] == 1
    B = got[0]
    np.testing.assert_allclose(B.T @ B, np.eye(B.shape[1]), atol=1e-13)
    np.testing.assert_array_equal(B[:, :r], U0 * got[1])


def test_the_signs_of_a_basis_built_here_are_known_and_others_are_checked():
    rng = np.random.default_rng(4)
    U0 = torch.from_numpy(orthonormal(rng, 30, 4))
    Z = project_out(U0, torch.from_numpy(rng.standard_normal((30, 4))))
    U_hat, d = augment_projected(Ledger(), Z, U0)
    assert torch.equal(leading_signs(U_hat, U0), d)
    # a copy is not the basis built here: its signs are found by comparison
    assert torch.equal(leading_signs(U_hat.clone(), U0), d)
    other = U_hat.clone()
    other[0, 0] += 1e-3
    assert leading_signs(other, U0) is None


def test_a_torch_core_holding_nan_is_refused_by_its_svd():
    S = torch.eye(6, dtype=torch.float64)
    S[2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="SVD"):
        Tolerance(0.1).truncate_core(S, 0.1)


@pytest.mark.parametrize("out", [4, 30], ids=["basis-fills-the-space", "new-columns"])
def test_a_non_finite_gradient_leaves_the_layer_as_it_was(out):
    g = torch.Generator().manual_seed(0)
    layer = LowRankLinear(20, out, 3, dtype=torch.float64, generator=g)
    opt = DLRTOptimizer(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    x = torch.randn(5, 20, dtype=torch.float64, generator=g)
    x[1, 2] = float("inf")
    opt.zero_grad()
    layer(x).sum().backward()
    with pytest.raises(NonFiniteError):
        opt.step()
    for p, q in zip(layer.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)


def test_torch_namespaces_are_remembered_by_exact_type():
    x = torch.zeros(3, 2)
    xp = bk.namespace(x)
    assert bk.namespace(x, torch.ones(2, 2)) is xp is bk.namespace_of(x)
    assert bk.is_array(x) and not bk.is_lazy(x) and bk.allows_inplace(x)
    assert bk.device(x) == x.device
    assert torch.equal(bk.adjoint(x), x.mT)
