"""Low-rank adapters and GeoLoRA: what fine-tuning a pretrained model needs to hold."""

from __future__ import annotations

import copy
import doctest
import importlib

import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators.torch import (  # noqa: E402
    GeoLoRA,
    LowRankAdapter,
    TuckerConv2d,
    adapter_parameters,
    adapter_state_dict,
    add_adapters,
    load_adapter_state_dict,
    merge_adapters,
)

CE = torch.nn.functional.cross_entropy


def base_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 24),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(24, 20), torch.nn.ReLU()),
        torch.nn.Linear(20, 4),
    )
    x = torch.randn(128, 12, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] * x[:, 2] > 0).long()
    return net, x, y


def adapted(rank=3, seed=0, **kw):
    net, x, y = base_model(seed)
    g = torch.Generator().manual_seed(seed + 1)
    add_adapters(net, rank, targets=["0", "2.0"], trainable=["3"], generator=g, **kw)
    return net, x, y


def train(net, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = CE(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def adapters_of(net):
    return [m for m in net.modules() if isinstance(m, LowRankAdapter)]


# --- adapters --------------------------------------------------------------------------------
def test_the_adapted_model_equals_the_base_model_exactly_at_step_zero():
    net, x, _ = base_model()
    expected = net(x)
    add_adapters(net, 4)
    assert len(adapters_of(net)) == 3
    assert torch.equal(net(x), expected)
    for a in adapters_of(net):
        assert torch.count_nonzero(a.delta_weight()) == 0
        eye = torch.eye(4)
        assert torch.allclose(a.U.mT @ a.U, eye, atol=1e-6)
        assert torch.allclose(a.V.mT @ a.V, eye, atol=1e-6)


def test_only_the_adapters_and_the_trainable_modules_require_gradients():
    net, _, _ = adapted()
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == ["0.U", "0.S", "0.V", "2.0.U", "2.0.S", "2.0.V", "3.weight", "3.bias"]
    assert not net[0].base_layer.weight.requires_grad
    assert not net[0].base_layer.bias.requires_grad


def test_targets_match_names_as_peft_does():
    net, _, _ = base_model()
    add_adapters(net, 2, targets=["0"])  # "0" and "2.0" both end with "0"
    assert isinstance(net[0], LowRankAdapter) and isinstance(net[2][0], LowRankAdapter)
    assert isinstance(net[3], torch.nn.Linear)
    net, _, _ = base_model()
    add_adapters(net, 2, targets=r"2\.0")  # a string is a regular expression on the full name
    assert isinstance(net[2][0], LowRankAdapter) and isinstance(net[0], torch.nn.Linear)
    net, _, _ = base_model()
    add_adapters(net, 2, trainable=["3"])  # by default every Linear outside trainable modules
    assert [type(m).__name__ for m in (net[0], net[2][0], net[3])] == [
        "LowRankAdapter",
        "LowRankAdapter",
        "Linear",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 13}, ValueError, "exceeds"),
        ({"rank": 2, "targets": ["nothing"]}, ValueError, "match no"),
        ({"rank": 2, "targets": ["1"]}, ValueError, "ReLU"),
        ({"rank": 2, "trainable": ["nothing"]}, ValueError, "trainable"),
        ({"rank": 2, "targets": ["3"], "trainable": ["3"]}, ValueError, "inside"),
        ({"rank": 2, "targets": [3]}, TypeError, "targets"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_changes(kwargs, error, match):
    net, _, _ = base_model()
    before = copy.deepcopy(net)
    rank = kwargs.pop("rank")
    with pytest.raises(error, match=match):
        add_adapters(net, rank, **kwargs)
    assert str(net) == str(before)
    assert all(p.requires_grad for p in net.parameters())


def test_the_merged_model_has_plain_linear_layers_and_the_same_outputs():
    net, x, y = adapted()
    opt = GeoLoRA(net.parameters(), lr=0.5, tau=0.1)
    train(net, opt, x, y, 10)
    assert any(a.rank != 3 for a in adapters_of(net))
    expected = net(x).detach()
    merged = merge_adapters(net)
    assert not adapters_of(merged)
    assert isinstance(merged[0], torch.nn.Linear) and isinstance(merged[2][0], torch.nn.Linear)
    out = merged(x).detach()
    assert torch.linalg.norm(out - expected) <= 1e-5 * torch.linalg.norm(expected)


def test_adapters_save_apart_from_the_base_and_load_at_any_rank():
    net, x, y = adapted(rank=3)
    opt = GeoLoRA(net.parameters(), lr=0.5, tau=0.05)
    train(net, opt, x, y, 10)
    ranks = [a.rank for a in adapters_of(net)]
    assert ranks != [3, 3]
    state = adapter_state_dict(net)
    assert set(state) == {
        "0.U",
        "0.S",
        "0.V",
        "2.0.U",
        "2.0.S",
        "2.0.V",
        "3.weight",
        "3.bias",
    }
    assert not any("base_layer" in k for k in state)
    expected = net(x).detach()
    # into a fresh base model: the named linear layers are wrapped at the stored ranks
    fresh, _, _ = base_model()
    load_adapter_state_dict(fresh, state)
    assert [a.rank for a in adapters_of(fresh)] == ranks
    assert torch.equal(fresh(x).detach(), expected)
    # into a model with adapters of another rank
    other, _, _ = adapted(rank=1, seed=0)
    load_adapter_state_dict(other, state)
    assert [a.rank for a in adapters_of(other)] == ranks
    assert torch.equal(other(x).detach(), expected)


def test_a_bad_adapter_state_is_refused_before_anything_is_loaded():
    net, x, _ = adapted()
    state = adapter_state_dict(net)
    before = net(x).detach()
    bad = dict(state)
    del bad["2.0.V"]
    bad["0.S"] = torch.ones(3, 3)
    with pytest.raises(ValueError, match="lacks"):
        load_adapter_state_dict(net, bad)
    with pytest.raises(ValueError, match="names no"):
        load_adapter_state_dict(net, {**state, "9.U": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="shapes"):
        load_adapter_state_dict(net, {**state, "0.U": torch.zeros(5, 3)})
    assert torch.equal(net(x).detach(), before)


# --- GeoLoRA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"adam": True}, {"budget": 200}])
def test_training_leaves_the_base_weights_bit_for_bit_unchanged(options):
    net, x, y = adapted()
    base = {n: p.detach().clone() for n, p in net.named_parameters() if "base_layer" in n}
    assert len(base) == 4
    lr = 0.01 if options.get("adam") else 0.5
    opt = GeoLoRA(net.parameters(), lr=lr, tau=0.1, **options)
    train(net, opt, x, y, 5)
    after = dict(net.named_parameters())
    for n, p in base.items():
        assert torch.equal(after[n], p), n


@pytest.mark.parametrize(("lr", "adam"), [(0.5, False), (0.01, True)])
def test_the_loss_decreases_on_a_small_task(lr, adam):
    net, x, y = adapted(rank=2)
    opt = GeoLoRA(net.parameters(), lr=lr, tau=0.1, adam=adam)
    losses = train(net, opt, x, y, 30)
    assert losses[-1] < 0.8 * losses[0]


def test_one_forward_and_one_backward_pass_per_step():
    net, x, y = adapted()
    opt = GeoLoRA(net.parameters(), lr=0.5, tau=0.05, reject=True)
    calls = {"forward": 0, "closure": 0}
    net.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))

    def closure():
        calls["closure"] += 1
        opt.zero_grad()
        loss = CE(net(x), y)
        loss.backward()
        for a in adapters_of(net):
            assert len(a._records) == 1  # one recorded backward pass per adapter
        return loss

    for k in range(1, 6):
        opt.step(closure)
        assert calls == {"forward": k, "closure": k}
    # and the standard loop needs no closure at all
    train(net, opt, x, y, 2)


def test_a_step_is_the_tangent_projected_euler_step_before_truncation():
    torch.manual_seed(3)
    lin = torch.nn.Linear(10, 7, dtype=torch.float64)
    adapter = LowRankAdapter(lin, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        adapter.S.copy_(torch.tensor([[0.3, 0.1], [0.0, 0.2]], dtype=torch.float64))
    x = torch.randn(32, 10, dtype=torch.float64)
    target = torch.randn(32, 7, dtype=torch.float64)
    U, V = adapter.U.detach().clone(), adapter.V.detach().clone()
    W = (lin.weight + adapter.delta_weight()).detach().requires_grad_(True)
    ((x @ W.mT + lin.bias - target) ** 2).sum().backward()
    G, h = W.grad, 0.01
    PU, PV = U @ U.mT, V @ V.mT
    expected = adapter.delta_weight() - h * (PU @ G + G @ PV - PU @ G @ PV)
    opt = GeoLoRA(adapter.parameters(), lr=h, tau=0.0)
    opt.zero_grad()
    ((adapter(x) - target) ** 2).sum().backward()
    opt.step()
    assert torch.allclose(adapter.delta_weight(), expected, atol=1e-12)
    assert adapter.rank == 4  # tau = 0 keeps the whole 2r core


def test_the_budget_holds_after_every_step_and_keeps_the_largest_singular_values():
    net, x, y = adapted(rank=4)
    layers = adapters_of(net)
    opt = GeoLoRA(net.parameters(), lr=0.5, tau=0.01, budget=250)
    for _ in range(8):
        train(net, opt, x, y, 1)
        assert adapter_parameters(layers) <= 250
        assert opt.last_budget.params_after == adapter_parameters(layers)
    # the decision itself, on known spectra: layer 0 is 24 x 12, layer 1 is 20 x 24
    sig = [torch.tensor([5.0, 4.0, 0.5, 0.1]), torch.tensor([3.0, 2.0, 1.0, 0.9])]
    # rank 1 everywhere costs (36 + 1) + (44 + 1); rank r -> r + 1 costs m + n + 2r + 1
    with_both_at_2 = 82 + 39 + 47
    cases = [
        (with_both_at_2 + 49, (2, 3), [0.5, 0.1, 0.9]),  # 1.0 fits; then nothing else
        (with_both_at_2 + 45, (3, 2), [0.1, 1.0, 0.9]),  # 1.0 does not fit; 0.5 does
    ]
    for budget, ranks, dropped in cases:
        for layer, s in zip(layers, sig, strict=True):
            U = torch.linalg.qr(torch.randn(layer.U.shape[0], 4))[0]
            V = torch.linalg.qr(torch.randn(layer.V.shape[0], 4))[0]
            layer.set_factors(U, torch.diag(s), V)
        record = opt._apply_budget(budget)
        assert record.ranks_before == (4, 4)
        assert record.ranks_after == ranks
        assert record.params_after == adapter_parameters(layers) <= budget
        assert record.tail == pytest.approx(float(torch.linalg.norm(torch.tensor(dropped))))
        for layer, s, k in zip(layers, sig, ranks, strict=True):
            assert torch.allclose(torch.linalg.svdvals(layer.S), s[:k])


def test_bad_optimizer_arguments_are_refused():
    net, _, _ = adapted()
    with pytest.raises(ValueError, match="tau"):
        GeoLoRA(net.parameters(), lr=0.1, tau=-1.0)
    with pytest.raises(ValueError, match="budget"):
        GeoLoRA(net.parameters(), lr=0.1, budget=0)
    with pytest.raises(ValueError, match="rank 1"):
        GeoLoRA(net.parameters(), lr=0.1, budget=50)
    with pytest.raises(ValueError, match="lr"):
        GeoLoRA(net.parameters(), lr=-0.1)
    tucker = TuckerConv2d(2, 3, 3, ranks=2)
    with pytest.raises(ValueError, match="TuckerConv2d"):
        GeoLoRA(tucker.parameters(), lr=0.1)


@pytest.mark.parametrize("name", ["adapters", "geolora"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"lowrank_integrators.torch.{name}")
    assert doctest.testmod(module, verbose=False).failed == 0


def test_a_deep_copy_of_model_and_optimizer_continues_identically():
    net, x, y = adapted()
    opt = GeoLoRA(net.parameters(), lr=0.01, tau=0.1, adam=True, budget=250)
    train(net, opt, x, y, 3)
    net2, opt2 = copy.deepcopy((net, opt))
    assert train(net, opt, x, y, 3) == train(net2, opt2, x, y, 3)
    assert opt2.budget == 250 and opt2.last_budget == opt.last_budget
