"""Low-rank and Tucker layers: the convolution they stand for, DLRT gradients, any-rank loading."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lowrank_integrators.torch import LowRankConv2d, LowRankLinear, TuckerConv2d  # noqa: E402

F64 = torch.float64


def dense_conv(layer, W, x):
    return torch.nn.functional.conv2d(x, W, layer.bias, layer.stride, layer.padding, layer.dilation)


def matrix_kernel(layer):
    W = layer.U @ layer.S @ layer.V.T
    return W.reshape(layer.out_channels, layer.in_channels, *layer.kernel_size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 1, "padding": 0, "dilation": 1, "bias": True},
        {"stride": 2, "padding": 1, "dilation": 1, "bias": False},
        {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 1), "bias": True},
    ],
    ids=["plain", "stride-padding", "dilation"],
)
def test_low_rank_convolution_is_the_convolution_with_the_matricised_kernel(kwargs):
    g = torch.Generator().manual_seed(0)
    layer = LowRankConv2d(3, 7, (3, 2), rank=4, dtype=F64, generator=g, **kwargs)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_(generator=g)
    x = torch.randn(2, 3, 9, 8, dtype=F64, generator=g)
    torch.testing.assert_close(layer(x), dense_conv(layer, matrix_kernel(layer).detach(), x))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 2)])
def test_tucker_convolution_is_the_convolution_with_the_tucker_kernel(stride, padding, dilation):
    g = torch.Generator().manual_seed(1)
    layer = TuckerConv2d(
        4,
        6,
        3,
        ranks=(3, 2, 2, 3),
        stride=stride,
        padding=padding,
        dilation=dilation,
        dtype=F64,
        generator=g,
    )
    x = torch.randn(2, 4, 10, 10, dtype=F64, generator=g)
    W = layer.tucker.to_dense()
    torch.testing.assert_close(layer(x), dense_conv(layer, W, x))
    assert layer.ranks == (3, 2, 2, 3)


def take(layer, route):
    """Make ``layer`` take one way of its forward and backward pass whatever its rank.

    "kernel": forms the weight and its gradient; "kernel-gradient": the factored forward and
    the weight's gradient; "products": the factored forward and the products with the factors.
    """
    layer.forms_kernel = lambda rank: route == "kernel"
    layer.forms_gradient = lambda rank: route != "products"


ROUTES = ["kernel", "kernel-gradient", "products"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_factor_gradients_are_the_dlrt_gradients_and_the_recorded_products_are_exact(kind, route):
    g = torch.Generator().manual_seed(2)
    if kind == "linear":
        layer = LowRankLinear(7, 5, 3, dtype=F64, generator=g)
        x = torch.randn(4, 7, dtype=F64, generator=g)

        def dense_layer(W):
            return x @ W.T + layer.bias
    else:
        layer = LowRankConv2d(3, 6, 3, rank=4, stride=2, padding=1, dtype=F64, generator=g)
        x = torch.randn(2, 3, 9, 9, dtype=F64, generator=g)

        def dense_layer(W):
            return dense_conv(layer, W.reshape(6, 3, 3, 3), x)

    # every way of taking the products: from grad(W) formed once, or from x V and G U
    take(layer, route)
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    W = (layer.U @ layer.S @ layer.V.T).detach().requires_grad_(True)
    x.requires_grad_(True)
    dense = dense_layer(W)
    c = torch.randn(dense.shape, dtype=F64, generator=g)
    gW, gb, gx = torch.autograd.grad((dense * c).sum(), (W, layer.bias, x))
    out = layer(x)
    torch.testing.assert_close(out, dense.detach())
    (out * c).sum().backward()
    assert (layer._records[0].grad is not None) == (route != "products")
    torch.testing.assert_close(layer.bias.grad, gb)
    torch.testing.assert_close(x.grad, gx)
    U, V = layer.U.detach(), layer.V.detach()
    torch.testing.assert_close(layer.U.grad, gW @ V)
    torch.testing.assert_close(layer.V.grad, gW.T @ U)
    torch.testing.assert_close(layer.S.grad, U.T @ gW @ V)
    A = torch.randn(V.shape[0], 5, dtype=F64, generator=g)
    B = torch.randn(U.shape[0], 2, dtype=F64, generator=g)
    torch.testing.assert_close(layer.grad_right(A), gW @ A)
    torch.testing.assert_close(layer.grad_left(B), gW.T @ B)
    torch.testing.assert_close(layer.grad_project(B, A), B.T @ gW @ A)


def test_a_layer_forms_its_weight_only_where_the_factors_do_not_compress_it():
    # the entries of the weight against those of U, S and V
    conv1, conv2 = LowRankConv2d(1, 20, 5, rank=11), LowRankConv2d(20, 50, 5, rank=25)
    assert conv1.forms_kernel(11)  # 20 * 25 <= 11 * (20 + 25 + 11)
    assert conv1.forms_kernel(10)  # 500 <= 10 * 55
    assert not conv1.forms_kernel(9)  # 500 > 9 * 54
    assert not conv2.forms_kernel(25)
    assert not LowRankLinear(800, 500, rank=32).forms_kernel(32)
    assert LowRankLinear(4, 3, rank=2).forms_kernel(2)  # 12 <= 2 * 9
    with torch.no_grad():  # the evaluation forward takes the same way
        x = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(conv1(x), dense_conv(conv1, matrix_kernel(conv1), x))


def test_a_layer_forms_its_kernel_gradient_only_where_that_costs_less_than_the_products():
    # LeNet5's layers: conv1 (20 x 25), conv2 (50 x 500), fc1 (500 x 800)
    conv1, conv2 = LowRankConv2d(1, 20, 5, rank=13), LowRankConv2d(20, 50, 5, rank=16)
    fc1 = LowRankLinear(800, 500, rank=32)
    assert conv1.forms_gradient(13)  # 20 * 25 < (20 + 25) * (13 + 12)
    assert not conv2.forms_gradient(16)  # 50 * 500 > 550 * 32
    assert conv2.forms_gradient(28)  # 50 * 500 < 550 * 56
    assert not fc1.forms_gradient(32)


@pytest.mark.parametrize("route", ROUTES)
def test_a_pass_that_forms_the_kernel_gradient_releases_the_activations(route):
    # as in a dense layer, the input and the output gradient die with the backward pass; the
    # products of the step need them only where they are not taken from grad(W)
    g = torch.Generator().manual_seed(5)
    layer = LowRankConv2d(2, 4, 3, rank=2, padding=1, dtype=F64, generator=g)
    take(layer, route)
    x = torch.randn(1, 2, 6, 6, dtype=F64, generator=g)
    c = torch.randn(1, 4, 6, 6, dtype=F64, generator=g)
    (layer(x) * c).sum().backward()
    (rec,) = layer._records
    if route == "products":
        assert rec.x.data_ptr() == x.data_ptr() and rec.G is not None
    else:
        assert rec.x is None and rec.G is None and rec.grad is not None
    U, V = layer.U.detach(), layer.V.detach()
    torch.testing.assert_close(layer.grad_project(U, V), layer.S.grad)


@pytest.mark.parametrize("route", ROUTES)
def test_input_gradients_are_those_of_the_dense_layer(route):
    g = torch.Generator().manual_seed(3)
    layer = LowRankConv2d(2, 4, 3, rank=2, padding=1, dtype=F64, generator=g)
    take(layer, route)
    x = torch.randn(1, 2, 6, 6, dtype=F64, generator=g, requires_grad=True)
    c = torch.randn(1, 4, 6, 6, dtype=F64, generator=g)
    (gx,) = torch.autograd.grad((layer(x) * c).sum(), x)
    (gx_dense,) = torch.autograd.grad((dense_conv(layer, matrix_kernel(layer), x) * c).sum(), x)
    torch.testing.assert_close(gx, gx_dense)


def test_two_backward_passes_add_up_like_autograd():
    g = torch.Generator().manual_seed(4)
    layer = LowRankLinear(6, 5, 2, dtype=F64, generator=g)
    x1, x2 = (torch.randn(3, 6, dtype=F64, generator=g) for _ in range(2))
    layer(x1).square().sum().backward()
    layer(x2).sin().sum().backward()
    W = (layer.U @ layer.S @ layer.V.T).detach().requires_grad_(True)
    (gW,) = torch.autograd.grad(
        (x1 @ W.T + layer.bias).square().sum() + (x2 @ W.T + layer.bias).sin().sum(), W
    )
    torch.testing.assert_close(layer.U.grad, gW @ layer.V.detach())
    A = torch.randn(6, 3, dtype=F64, generator=g)
    torch.testing.assert_close(layer.grad_right(A), gW @ A)


def test_factors_are_parameters_and_in_the_state_dict():
    layer = LowRankConv2d(3, 8, 3, rank=2)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"U", "S", "V", "bias"}
    assert set(layer.state_dict()) == names
    tucker = TuckerConv2d(3, 8, 3, ranks=2)
    assert {n for n, _ in tucker.named_parameters()} == {"core", "U1", "U2", "U3", "U4", "bias"}


@pytest.mark.parametrize("rank_saved,rank_target", [(5, 2), (2, 5)])
def test_load_state_dict_resizes_the_layer_to_the_saved_rank(rank_saved, rank_target):
    g = torch.Generator().manual_seed(5)
    saved = torch.nn.Sequential(LowRankLinear(9, 7, rank_saved, generator=g), torch.nn.ReLU())
    target = torch.nn.Sequential(LowRankLinear(9, 7, rank_target, generator=g), torch.nn.ReLU())
    target.load_state_dict(saved.state_dict())
    assert target[0].rank == rank_saved
    x = torch.randn(4, 9, generator=g)
    torch.testing.assert_close(target(x), saved(x))
    target(x).sum().backward()  # the resized layer trains
    assert target[0].U.grad.shape == (7, rank_saved)


def test_load_state_dict_resizes_every_tucker_mode():
    g = torch.Generator().manual_seed(6)
    saved = TuckerConv2d(3, 6, 3, ranks=(4, 3, 2, 3), generator=g)
    target = TuckerConv2d(3, 6, 3, ranks=1, generator=g)
    target.load_state_dict(saved.state_dict())
    assert target.ranks == (4, 3, 2, 3)
    x = torch.randn(1, 3, 7, 7, generator=g)
    torch.testing.assert_close(target(x), saved(x))


def test_evaluation_without_gradients_records_nothing():
    layer = LowRankLinear(4, 3, 2)
    with torch.no_grad():
        layer(torch.randn(2, 4))
    assert layer._records == []
    with pytest.raises(RuntimeError, match="backward"):
        layer.grad_right(torch.randn(4, 1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(4, 3, 5)
    with pytest.raises(ValueError, match="in_features"):
        LowRankLinear(0, 3, 1)
    with pytest.raises(ValueError, match="rank"):
        LowRankConv2d(1, 4, 3, rank=10)
    with pytest.raises(TypeError, match="stride"):
        LowRankConv2d(1, 4, 3, rank=1, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="ranks"):
        TuckerConv2d(1, 4, 3, ranks=(1, 2))
    with pytest.raises(ValueError, match="shapes"):
        LowRankLinear(4, 3, 2).set_factors(torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(5, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_layers_run_on_cuda():
    layer = LowRankConv2d(3, 8, 3, rank=2, device="cuda")
    x = torch.randn(2, 3, 8, 8, device="cuda")
    layer(x).sum().backward()
    assert layer.U.grad.device.type == "cuda"
    assert layer.grad_right(layer.V.detach()).device.type == "cuda"
