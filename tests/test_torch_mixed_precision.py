"""bfloat16 forward and backward (torch.autocast) with float32 factors and float32 steps."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators.torch import DLRTOptimizer, convert  # noqa: E402

nn = torch.nn


def small_network():
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten()]
    return nn.Sequential(*convs, nn.Linear(12 * 16, 20), nn.ReLU(), nn.Linear(20, 5))


def train(model, x, y, autocast, steps=3):
    opt = DLRTOptimizer(model.parameters(), lr=0.05, tau=0.05)
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()
    return out


@pytest.mark.parametrize("conv", ["matrix", "tucker"])
def test_bfloat16_passes_step_float32_factors_like_float32_passes(conv):
    base = convert(small_network(), 0.5, conv=conv, exclude=("7",))
    start, mixed = copy.deepcopy(base), copy.deepcopy(base)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    assert train(mixed, x, y, autocast=True).dtype == torch.bfloat16
    assert train(base, x, y, autocast=False).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    for a, b in zip(base.modules(), mixed.modules(), strict=True):
        if hasattr(a, "ranks") or hasattr(a, "S"):
            assert getattr(a, "ranks", None) == getattr(b, "ranks", None)
            assert getattr(a, "rank", None) == getattr(b, "rank", None)
    with torch.no_grad():  # factors are defined up to signs: compare what the networks compute
        moved = (base(x) - start(x)).abs().max()
        assert moved > 5e-3  # the steps changed the network ...
        # ... and the bfloat16 passes changed it as the float32 ones, to bfloat16 round-off
        torch.testing.assert_close(mixed(x), base(x), rtol=0.0, atol=float(moved) / 10)
