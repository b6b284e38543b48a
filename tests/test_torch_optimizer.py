"""DLRTOptimizer: the NumPy client's steps, and what a torch.optim.Optimizer must do."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators import BUG, AugmentedBUG, Euler, ProjectorSplitting, Tolerance  # noqa: E402
from lowrank_integrators.integrators import ParallelBUG  # noqa: E402
from lowrank_integrators.torch import (  # noqa: E402
    DLRTOptimizer,
    LowRankLinear,
    TuckerConv2d,
    convert,
    lenet5,
)
from lowrank_integrators.training import MLP, Adam, HeavyBall, Layer, LowRankTraining  # noqa: E402

F64 = torch.float64
CE = torch.nn.functional.cross_entropy


def twin_models(rng, kinds=("lowrank", "lowrank")):
    """A NumPy MLP and a torch model with identical float64 weights."""
    widths = [9, 8, 6]
    ranks = [3, 2]
    layers = [
        Layer(a, b, k, r) for a, b, k, r in zip(widths[:-1], widths[1:], kinds, ranks, strict=True)
    ]
    net = MLP([*layers, Layer(widths[-1], 4, "dense")])
    W, P = net.init(rng)
    mods: list = []
    for a, b, r in zip(widths[:-1], widths[1:], ranks, strict=True):
        mods += [LowRankLinear(a, b, r, dtype=F64), torch.nn.ReLU()]
    mods.append(torch.nn.Linear(widths[-1], 4, dtype=F64))
    model = torch.nn.Sequential(*mods)
    lowrank = [m for m in model if isinstance(m, LowRankLinear)]
    for layer, Y in zip(lowrank, W, strict=True):
        layer.set_factors(*(torch.from_numpy(a.copy()) for a in Y))
    biases = [m.bias for m in lowrank] + [model[-1].weight, model[-1].bias]
    with torch.no_grad():
        for p, a in zip(biases, P, strict=True):
            p.copy_(torch.from_numpy(a))
    return net, W, P, model, lowrank, biases


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = CE(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize(
    "method",
    [
        AugmentedBUG(Tolerance(0.05, relative=True), substep=Euler()),
        ParallelBUG(Tolerance(0.05, relative=True), substep=Euler()),
    ],
    ids=["augmented-bug", "parallel-bug"],
)
@pytest.mark.parametrize("direction", [None, HeavyBall(0.5), Adam()], ids=["sgd", "heavy", "adam"])
def test_the_standard_loop_takes_the_numpy_clients_steps(rng, method, direction):
    net, W, P, model, lowrank, biases = twin_models(rng)
    client = LowRankTraining(method, net.gradient, direction)
    state = client.init(W, P)
    opt = DLRTOptimizer(model.parameters(), lr=0.1, method=method, direction=direction)
    for _ in range(4):
        X, y = rng.standard_normal((16, 9)), rng.integers(0, 4, 16)
        state, report = client.step(state, (X, y), 0.1)
        loss = train_step(model, opt, torch.from_numpy(X), torch.from_numpy(y))
        assert loss == pytest.approx(report.loss, rel=1e-12)
        assert tuple(m.rank for m in lowrank) == report.ranks
        assert opt.last_passes == report.n_passes == 1
    for layer, Y in zip(lowrank, state.weights, strict=True):
        dense = (layer.U @ layer.S @ layer.V.T).detach().numpy()
        np.testing.assert_allclose(dense, Y.to_dense(), rtol=1e-10, atol=1e-12)
    for p, a in zip(biases, state.params, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", [BUG(substep=Euler()), ProjectorSplitting(substep=Euler())])
@pytest.mark.parametrize("direction", [None, Adam()], ids=["sgd", "adam"])
def test_multi_pass_methods_take_a_closure_and_match_the_client(rng, method, direction):
    net, W, P, model, lowrank, params = twin_models(rng)
    client = LowRankTraining(method, net.gradient, direction)
    state = client.init(W, P)
    opt = DLRTOptimizer(model.parameters(), lr=0.1, method=method, direction=direction)
    for _ in range(2):
        X, y = rng.standard_normal((16, 9)), rng.integers(0, 4, 16)
        x_t, y_t = torch.from_numpy(X), torch.from_numpy(y)

        def closure(x_t=x_t, y_t=y_t):
            opt.zero_grad()
            loss = CE(model(x_t), y_t)
            loss.backward()
            return loss

        state, report = client.step(state, (X, y), 0.1)
        loss = opt.step(closure)
        assert float(loss.detach()) == pytest.approx(report.loss, rel=1e-12)
        assert opt.last_passes == report.n_passes == method.passes_per_step
    for layer, Y in zip(lowrank, state.weights, strict=True):
        dense = (layer.U @ layer.S @ layer.V.T).detach().numpy()
        np.testing.assert_allclose(dense, Y.to_dense(), rtol=1e-10, atol=1e-12)
    for p, a in zip(params, state.params, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-10, atol=1e-12)


def dense_twin(model):
    """LeNet5 with the dense weights ``U S V^T`` of a converted ``model`` (same biases)."""
    dense = lenet5(dtype=F64)
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc1"):
            low, full = getattr(model, name), getattr(dense, name)
            full.weight.copy_((low.U @ low.S @ low.V.T).reshape(full.weight.shape))
            full.bias.copy_(low.bias)
        dense.fc2.load_state_dict(model.fc2.state_dict())
    return dense


def augmented_bug_euler_step(U0, S0, V0, gW, h, tau):
    """DLRT's step written out (Ceruti, Kusch, Lubich 2022, arXiv:2104.05247; one Euler step
    per substep): ``K1 = U0 S0 - h G V0``, ``L1 = V0 S0^T - h G^T U0``, orthonormal bases of
    ``[U0, K1]`` and ``[V0, L1]``, the Galerkin core of ``W0 - h G`` in them, its SVD truncated
    to the smallest rank whose discarded tail is at most ``tau`` times the core's norm."""
    K1, L1 = U0 @ S0 - h * gW @ V0, V0 @ S0.T - h * gW.T @ U0
    U_hat = torch.linalg.qr(torch.cat([U0, K1], dim=1)).Q
    V_hat = torch.linalg.qr(torch.cat([V0, L1], dim=1)).Q
    P, sigma, Qh = torch.linalg.svd(U_hat.T @ (U0 @ S0 @ V0.T - h * gW) @ V_hat)
    tails = torch.sqrt(torch.flip(torch.cumsum(torch.flip(sigma**2, [0]), 0), [0]))
    tails = torch.cat([tails[1:], tails.new_zeros(1)])  # tails[k]: the norm beyond rank k + 1
    r1 = int(torch.nonzero(tails <= tau * torch.linalg.norm(sigma))[0]) + 1
    return (U_hat @ P[:, :r1]) @ torch.diag(sigma[:r1]) @ (Qh[:r1] @ V_hat.T), r1


