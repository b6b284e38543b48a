"""The PyTorch adapter takes the NumPy client's step, with gradients from autograd."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators import BUG, AugmentedBUG, Euler, Tolerance  # noqa: E402
from lowrank_integrators.integrators import ParallelBUG  # noqa: E402
from lowrank_integrators.training import MLP, Adam, HeavyBall, Layer, LowRankTraining  # noqa: E402
from lowrank_integrators.training.torch_adapter import (  # noqa: E402
    DLRTOptimizer,
    LowRankLinear,
    TorchGradient,
)


def twin_models(rng):
    """A NumPy MLP and a torch model with identical float64 weights."""
    net = MLP([Layer(9, 8, "lowrank", 3), Layer(8, 6, "lowrank", 2), Layer(6, 4, "dense")])
    W, P = net.init(rng)
    model = torch.nn.Sequential(
        LowRankLinear(9, 8, 3, dtype=torch.float64),
        torch.nn.ReLU(),
        LowRankLinear(8, 6, 2, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 4, dtype=torch.float64),
    )
    for layer, Y in zip((model[0], model[2]), W, strict=True):
        layer.set_factors(type(Y)(*(torch.from_numpy(a.copy()) for a in Y), check=False))
    with torch.no_grad():
        for p, a in zip(model.parameters(), P, strict=True):
            p.copy_(torch.from_numpy(a))
    return net, W, P, model


@pytest.mark.parametrize(
    "method",
    [
        AugmentedBUG(Tolerance(0.05, relative=True), substep=Euler()),
        BUG(substep=Euler()),
        ParallelBUG(Tolerance(0.05, relative=True), substep=Euler()),
    ],
    ids=["augmented-bug", "bug", "parallel-bug"],
)
@pytest.mark.parametrize(
    "optimizer", [None, HeavyBall(0.5), Adam()], ids=["sgd", "momentum", "adam"]
)
def test_torch_adapter_takes_the_numpy_clients_steps(rng, method, optimizer):
    net, W, P, model = twin_models(rng)
    batches = [(rng.standard_normal((16, 9)), rng.integers(0, 4, 16)) for _ in range(3)]
    client = LowRankTraining(method, net.gradient, optimizer)
    state = client.init(W, P)
    opt = DLRTOptimizer(
        model, method, lr=0.1, loss_fn=torch.nn.functional.cross_entropy, optimizer=optimizer
    )
    for X, y in batches:
        state, rep_np = client.step(state, (X, y), 0.1)
        rep_t = opt.step(torch.from_numpy(X), torch.from_numpy(y))
        assert rep_t.loss == pytest.approx(rep_np.loss, rel=1e-12)
        assert rep_t.ranks == rep_np.ranks
    for layer, Y in zip((model[0], model[2]), state.weights, strict=True):
        dense_t = (layer.U @ layer.S @ layer.V.T).numpy()
        np.testing.assert_allclose(dense_t, Y.to_dense(), rtol=1e-10, atol=1e-12)
    for p, a in zip(model.parameters(), state.params, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-10, atol=1e-12)


def test_products_are_the_autograd_gradients_with_respect_to_K_L_and_S(rng):
    _, _W, _P, model = twin_models(rng)
    x = torch.from_numpy(rng.standard_normal((12, 9)))
    y = torch.from_numpy(rng.integers(0, 4, 12))
    grad = TorchGradient(model, torch.nn.functional.cross_entropy)
    weights = [layer.factors for layer in grad.layers]
    params = [p.detach() for p in model.parameters()]
    gp = grad(weights, params, (x, y))
    U, S, V = model[0].U, model[0].S, model[0].V

    def loss_with_first_weight(W0):
        rest = torch.nn.Sequential(*list(model.children())[1:])
        return torch.nn.functional.cross_entropy(rest(x @ W0.T + model[0].bias), y)

    K = (U @ S).clone().requires_grad_(True)
    (gK,) = torch.autograd.grad(loss_with_first_weight(K @ V.T), K)
    L = (V @ S.T).clone().requires_grad_(True)
    (gL,) = torch.autograd.grad(loss_with_first_weight(U @ L.T), L)
    Sg = S.clone().requires_grad_(True)
    (gS,) = torch.autograd.grad(loss_with_first_weight(U @ Sg @ V.T), Sg)
    torch.testing.assert_close(gp.right(0, V), gK)
    torch.testing.assert_close(gp.left(0, U), gL)
    torch.testing.assert_close(gp.project(0, U, V), gS)


def test_float32_torch_training_decreases_the_loss():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        LowRankLinear(10, 32, 8, generator=g), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    )
    x = torch.randn(64, 10, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    method = AugmentedBUG(Tolerance(0.05, relative=True, rmin=2), substep=Euler())
    opt = DLRTOptimizer(model, method, lr=0.2, loss_fn=torch.nn.functional.cross_entropy)
    losses = [opt.step(x, y).loss for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    assert model[0].U.dtype == torch.float32
    assert model[0].rank == opt.state.ranks[0]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(4, 3, 5)
    with pytest.raises(TypeError, match="model"):
        TorchGradient("model", torch.nn.functional.cross_entropy)
