"""The NumPy reference network: hand-written backpropagation against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_integrators import LowRankMatrix
from lowrank_integrators.training import MLP, Layer
from lowrank_integrators.training.network import _cross_entropy, parse_arch


def mixed_net() -> MLP:
    return MLP(
        [
            Layer(7, 6, "lowrank", 3),
            Layer(6, 5, "factorized", 2),
            Layer(5, 4, "dense"),
        ]
    )


def loss_at(net, W, P, b):
    return net.gradient(W, P, b).loss


def test_gradients_match_central_differences(rng):
    net = mixed_net()
    W, P = net.init(rng)
    b = (rng.standard_normal((11, 7)), rng.integers(0, 4, 11))
    gp = net.gradient(W, P, b)
    h = 1e-6
    # other parameters, entry by entry
    for j, p in enumerate(P):
        for idx in np.ndindex(p.shape):
            Pp = [q.copy() for q in P]
            Pm = [q.copy() for q in P]
            Pp[j][idx] += h
            Pm[j][idx] -= h
            fd = (loss_at(net, W, Pp, b) - loss_at(net, W, Pm, b)) / (2 * h)
            assert gp.param_grads[j][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    # the low-rank weight: directional derivatives along random directions D
    (Y,) = W
    Gd = gp.dense_gradient(0)
    for _ in range(3):
        D = rng.standard_normal(Y.shape)
        pts = []
        for s in (h, -h):
            Yd = LowRankMatrix.from_dense(Y.to_dense() + s * D, rank=min(Y.shape))
            pts.append(loss_at(net, [Yd], P, b))
        fd = (pts[0] - pts[1]) / (2 * h)
        assert np.sum(Gd * D) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_products_are_the_dense_gradient_applied_to_bases(rng):
    net = mixed_net()
    W, P = net.init(rng)
    gp = net.gradient(W, P, (rng.standard_normal((9, 7)), rng.integers(0, 4, 9)))
    G = gp.dense_gradient(0)
    U = np.linalg.qr(rng.standard_normal((6, 4)))[0]
    V = np.linalg.qr(rng.standard_normal((7, 2)))[0]
    np.testing.assert_allclose(gp.right(0, V), G @ V, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gp.left(0, U), G.T @ U, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gp.project(0, U, V), U.T @ G @ V, rtol=1e-12, atol=1e-14)


def test_products_in_the_weights_own_bases_reuse_what_the_pass_formed(rng):
    """X V0 (forward) and G U0 (backward) are not recomputed for the K- and L-steps of DLRT."""
    net = mixed_net()
    W, P = net.init(rng)
    gp = net.gradient(W, P, (rng.standard_normal((9, 7)), rng.integers(0, 4, 9)))
    U0, _, V0 = W[0]
    G = gp.dense_gradient(0)
    expected = gp.right(0, V0), gp.left(0, U0), gp.project(0, U0, V0)
    X, Gz = gp._acts[0]
    formed = gp._formed[0]
    assert formed["V"] is V0 and formed["U"] is U0
    np.testing.assert_array_equal(formed["XV"], X @ V0)
    np.testing.assert_array_equal(formed["GU"], Gz @ U0)
    for got, dense in zip(expected, (G @ V0, G.T @ U0, U0.T @ G @ V0), strict=True):
        np.testing.assert_allclose(got, dense, rtol=1e-12, atol=1e-14)
    # a copy of the basis is another basis: computed, same values
    np.testing.assert_array_equal(gp.right(0, V0.copy()), expected[0])


def test_a_factored_point_gives_the_same_forward_pass_as_its_dense_matrix(rng):
    net = MLP([Layer(5, 4, "lowrank", 2), Layer(4, 3, "dense")])
    W, P = net.init(rng)
    U, S, V = W[0]
    # the K-substep point K V^T with K = U S: not orthonormal, same matrix
    K_point = LowRankMatrix(U @ S, np.eye(2), V, check=False)
    X = rng.standard_normal((6, 5))
    np.testing.assert_allclose(net.forward([K_point], P, X), net.forward(W, P, X), rtol=1e-13)


def test_float32_network_stays_float32(rng):
    net = mixed_net()
    W, P = net.init(rng, dtype=np.float32)
    gp = net.gradient(W, P, (rng.standard_normal((5, 7)), rng.integers(0, 4, 5)))
    assert all(g.dtype == np.float32 for g in gp.param_grads)
    assert gp.right(0, W[0].V).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_relu_steps_change_no_bit_of_the_pass(rng, monkeypatch, dtype):
    """With numba the bias and ReLU of a hidden layer, and the ReLU's backward step, each take
    one compiled pass; the loss, every gradient and every product are NumPy's bit for bit."""
    pytest.importorskip("numba")
    from lowrank_integrators import _fused

    net = mixed_net()
    W, P = net.init(rng, dtype=dtype)
    batch = (rng.standard_normal((9, 7)).astype(dtype), rng.integers(0, 4, 9))

    def run():
        gp = net.gradient(W, P, batch)
        values = [gp.loss, *gp.param_grads, gp.right(0, W[0].V), gp.left(0, W[0].U)]
        return [np.asarray(v).tobytes() for v in values], net.forward(W, P, batch[0]).tobytes()

    compiled = run()
    monkeypatch.setattr(_fused, "use_numba", False)
    assert run() == compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32, np.int64])
