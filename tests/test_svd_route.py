"""Small matrices on an accelerator are factorised on the host, and nothing else changes.

CI has no accelerator: the route is switched on for PyTorch tensors in host memory
(``_HOST_SVD_ON_CPU``), as the ``deferred_tests`` fixture does for the deferred checks. CuPy
arrays take the same route; the CuPy backend tests exercise it on a device.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lowrank_integrators import AugmentedBUG, Euler, FixedRank
from lowrank_integrators import _backend as bk
from lowrank_integrators.errors import NonFiniteError

torch = pytest.importorskip("torch")

from lowrank_integrators.torch import DLRTOptimizer, convert, mlp  # noqa: E402


@pytest.fixture
def host_route(monkeypatch):
    monkeypatch.setattr(bk, "_HOST_SVD_ON_CPU", True)


def graded(rng, m, n, dtype, smallest):
    """``m x n`` with singular values from 1 down to ``smallest`` (and exact zeros below
    ``smallest = 0``), as a tensor of ``dtype``."""
    k = min(m, n)
    complex_ = dtype in (torch.complex64, torch.complex128)

    def orthonormal(rows):
        a = rng.standard_normal((rows, k))
        if complex_:
            a = a + 1j * rng.standard_normal((rows, k))
        return np.linalg.qr(a)[0]

    sigma = np.logspace(0, np.log10(smallest), k) if smallest > 0 else np.r_[1.0, np.zeros(k - 1)]
    return torch.from_numpy(orthonormal(m) * sigma @ orthonormal(n).conj().T).to(dtype)


def test_the_route_takes_small_float_matrices_on_an_accelerator_only(host_route):
    assert bk.svd_on_host(torch.ones(6, 4))
    assert bk.svd_on_host(torch.ones(bk.HOST_SVD_MAX, 3, dtype=torch.complex128))
    assert not bk.svd_on_host(torch.ones(bk.HOST_SVD_MAX + 1, 3))  # left to the device
    assert not bk.svd_on_host(torch.ones(6, 4, dtype=torch.float16))  # no LAPACK type
    assert not bk.svd_on_host(torch.ones(6))
    assert not bk.svd_on_host(torch.ones(0, 4))
    assert not bk.svd_on_host(np.ones((6, 4)))  # NumPy is on the host already
    assert not bk.svd_on_host(torch.ones(6, 4, requires_grad=True))  # differentiable SVD kept


def test_tensors_in_host_memory_keep_pytorchs_own_svd():
    assert not bk.svd_on_host(torch.ones(6, 4))


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128], ids=str
)
@pytest.mark.parametrize("smallest", [1e-3, 1e-12, 0.0])
def test_the_host_route_returns_the_factorisation_on_the_tensors_device(
    host_route, rng, dtype, smallest
):
    x = graded(rng, 12, 9, dtype, smallest)
    eps = torch.finfo(dtype).eps
    for P, sigma, Qh in (bk.svd(x), bk.svd_to_host(x)[:3]):
        assert all(type(f) is torch.Tensor and f.device == x.device for f in (P, sigma, Qh))
        assert P.dtype == Qh.dtype == x.dtype
        assert sigma.dtype == torch.empty(0, dtype=dtype).real.dtype
        assert P.shape == (12, 9) and sigma.shape == (9,) and Qh.shape == (9, 9)
        eye = torch.eye(9, dtype=dtype)
        assert torch.linalg.norm(P.mH @ P - eye) <= 20 * eps
        assert torch.linalg.norm(Qh @ Qh.mH - eye) <= 20 * eps
        assert torch.linalg.norm((P * sigma.to(dtype)) @ Qh - x) <= 20 * eps
        expected = np.linalg.svd(x.numpy(), compute_uv=False)
        np.testing.assert_allclose(sigma.numpy(), expected, rtol=0, atol=20 * eps)
    on_host = bk.svd_to_host(x)[3]
    assert type(on_host) is np.ndarray
    np.testing.assert_array_equal(on_host, bk.svd_to_host(x)[1].numpy())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_host_route_refuses_non_finite_matrices(host_route, bad):
    x = torch.ones(5, 4)
    x[2, 1] = bad
    with pytest.raises(NonFiniteError, match=r"factorised by SVD \(shape \(5, 4\)\)"):
        bk.svd(x)
    with pytest.raises(NonFiniteError, match="factorised by SVD"):
        bk.svd_to_host(x)


def test_dlrt_steps_with_the_host_route_equal_the_default_to_round_off(monkeypatch):
    torch.manual_seed(0)
    base = convert(mlp([20, 16, 16, 3]), 4, exclude=("fc3",))
    x, y = torch.randn(32, 20), torch.randint(0, 3, (32,))
    weights, calls = {}, []
    gesdd = bk._gesdd
    monkeypatch.setattr(bk, "_gesdd", lambda a: calls.append(a.shape) or gesdd(a))
    for on in (False, True):
        monkeypatch.setattr(bk, "_HOST_SVD_ON_CPU", on)
        model = copy.deepcopy(base)
        opt = DLRTOptimizer(
            model.parameters(), lr=0.1, method=AugmentedBUG(FixedRank(4), substep=Euler())
        )
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        # the products: the two SVDs may choose other signs of the singular vectors
        weights[on] = {
            name: (layer.U @ layer.S @ layer.V.mT).detach()
            for name, layer in model.named_children()
            if hasattr(layer, "S")
        }
    assert calls == [(8, 8)] * 10  # the route: both layers' 2r x 2r cores, five steps
    assert set(weights[False]) == {"fc1", "fc2"}
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=0, atol=1e-5)


def test_a_truncation_on_the_host_route_reads_the_core_back_once(monkeypatch):
    # array-api-strict stands in for CuPy, whose arrays take the route without PyTorch's
    # own handling of non-finite input
    xps = pytest.importorskip("array_api_strict")
    from lowrank_integrators import Tolerance

    monkeypatch.setattr(bk, "svd_on_host", lambda a: type(a).__module__.startswith("array_api_s"))
    reads = []
    to_host = bk.to_host
    monkeypatch.setattr(bk, "to_host", lambda a: reads.append(tuple(a.shape)) or to_host(a))
    S_hat = xps.asarray(np.diag([1.0, 0.5, 1e-9]))
    P, S1, Q, record = Tolerance(1e-6).truncate_core(S_hat, 0.1)
    assert reads == [(3, 3)]  # the core itself, and not its singular values again
    assert record.rank_after == 2
    assert all(type(f) is type(S_hat) for f in (P, S1, Q))
    P, S1, Q = (np.asarray(bk.to_host(f)) for f in (P, S1, Q))
    np.testing.assert_allclose(P @ S1 @ Q.T, np.diag([1.0, 0.5, 0.0]), atol=1e-15)


def _layer_step_model():
    torch.manual_seed(4)
    model = convert(mlp([40, 64, 10]), 8, exclude=("fc2",))
    opt = DLRTOptimizer(
        model.parameters(), lr=0.1, method=AugmentedBUG(FixedRank(8), substep=Euler())
    )
    return model, opt


def _gradients(model):
    gen = torch.Generator().manual_seed(6)
    x, y = torch.randn(32, 40, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()


def _one_step(model, opt):
    _gradients(model)
    opt.step()


def test_with_deferred_tests_a_step_still_waits_once_per_layer(
    host_route, deferred_tests, host_reads, monkeypatch
):
    # as on an accelerator: the tests of the new bases stay on the device, and the core is
    # the one array read back
    calls = []
    gesdd = bk._gesdd
    monkeypatch.setattr(bk, "_gesdd", lambda a: calls.append(a.shape) or gesdd(a))
    model, opt = _layer_step_model()
    _gradients(model)
    host_reads.count = 0
    opt.step()
    assert host_reads.count == 1
    assert calls == [(16, 16)]  # the core went the host route


def test_a_failed_deferred_test_is_still_traced_through_the_host_svd(
    host_route, deferred_tests, monkeypatch
):
    # a failed test poisons the core with NaN; the host route must report it as the
    # device's SVD does, so that the step rebuilds its bases and ends as without the failure
    from lowrank_integrators.integrators import augmentation

    expected, opt = _layer_step_model()
    _one_step(expected, opt)
    deferred, calls = augmentation.augment_projected_deferred, []

    def failing(led, Z, U0):
        out = deferred(led, Z, U0)
        if out is not None:
            calls.append(1)
            out = (out[0], out[1], torch.zeros((), dtype=torch.bool))
        return out

    monkeypatch.setattr(augmentation, "augment_projected_deferred", failing)
    got, opt = _layer_step_model()
    _one_step(got, opt)
    assert len(calls) == 2  # both bases of the one step were rebuilt
    for a, b in zip(got.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_tucker_step_reads_its_core_back_once_for_the_svds_of_all_modes(
    host_reads, deferred_tests, monkeypatch
):
    # as on an accelerator: one read for the rank decisions of the four modes (the core,
    # factorised mode by mode on the host), one for the deferred finiteness tests
    from lowrank_integrators.torch import TuckerConv2d

    def step(route):
        monkeypatch.setattr(bk, "_HOST_SVD_ON_CPU", route)
        g = torch.Generator().manual_seed(0)
        layer = TuckerConv2d(5, 7, (3, 2), ranks=(3, 3, 2, 2), dtype=torch.float64, generator=g)
        x = torch.randn(2, 5, 11, 10, dtype=torch.float64, generator=g)
        opt = DLRTOptimizer(layer.parameters(), lr=0.05, tau=0.05)
        opt.zero_grad()
        layer(x).square().sum().backward()
        host_reads.count = 0
        opt.step()
        Us = (layer.U1, layer.U2, layer.U3, layer.U4)
        kernel = torch.einsum("abcd,oa,ib,hc,wd->oihw", layer.core, *Us)
        return host_reads.count, kernel.detach()

    reads, kernel = step(route=True)
    reads_default, kernel_default = step(route=False)
    assert reads == reads_default == 2
    torch.testing.assert_close(kernel, kernel_default, rtol=0, atol=1e-12)
