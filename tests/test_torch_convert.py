"""convert: any model's Linear and Conv2d layers become low-rank from their best approximation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators.torch import (  # noqa: E402
    LowRankConv2d,
    TuckerConv2d,
    convert,
    lenet5,
    mlp,
    resolve_rank,
)

F64 = torch.float64


def test_int_ranks_are_clipped_and_fractions_scale_the_largest_rank():
    assert resolve_rank(5, 3) == 3
    assert resolve_rank(2, 3) == 2
    assert resolve_rank(0.5, 10) == 5
    assert resolve_rank(0.01, 10) == 1
    assert resolve_rank(1.0, 7) == 7
    for bad in (0, -1, 0.0, 1.5):
        with pytest.raises(ValueError, match="rank"):
            resolve_rank(bad, 4)
    with pytest.raises(TypeError, match="rank"):
        resolve_rank("3", 4)


def test_every_layer_is_converted_unless_excluded():
    model = convert(lenet5(), 0.5, exclude=("fc1", "fc2"))
    assert isinstance(model.conv1, LowRankConv2d)
    assert isinstance(model.conv2, LowRankConv2d)
    assert type(model.fc1) is torch.nn.Linear
    assert type(model.fc2) is torch.nn.Linear
    assert model.conv2.rank == 25  # half of min(50, 20 * 5 * 5)
    assert convert(torch.nn.Sequential(torch.nn.Linear(80, 50)), 0.5)[0].rank == 25
    tucker = convert(lenet5(), 3, conv="tucker", exclude=("fc1",))
    assert isinstance(tucker.conv2, TuckerConv2d)
    assert tucker.conv2.ranks == (3, 3, 3, 3)
    assert tucker.conv1.ranks == (3, 1, 3, 3)  # the input mode has one channel


def test_a_converted_layer_is_the_truncated_svd_of_the_weight():
    torch.manual_seed(0)
    dense = torch.nn.Linear(12, 9, dtype=F64)
    W = dense.weight.detach().clone()
    layer = convert(dense, 4)
    P, s, Qh = torch.linalg.svd(W)
    best = P[:, :4] @ torch.diag(s[:4]) @ Qh[:4]
    torch.testing.assert_close(layer.U @ layer.S @ layer.V.T, best)
    error = torch.linalg.matrix_norm(W - layer.U @ layer.S @ layer.V.T)
    torch.testing.assert_close(error, torch.linalg.vector_norm(s[4:]))


@pytest.mark.parametrize("conv", ["matrix", "tucker"])
def test_at_full_rank_the_converted_model_computes_the_same_function(conv):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1, dtype=F64),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, (3, 2), stride=2, dtype=F64),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5, dtype=F64),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # biases too, so that they are checked
    x = torch.randn(3, 2, 7, 7, dtype=F64)
    expected = model(x)
    converted = convert(model, 1.0, conv=conv)
    torch.testing.assert_close(converted(x), expected)
    assert all(p.dtype == F64 for p in converted.parameters())


def test_nested_modules_and_stride_padding_are_kept():
    torch.manual_seed(2)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=2))
    model = torch.nn.Sequential(inner, torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x = torch.randn(2, 3, 9, 9)
    model(x)  # materialise the lazy layer: it is not a plain Linear until then
    convert(model, 1.0, exclude=("2",))
    conv = model[0][0]
    assert isinstance(conv, LowRankConv2d)
    assert (conv.stride, conv.padding, conv.dilation) == ((2, 2), (1, 1), (2, 2))


def test_mlp_is_converted_layer_by_layer():
    model = convert(mlp([20, 16, 8, 3]), 4, exclude=("fc3",))
    assert [type(m).__name__ for m in model if not isinstance(m, torch.nn.ReLU)] == [
        "Flatten",
        "LowRankLinear",
        "LowRankLinear",
        "Linear",
    ]


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model"):
        convert("model", 2)
    with pytest.raises(ValueError, match="conv"):
        convert(lenet5(), 2, conv="cp")
    with pytest.raises(ValueError, match="exclude"):
        convert(lenet5(), 2, exclude=("fc9",))
    with pytest.raises(TypeError, match="exclude"):
        convert(lenet5(), 2, exclude="fc2")
    with pytest.raises(ValueError, match="groups"):
        convert(torch.nn.Conv2d(4, 4, 3, groups=2), 2)
