"""TuckerConv2d in training: factored gradients, the Tucker integrator's step, no full kernel."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from lowrank_integrators import Euler, Tolerance, TuckerBUG  # noqa: E402
from lowrank_integrators.integrators.tucker_steps import TuckerState  # noqa: E402
from lowrank_integrators.tensor_problems import DenseTensorODE  # noqa: E402
from lowrank_integrators.torch import DLRTOptimizer, TuckerConv2d, convert  # noqa: E402
from lowrank_integrators.torch._tucker_fields import TuckerDirection  # noqa: E402
from lowrank_integrators.training import SGD, Adam, HeavyBall  # noqa: E402
from lowrank_integrators.tucker import multi_mode_product, unfold  # noqa: E402

F64 = torch.float64
SHAPES = {
    "plain": {},
    "stride-padding-dilation": {"stride": 2, "padding": 1, "dilation": 2},
}


def tucker_layer(seed=0, ranks=(3, 2, 2, 2), **kwargs):
    g = torch.Generator().manual_seed(seed)
    layer = TuckerConv2d(5, 7, (3, 2), ranks=ranks, dtype=F64, generator=g, **kwargs)
    x = torch.randn(2, 5, 11, 10, dtype=F64, generator=g)
    target = torch.randn(layer(x).shape, dtype=F64, generator=g)
    return layer, x, target


def factors(layer):
    return [layer.core, layer.U1, layer.U2, layer.U3, layer.U4]


def full_kernel_gradients(layer, xs, target):
    """The gradients through the formed kernel W = C x_j U_j: of the factors, x and W."""
    ps = [p.detach().clone().requires_grad_() for p in factors(layer)]
    W = torch.einsum("abcd,oa,ib,hc,wd->oihw", *ps)
    W.retain_grad()
    xs = [x.detach().clone().requires_grad_() for x in xs]
    conv = torch.nn.functional.conv2d
    sum(
        (conv(x, W, None, layer.stride, layer.padding, layer.dilation) * target).sum() for x in xs
    ).backward()
    return [p.grad for p in ps], [x.grad for x in xs], W.grad


@pytest.mark.parametrize("kwargs", SHAPES.values(), ids=SHAPES.keys())
def test_factor_and_input_gradients_equal_those_through_the_full_kernel(kwargs):
    layer, x, target = tucker_layer(**kwargs)
    x = x.requires_grad_()
    (layer(x) * target).sum().backward()
    ref, (ref_x,), _ = full_kernel_gradients(layer, [x], target)
    for p, r in zip(factors(layer), ref, strict=True):
        torch.testing.assert_close(p.grad, r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", SHAPES.values(), ids=SHAPES.keys())
def test_k_step_and_core_gradients_are_the_projected_kernel_gradient(kwargs):
    layer, x, target = tucker_layer(**kwargs)
    x2 = torch.randn_like(x)
    for inp in (x, x2):  # two backward passes accumulate, as autograd does
        (layer(inp) * target).sum().backward()
    _, _, GW = full_kernel_gradients(layer, [x, x2], target)
    U = [p.detach() for p in factors(layer)[1:]]
    core = layer.core.detach()
    for i in range(4):
        Q, _ = torch.linalg.qr(unfold(core, i).mT)
        proj = multi_mode_product(GW, [None if j == i else U[j].mT for j in range(4)])
        torch.testing.assert_close(layer.mode_gradient(i, Q), unfold(proj, i) @ Q)
    torch.testing.assert_close(layer.core_gradient(), multi_mode_product(GW, [u.mT for u in U]))
    g = torch.Generator().manual_seed(3)
    B = [torch.linalg.qr(torch.randn(n, 4, dtype=F64, generator=g))[0] for n in GW.shape]
    for skip in (None, 0, 1, 2, 3):
        ref = multi_mode_product(GW, [None if j == skip else b.mT for j, b in enumerate(B)])
        torch.testing.assert_close(layer.kernel_projection(B, skip), ref)


def integrator_step(start, F, lr, tau):
    method = TuckerBUG(Tolerance(tau, relative=True), substep=Euler())
    new, _ = method.step(DenseTensorODE(lambda t, Y: F), TuckerState(Y=start, t=0.0), 0.0, lr)
    return new.Y


def train_step(layer, opt, xs, target):
    opt.zero_grad()
    for x in xs:
        (layer(x) * target).sum().backward()
    opt.step()


@pytest.mark.parametrize("kwargs", SHAPES.values(), ids=SHAPES.keys())
def test_a_step_is_the_tucker_integrators_step_on_the_kernel_gradient(kwargs):
    layer, x, target = tucker_layer(ranks=(3, 3, 2, 2), **kwargs)
    xs = [x, torch.randn_like(x)]
    start = layer.tucker
    _, _, GW = full_kernel_gradients(layer, xs, target)
    ref = integrator_step(start, -GW, 0.05, 0.05)
    opt = DLRTOptimizer(layer.parameters(), lr=0.05, tau=0.05)
    train_step(layer, opt, xs, target)
    assert layer.ranks == ref.ranks
    torch.testing.assert_close(layer.tucker.to_dense(), ref.to_dense(), rtol=1e-10, atol=1e-12)


def test_a_heavy_ball_step_adds_the_previous_displacement():
    layer, x, target = tucker_layer(ranks=(3, 3, 2, 2))
    beta, lr = 0.7, 0.05
    opt = DLRTOptimizer(layer.parameters(), lr=lr, tau=0.05, direction=HeavyBall(beta))
    W0 = layer.tucker.to_dense()
    train_step(layer, opt, [x], target)
    W1 = layer.tucker
    x2 = torch.randn_like(x)
    _, _, GW = full_kernel_gradients(layer, [x2], target)
    ref = integrator_step(W1, -(GW - beta / lr * (W1.to_dense() - W0)), lr, 0.05)
    train_step(layer, opt, [x2], target)
    assert layer.ranks == ref.ranks
    torch.testing.assert_close(layer.tucker.to_dense(), ref.to_dense(), rtol=1e-10, atol=1e-12)


def test_adam_moments_move_by_the_transfer_matrix_of_the_k_step_coordinates():
    g = torch.Generator().manual_seed(5)

    def orth(n, r):
        return torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=g))[0]

    shape, old_r, new_r, mode = (6, 5, 3, 3), (3, 2, 2, 3), (4, 3, 2, 2), 1
    U_old = [orth(n, r) for n, r in zip(shape, old_r, strict=True)]
    U_new = [orth(n, r) for n, r in zip(shape, new_r, strict=True)]
    Q_old, Q_new = orth(3 * 2 * 3, 2), orth(4 * 2 * 2, 3)

    def V(U, Q):  # (kron_{j != mode} U_j) Q, in the column order of unfold
        K = U[0]
        for j in (2, 3):
            K = torch.kron(K, U[j])
        return K @ Q

    T = V(U_old, Q_old).mT @ V(U_new, Q_new)
    slot = {f"mode{mode}_U{j}": U_old[j] for j in range(4) if j != mode}
    slot[f"mode{mode}_Q"] = Q_old
    d = TuckerDirection(Adam(), slot, 1, None, 0.1)
    m, v = torch.randn(5, 2, dtype=F64, generator=g), torch.rand(5, 2, dtype=F64, generator=g)
    m_t, v_t = d._mode_transport(mode, m, v, U_new, Q_new)
    torch.testing.assert_close(m_t, m @ T)
    torch.testing.assert_close(v_t, v @ T**2)


@pytest.mark.parametrize("direction", [SGD(), HeavyBall(0.5), Adam()], ids=repr)
def test_a_tucker_network_learns_with_every_direction_and_saves_its_moments(direction):
    torch.manual_seed(1)
    nn = torch.nn
    convs = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten()]
    model = convert(nn.Sequential(*convs, nn.Linear(12 * 4 * 4, 5)), 1.0, conv="tucker")
    model = model[:-1].append(nn.Linear(12 * 4 * 4, 5))  # a dense head
    lr = 0.01 if isinstance(direction, Adam) else 0.1
    opt = DLRTOptimizer(model.parameters(), lr=lr, tau=0.2, direction=direction)
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 5, (16,))
    full = model[2].ranks

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    losses = [step() for _ in range(6)]
    assert losses[-1] < losses[0]
    assert model[2].ranks != full
    twin_model = copy.deepcopy(model)
    twin = DLRTOptimizer(twin_model.parameters(), lr=lr, tau=0.2, direction=direction)
    twin.load_state_dict(opt.state_dict())
    step()
    opt, model = twin, twin_model
    step()
    torch.testing.assert_close(model[2].tucker.to_dense(), twin_model[2].tucker.to_dense())


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def kernel_sized(shapes, layer):
    n = layer.out_channels * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    return [s for s in shapes if torch.Size(s).numel() == n]


def test_a_training_step_never_forms_a_tensor_of_the_kernels_size():
    g = torch.Generator().manual_seed(2)
    layer = TuckerConv2d(12, 16, 3, ranks=(3, 2, 2, 2), padding=1, dtype=F64, generator=g)
    x = torch.randn(2, 12, 9, 9, dtype=F64, generator=g)
    target = torch.randn(2, 16, 9, 9, dtype=F64, generator=g)
    opt = DLRTOptimizer(layer.parameters(), lr=1e-3, tau=0.1, direction=Adam())
    train_step(layer, opt, [x], target)  # a step with moments to transport follows
    # augmented channel bases (at most twice the ranks) stay below the channel counts
    assert 2 * layer.ranks[0] < 16 and 2 * layer.ranks[1] < 12
    with _Shapes() as seen:
        train_step(layer, opt, [x, torch.randn_like(x)], target)
    assert len(seen.shapes) > 50
    assert kernel_sized(seen.shapes, layer) == []
    # the detector sees the kernel where a step forms it
    with _Shapes() as dense:
        full_kernel_gradients(layer, [x], target)
    assert kernel_sized(dense.shapes, layer)


def test_module_conversions_reach_the_tucker_factors():
    layer, x, _ = tucker_layer()
    layer.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert layer(x.float()).dtype == torch.float32


# --- what a Tucker step reads back from the device ---------------------------------------------


def test_on_an_accelerator_a_tucker_step_reads_its_finiteness_tests_once(
    host_reads, deferred_tests, monkeypatch
):
    """The finiteness tests of the step's factorisations and of its result wait for the device
    once, at the end, besides the rank decisions of all modes, read together; the step is the
    one that reads each test as it is made."""
    from lowrank_integrators import _backend

    layer, x, target = tucker_layer(ranks=(3, 3, 2, 2))
    twin = copy.deepcopy(layer)
    xs = [x, torch.randn_like(x)]

    def reads_of_a_step(layer):
        opt = DLRTOptimizer(layer.parameters(), lr=0.05, tau=0.05)
        opt.zero_grad()
        for a in xs:
            (layer(a) * target).sum().backward()
        host_reads.count = 0
        opt.step()
        return host_reads.count

    deferred_reads = reads_of_a_step(layer)
    monkeypatch.setattr(_backend, "_DEFER", False)
    tested_reads = reads_of_a_step(twin)
    # the singular values of the four modes (the rank decisions) in one read, and one read
    # of every finiteness test
    assert deferred_reads == 1 + 1
    assert tested_reads > deferred_reads + 10
    for a, b in zip(factors(layer), factors(twin), strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_tucker_step_raises_after_its_deferred_tests_and_changes_nothing(
    deferred_tests,
):
    from lowrank_integrators.errors import NonFiniteError

    layer, x, target = tucker_layer(ranks=(3, 3, 2, 2))
    before = [p.detach().clone() for p in factors(layer)]
    opt = DLRTOptimizer(layer.parameters(), lr=0.05, tau=0.05)
    opt.zero_grad()
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")  # a NaN input: the recorded passes hold NaN
    (layer(x) * target).sum().backward()
    with pytest.raises(NonFiniteError):
        opt.step()
    for a, b in zip(factors(layer), before, strict=True):
        assert torch.equal(a, b)