@pytest.mark.parametrize("rank", [8, 12], ids=["factored-conv1", "conv1-forms-its-kernel"])
@pytest.mark.parametrize("accumulate", [1, 2], ids=["one-pass", "two-passes"])
def test_the_default_step_is_dlrts_augmented_bug_step_written_out(rank, accumulate):
    # convolutions taking every route (kernel, kernel gradient, products) and a linear layer
    torch.manual_seed(0)
    model = convert(lenet5(dtype=F64), rank, exclude=("fc2",))
    opt = DLRTOptimizer(model.parameters(), lr=0.2, tau=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        batches = [
            (torch.randn(6, 1, 28, 28, dtype=F64, generator=g), torch.randint(0, 10, (6,)))
            for _ in range(accumulate)
        ]
        dense = dense_twin(model)
        for x, y in batches:
            CE(dense(x), y).backward()
        expected = {}
        for name in ("conv1", "conv2", "fc1"):
            low, full = getattr(model, name), getattr(dense, name)
            gW = full.weight.grad.reshape(full.weight.shape[0], -1)
            U0, S0, V0 = (p.detach() for p in (low.U, low.S, low.V))
            expected[name] = augmented_bug_euler_step(U0, S0, V0, gW, 0.2, 0.1)
        opt.zero_grad()
        for x, y in batches:
            CE(model(x), y).backward()
        opt.step()
        assert [i.rank_after for i in opt.last_infos] == [r for _, r in expected.values()]
        for name, (W1, _) in expected.items():
            low = getattr(model, name)
            torch.testing.assert_close(
                (low.U @ low.S @ low.V.T).detach(), W1, rtol=1e-10, atol=1e-12
            )
        for p, q in zip(model.fc2.parameters(), dense.fc2.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), (q - 0.2 * q.grad).detach())