def test_the_loss_and_its_gradient_are_the_softmax_cross_entropy(rng, dtype, label_dtype):
    B, classes = 300, 10  # 300 * 9 overflows the labels' own uint8 in a flat index
    logits = (5 * rng.standard_normal((B, classes))).astype(dtype)
    logits[0] = 1e4  # far beyond exp's range: computed from the shifted logits
    logits[1, 3] = -1e4
    y = rng.integers(0, classes, B).astype(label_dtype)
    loss, G = _cross_entropy(logits, y)
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    rows = np.arange(B)
    tol = 4 * float(np.finfo(dtype).eps)
    assert loss == pytest.approx(-logp[rows, y].mean(), rel=tol)
    expected = np.exp(logp)
    expected[rows, y] -= 1
    assert G.dtype == dtype and G.shape == (B, classes)
    np.testing.assert_allclose(G, expected / B, rtol=0, atol=tol / B)


def test_labels_outside_the_classes_are_refused(rng):
    logits = rng.standard_normal((4, 3))
    for bad in ([0, 1, 3, 2], [0, -1, 1, 2]):
        with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
            _cross_entropy(logits, np.array(bad))
    loss, G = _cross_entropy(logits[:0], np.array([], dtype=np.int64))
    assert np.isnan(loss) and G.shape == (0, 3)


def test_initial_singular_values_decay_geometrically(rng):
    net = MLP([Layer(30, 20, "lowrank", 6), Layer(20, 10, "factorized", 6), Layer(10, 3, "dense")])
    W, P = net.init(rng, singular_values=10.0)
    s0 = W[0].singular_values()
    np.testing.assert_allclose(s0, s0[0] * 10.0 ** -np.arange(6.0), rtol=1e-12)
    U, V = P[1], P[2]
    s1 = np.linalg.svd(U @ V.T, compute_uv=False)[:6]
    np.testing.assert_allclose(s1, s1[0] * 10.0 ** -np.arange(6.0), rtol=1e-9)


def test_parameter_counts_and_compression():
    net = MLP.from_arch("784-500-10", rank=20, last_dense=True)
    counts = net.parameter_counts([20])
    assert counts["dense"] == 784 * 500 + 500 + 500 * 10 + 10
    assert counts["evaluation"] == 20 * (784 + 500) + 500 + 500 * 10 + 10
    assert counts["training"] == 40 * (784 + 500) + 1600 + 500 + 500 * 10 + 10
    with pytest.raises(ValueError, match="ranks"):
        net.parameter_counts([20, 3])


def test_architecture_strings_and_bad_layers():
    assert parse_arch("64-256-10") == [64, 256, 10]
    net = MLP.from_arch("64-256-256-10", rank=300)
    assert [lay.kind for lay in net.layers] == ["lowrank", "lowrank", "dense"]
    assert net.layers[0].rank == 64  # clipped to min(n_in, n_out)
    with pytest.raises(ValueError, match="arch"):
        parse_arch("64-x-10")
    with pytest.raises(ValueError, match="n_in"):
        MLP([Layer(4, 3, "dense"), Layer(5, 2, "dense")])
    with pytest.raises(ValueError, match="kind"):
        Layer(4, 3, "sparse")
    with pytest.raises(ValueError, match="rank"):
        Layer(4, 3, "lowrank", 9)
    net = MLP.from_arch("4-3", kind="dense")
    with pytest.raises(TypeError, match="labels"):
        net.gradient([], net.init(np.random.default_rng(0))[1], (np.ones((2, 4)), np.ones(2)))


def test_training_import_pulls_no_optional_package():
    import subprocess
    import sys

    code = (
        "import sys, lowrank_integrators.training\n"
        "print(','.join(m for m in ('torch', 'sklearn', 'matplotlib', 'mnist1d') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