def test_a_multi_pass_method_without_closure_says_what_to_do(rng):
    *_, model, _lowrank, _ = twin_models(rng)
    opt = DLRTOptimizer(model.parameters(), lr=0.1, method=BUG(substep=Euler()))
    CE(model(torch.randn(4, 9, dtype=F64)), torch.tensor([0, 1, 2, 3])).backward()
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_learning_rate_schedulers_drive_the_step_size():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 2, dtype=F64)
    opt = DLRTOptimizer(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    x = torch.randn(5, 3, dtype=F64, generator=g)
    for lr in (0.5, 0.05, 0.005):
        opt.zero_grad()
        model(x).square().sum().backward()
        before, grad = model.weight.detach().clone(), model.weight.grad.clone()
        opt.step()
        sched.step()
        torch.testing.assert_close(model.weight.detach(), before - lr * grad)


def test_param_groups_give_low_rank_layers_their_own_learning_rate(rng):
    *_, model, lowrank, _ = twin_models(rng)
    factors = [p for m in lowrank for p in (m.U, m.S, m.V)]
    others = [p for p in model.parameters() if all(p is not q for q in factors)]
    opt = DLRTOptimizer([{"params": factors, "lr": 1e-12}, {"params": others}], lr=0.1)
    before = [(m.U @ m.S @ m.V.T).detach().clone() for m in lowrank]
    train_step(model, opt, torch.randn(8, 9, dtype=F64), torch.randint(0, 4, (8,)))
    for m, W in zip(lowrank, before, strict=True):
        torch.testing.assert_close((m.U @ m.S @ m.V.T).detach(), W, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="one parameter group"):
        DLRTOptimizer([{"params": [lowrank[0].U]}, {"params": [lowrank[0].S, lowrank[0].V]}], lr=1)


def test_load_state_dict_then_step_continues_from_the_loaded_weights(rng):
    *_, model, _lowrank, _ = twin_models(rng)
    twin = copy.deepcopy(model)
    opt = DLRTOptimizer(model.parameters(), lr=0.1)
    twin_opt = DLRTOptimizer(twin.parameters(), lr=0.1)
    saved = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(8, 9, dtype=F64), torch.randint(0, 4, (8,))) for _ in range(3)]
    for x, y in batches[:2]:
        train_step(model, opt, x, y)
    model.load_state_dict(saved)
    train_step(model, opt, *batches[2])
    train_step(twin, twin_opt, *batches[2])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_state_dict_across_rank_changes_restores_adam_moments(rng):
    *_, model, lowrank, _ = twin_models(rng)
    method = AugmentedBUG(Tolerance(1e-3, relative=True), substep=Euler())
    opt = DLRTOptimizer(model.parameters(), lr=0.05, method=method, direction=Adam())
    batches = [(torch.randn(16, 9, dtype=F64), torch.randint(0, 4, (16,))) for _ in range(6)]
    ranks0 = [m.rank for m in lowrank]
    for x, y in batches[:4]:
        train_step(model, opt, x, y)
    assert [m.rank for m in lowrank] != ranks0  # the ranks moved
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    # a fresh model built with other ranks, and a fresh optimizer
    *_, other, _, _ = twin_models(np.random.default_rng(99))
    other_opt = DLRTOptimizer(other.parameters(), lr=0.05, method=method, direction=Adam())
    other.load_state_dict(model_state)
    other_opt.load_state_dict(opt_state)
    for x, y in batches[4:]:
        train_step(model, opt, x, y)
        train_step(other, other_opt, x, y)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_deepcopy_gives_an_independent_optimizer(rng):
    *_, model, _, _ = twin_models(rng)
    opt = DLRTOptimizer(model.parameters(), lr=0.1, direction=HeavyBall(0.5))
    x, y = torch.randn(8, 9, dtype=F64), torch.randint(0, 4, (8,))
    train_step(model, opt, x, y)
    model2, opt2 = copy.deepcopy((model, opt))
    train_step(model, opt, x, y)
    train_step(model2, opt2, x, y)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        assert p is not q
    alone = copy.deepcopy(opt)
    assert alone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_float32_lenet5_trains_and_keeps_dtype_and_ranks_in_step():
    torch.manual_seed(0)
    model = convert(lenet5(), 0.05, exclude=("fc2",))
    opt = DLRTOptimizer(model.parameters(), lr=0.3, tau=0.1)
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    losses = [train_step(model, opt, x, y) for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0]
    assert model.fc1.U.dtype == torch.float32
    assert model.fc1.rank <= 100
    assert len(opt.last_infos) == 3


def test_tucker_layers_adapt_their_ranks_per_mode_and_learn():
    torch.manual_seed(1)
    model = convert(lenet5(), 1.0, conv="tucker", exclude=("fc1", "fc2"))
    assert isinstance(model.conv2, TuckerConv2d)
    opt = DLRTOptimizer(model.parameters(), lr=0.1, tau=0.2)
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    full = model.conv2.ranks
    losses = [train_step(model, opt, x, y) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert model.conv2.ranks != full


def test_bad_arguments_are_named(rng):
    *_, model, _, _ = twin_models(rng)
    with pytest.raises(ValueError, match="lr"):
        DLRTOptimizer(model.parameters(), lr=-1.0)
    with pytest.raises(TypeError, match="method"):
        DLRTOptimizer(model.parameters(), lr=0.1, method="dlrt")
    with pytest.raises(TypeError, match="direction"):
        DLRTOptimizer(model.parameters(), lr=0.1, direction=torch.optim.SGD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_step_on_cuda_stays_on_the_device():
    model = convert(lenet5(), 0.5, exclude=("fc2",)).cuda()
    opt = DLRTOptimizer(model.parameters(), lr=0.05)
    x = torch.randn(8, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    train_step(model, opt, x, y)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_a_non_finite_gradient_raises_and_leaves_the_model_unchanged(rng):
    *_, model, _, _ = twin_models(rng)
    opt = DLRTOptimizer(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 9, dtype=F64)
    x[0, 0] = float("nan")
    opt.zero_grad()
    CE(model(x), torch.randint(0, 4, (8,))).backward()
    with pytest.raises(FloatingPointError):
        opt.step()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)


# --- what a step reads back from the device --------------------------------------------------


#: Examples per batch: more than twice the rank, so that the new columns of a step are of full
#: rank (a gradient of a batch of b examples has rank b at most).
BATCH = 96


def _tall_model(dtype):
    """784-2304-10 with the first layer at rank 32: ``U`` (2304 x 32 new columns) takes the
    Cholesky passes, ``V`` (784 x 32) one Householder QR."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 2304, dtype=dtype),
        torch.nn.ReLU(),
        torch.nn.Linear(2304, 10, dtype=dtype),
    )
    return convert(model, 32, exclude=("2",))


def _steps(model, dtype, n=3):
    opt = DLRTOptimizer(
        model.parameters(),
        lr=0.05,
        method=AugmentedBUG(Tolerance(0.1, relative=True), substep=Euler()),
    )
    gen = torch.Generator().manual_seed(5)
    for _ in range(n):
        x = torch.randn(BATCH, 784, generator=gen, dtype=dtype)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        train_step(model, opt, x, y)
    return opt


def _without_deferral(monkeypatch):
    from lowrank_integrators import _backend

    monkeypatch.setattr(_backend, "_DEFER", False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_dlrt_step_reads_back_only_the_singular_values(
    dtype, host_reads, deferred_tests, monkeypatch
):
    """The tests of the new bases (their QR, their orthogonality to the old ones) wait for
    the device together with the rank decision: one read per layer and step; the steps are
    those that test each basis as it is built, bit for bit."""
    model = _tall_model(dtype)
    opt = _steps(model, dtype, n=1)
    x = torch.randn(BATCH, 784, dtype=dtype)
    y = torch.randint(0, 10, (BATCH,))
    opt.zero_grad()
    CE(model(x), y).backward()
    host_reads.count = 0
    opt.step()
    assert host_reads.count == 1  # one low-rank layer
    deferred = _tall_model(dtype)
    _steps(deferred, dtype)
    _without_deferral(monkeypatch)
    tested = _tall_model(dtype)
    _steps(tested, dtype)
    for a, b in zip(deferred.parameters(), tested.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_failed_deferred_test_rebuilds_the_bases_and_repeats_the_galerkin_step(
    deferred_tests, monkeypatch
):
    from lowrank_integrators.integrators import augmentation

    expected = _tall_model(F64)
    _steps(expected, F64)
    deferred = augmentation.augment_projected_deferred
    calls = []

    def failing(led, Z, U0):
        out = deferred(led, Z, U0)
        if out is None:
            return None
        calls.append(1)
        return out[0], out[1], torch.zeros((), dtype=torch.bool)

    monkeypatch.setattr(augmentation, "augment_projected_deferred", failing)
    got = _tall_model(F64)
    opt = _steps(got, F64)
    assert len(calls) == 6  # both bases of three steps were rebuilt
    assert opt.last_infos[0].n_svd == 2  # the SVD of the poisoned core, then the real one
    for a, b in zip(got.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_gradient_still_stops_the_step_with_the_bases_error(deferred_tests):
    from lowrank_integrators.errors import NonFiniteError

    model = _tall_model(F64)
    opt = _steps(model, F64, n=1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(BATCH, 784, dtype=F64)
    x[0, 0] = float("inf")
    opt.zero_grad()
    CE(model(x), torch.randint(0, 10, (BATCH,))).backward()
    with pytest.raises((NonFiniteError, FloatingPointError)):
        opt.step()
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


def test_on_an_accelerator_the_finiteness_tests_of_all_layers_are_read_together(
    host_reads, deferred_tests, monkeypatch
):
    """ParallelBUG tests the blocks of each QR for NaN: on an accelerator these tests wait for
    the device once, when the layers' steps end; the steps are the same."""

    def run():
        model = _tall_model(F64)
        opt = DLRTOptimizer(
            model.parameters(),
            lr=0.05,
            method=ParallelBUG(Tolerance(0.1, relative=True), substep=Euler()),
        )
        gen = torch.Generator().manual_seed(5)
        for _ in range(2):
            x = torch.randn(BATCH, 784, generator=gen, dtype=F64)
            y = torch.randint(0, 10, (BATCH,), generator=gen)
            opt.zero_grad()
            CE(model(x), y).backward()
            host_reads.count = 0
            opt.step()
        return model, host_reads.count

    deferred, deferred_reads = run()
    from lowrank_integrators import _backend

    monkeypatch.setattr(_backend, "_DEFER", False)
    tested, tested_reads = run()
    assert deferred_reads < tested_reads
    for a, b in zip(deferred.parameters(), tested.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_parallel_bug_step_raises_when_its_tests_are_read(deferred_tests):
    from lowrank_integrators.errors import NonFiniteError

    model = _tall_model(F64)
    opt = DLRTOptimizer(
        model.parameters(),
        lr=0.05,
        method=ParallelBUG(Tolerance(0.1, relative=True), substep=Euler()),
    )
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(BATCH, 784, dtype=F64)
    x[3, 5] = float("nan")
    opt.zero_grad()
    CE(model(x), torch.randint(0, 10, (BATCH,))).backward()
    with pytest.raises(NonFiniteError):
        opt.step()
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["augmented", "parallel"])
def test_steps_on_cuda_keep_their_tests_there_and_equal_the_cpu_steps(method):
    """On a GPU the tests of the new bases and the finiteness tests stay on the device until
    the rank decision or the end of the step; the steps equal the CPU's to round-off."""

    def make(model):
        rule = Tolerance(0.1, relative=True)
        m = (
            AugmentedBUG(rule, substep=Euler())
            if method == "augmented"
            else ParallelBUG(rule, substep=Euler())
        )
        return DLRTOptimizer(model.parameters(), lr=0.05, method=m)

    cpu = _tall_model(F64)
    gpu = copy.deepcopy(cpu).cuda()
    opts = make(cpu), make(gpu)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(BATCH, 784, generator=gen, dtype=F64)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        for model, opt, dev in ((cpu, opts[0], "cpu"), (gpu, opts[1], "cuda")):
            opt.zero_grad()
            CE(model(x.to(dev)), y.to(dev)).backward()
            opt.step()
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    on_cpu = next(m for m in cpu if isinstance(m, LowRankLinear))
    on_gpu = next(m for m in gpu if isinstance(m, LowRankLinear))
    assert on_cpu.rank == on_gpu.rank
    W_cpu = (on_cpu.U @ on_cpu.S @ on_cpu.V.T).detach()
    W_gpu = (on_gpu.U @ on_gpu.S @ on_gpu.V.T).detach().cpu()
    torch.testing.assert_close(W_gpu, W_cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_non_finite_step_on_cuda_raises_and_leaves_the_model_unchanged():
    from lowrank_integrators.errors import NonFiniteError

    model = _tall_model(F64).cuda()
    opt = DLRTOptimizer(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(BATCH, 784, dtype=F64, device="cuda")
    x[0, 0] = float("nan")
    opt.zero_grad()
    CE(model(x), torch.randint(0, 10, (BATCH,), device="cuda")).backward()
    with pytest.raises(NonFiniteError):
        opt.step()
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
