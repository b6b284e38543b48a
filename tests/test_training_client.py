"""The low-rank training client: closed forms, lockstep passes, descent, rank adaptivity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lowrank_integrators import (
    BUG,
    AugmentedBUG,
    Euler,
    FixedRank,
    LowRankMatrix,
    ProjectorSplitting,
    Tolerance,
)
from lowrank_integrators.integrators import AugmentedBackwardCorrectedPSI, MidpointBUG, ParallelBUG
from lowrank_integrators.training import (
    MLP,
    SGD,
    Adam,
    HeavyBall,
    Layer,
    LowRankTraining,
    TrainingDiverged,
)


def small_net() -> MLP:
    return MLP([Layer(12, 9, "lowrank", 3), Layer(9, 7, "lowrank", 2), Layer(7, 4, "dense")])


def batch(rng, n=40, n_in=12, n_classes=4):
    return rng.standard_normal((n, n_in)), rng.integers(0, n_classes, n)


def orth(X):
    return np.linalg.qr(X)[0]


def proj(Q):
    return Q @ Q.T


def dense_grads(net, weights, params, b):
    """grad(W_i) of every low-rank layer at a point, densely, and the other gradients."""
    gp = net.gradient(weights, params, b)
    return [gp.dense_gradient(i) for i in range(net.n_lowrank)], gp.param_grads


def keep_all():
    return Tolerance(0.0)


def tol(dtype):
    return 100 * np.finfo(dtype).eps


# --- one Euler step equals the closed form of its integrator (identities I1-I4) -----------------


def test_dlrt_step_is_projected_gradient_step(rng):
    """I1: W1 = W0 - lr P_Uhat grad P_Vhat, Uhat = orth[U0, grad V0], Vhat = orth[V0, grad^T U0]."""
    net = small_net()
    W, P = net.init(rng)
    b, lr = batch(rng), 0.3
    G, g_par = dense_grads(net, W, P, b)
    client = LowRankTraining(AugmentedBUG(keep_all(), substep=Euler()), net.gradient)
    state, report = client.step(client.init(W, P), b, lr)
    for W0, Gi, W1 in zip(W, G, state.weights, strict=True):
        U0, _S0, V0 = W0
        Uh = orth(np.hstack([Gi @ V0, U0]))
        Vh = orth(np.hstack([Gi.T @ U0, V0]))
        expected = W0.to_dense() - lr * proj(Uh) @ Gi @ proj(Vh)
        assert np.linalg.norm(W1.to_dense() - expected) <= tol(np.float64) * np.linalg.norm(
            expected
        )
    for p0, g, p1 in zip(P, g_par, state.params, strict=True):
        np.testing.assert_allclose(p1, p0 - lr * g, rtol=1e-13, atol=1e-15)
    assert report.n_passes == 1


def test_parallel_bug_step_is_tangent_projected_gradient_step(rng):
    """I2: W1 = W0 - lr P(W0) grad."""
    net = small_net()
    W, P = net.init(rng)
    b, lr = batch(rng), 0.2
    G, _ = dense_grads(net, W, P, b)
    method = ParallelBUG(keep_all(), reject=False, substep=Euler())
    state, report = LowRankTraining(method, net.gradient).step(
        LowRankTraining(method, net.gradient).init(W, P), b, lr
    )
    for W0, Gi, W1 in zip(W, G, state.weights, strict=True):
        U0, _, V0 = W0
        PU, PV = proj(U0), proj(V0)
        tangent = PU @ Gi + Gi @ PV - PU @ Gi @ PV
        expected = W0.to_dense() - lr * tangent
        assert np.linalg.norm(W1.to_dense() - expected) <= tol(np.float64) * np.linalg.norm(
            expected
        )
    assert report.n_passes == 1


def test_abc_psi_step_is_one_sided_projected_gradient_step(rng):
    """I3: W1 = W0 - lr P_Uhat grad."""
    net = small_net()
    W, P = net.init(rng)
    b, lr = batch(rng), 0.2
    G, _ = dense_grads(net, W, P, b)
    client = LowRankTraining(
        AugmentedBackwardCorrectedPSI(keep_all(), substep=Euler()), net.gradient
    )
    state, report = client.step(client.init(W, P), b, lr)
    for W0, Gi, W1 in zip(W, G, state.weights, strict=True):
        U0, _, V0 = W0
        Uh = orth(np.hstack([Gi @ V0, U0]))
        expected = W0.to_dense() - lr * proj(Uh) @ Gi
        assert np.linalg.norm(W1.to_dense() - expected) <= tol(np.float64) * np.linalg.norm(
            expected
        )
    assert report.n_passes == 1


def test_bug_galerkin_step_sees_every_layer_at_its_own_galerkin_point(rng):
    """I4 in lockstep: the S-step gradient is taken at (P_U1 W0_i P_V1 for every layer i)."""
    net = small_net()
    W, P = net.init(rng)
    b, lr = batch(rng), 0.25
    G, _ = dense_grads(net, W, P, b)
    bases, points = [], []
    for W0, Gi in zip(W, G, strict=True):
        U0, S0, V0 = W0
        U1 = orth(U0 @ S0 - lr * Gi @ V0)
        V1 = orth(V0 @ S0.T - lr * Gi.T @ U0)
        bases.append((U1, V1))
        points.append(LowRankMatrix(U1, U1.T @ U0 @ S0 @ V0.T @ V1, V1, check=False))
    G_mid, _ = dense_grads(net, points, P, b)
    client = LowRankTraining(BUG(substep=Euler()), net.gradient)
    state, report = client.step(client.init(W, P), b, lr)
    for (U1, V1), Y, Gm, W1 in zip(bases, points, G_mid, state.weights, strict=True):
        expected = Y.to_dense() - lr * proj(U1) @ Gm @ proj(V1)
        assert np.linalg.norm(W1.to_dense() - expected) <= tol(np.float64) * np.linalg.norm(
            expected
        )
    assert report.n_passes == 2


@pytest.mark.parametrize(
    ("method", "passes"),
    [
        (AugmentedBUG(Tolerance(0.05, relative=True), substep=Euler()), 1),
        (ParallelBUG(Tolerance(0.05, relative=True), substep=Euler()), 1),
        (AugmentedBackwardCorrectedPSI(Tolerance(0.05, relative=True), substep=Euler()), 1),
        (BUG(substep=Euler()), 2),
        # Y0, the half step; the full-step Galerkin S-step starts at Y0 again (a cache hit)
        (MidpointBUG(Tolerance(0.05, relative=True), substep=Euler()), 2),
        (ProjectorSplitting(substep=Euler()), 3),
    ],
    ids=["augmented-bug", "parallel-bug", "abc-psi", "bug", "midpoint-bug", "psi"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_passes_per_step_are_the_methods_euler_points(rng, method, passes, dtype):
    net = small_net()
    W, P = net.init(rng, dtype=dtype)
    client = LowRankTraining(method, net.gradient)
    state = client.init(W, P)
    for _ in range(3):
        state, report = client.step(state, batch(rng), 0.1)
        assert report.n_passes == passes
        assert all(Y.dtype == dtype for Y in state.weights)


# --- one minibatch per step, lockstep, determinism ------------------------------------------------


class Recording:
    """A gradient callable that records the batch and the point of every pass."""

    def __init__(self, net):
        self.net = net
        self.calls = []

    def __call__(self, weights, params, b):
        self.calls.append((id(b), [Y.rank for Y in weights]))
        return self.net.gradient(weights, params, b)


@pytest.mark.parametrize(
    "method",
    [BUG(substep=Euler()), ProjectorSplitting(substep=Euler())],
    ids=["bug", "psi"],
)
def test_every_pass_of_a_step_uses_the_steps_minibatch(rng, method):
    net = small_net()
    rec = Recording(net)
    client = LowRankTraining(method, rec)
    state = client.init(*net.init(rng))
    for _ in range(3):
        b = batch(rng)
        rec.calls.clear()
        state, report = client.step(state, b, 0.1)
        assert len(rec.calls) == report.n_passes > 1
        assert {c[0] for c in rec.calls} == {id(b)}


def test_step_rejection_keeps_the_layers_in_lockstep_and_deterministic(rng):
    """ParallelBUG rejects per layer; a finished layer contributes its start point, so a
    repeated attempt at the start point reuses the step's first pass."""
    net = MLP([Layer(12, 10, "lowrank", 1), Layer(10, 8, "lowrank", 4), Layer(8, 4, "dense")])
    W, P = net.init(rng)
    batches = [batch(rng) for _ in range(4)]
    method = ParallelBUG(Tolerance(1e-3, relative=True), substep=Euler())

    def run():
        client = LowRankTraining(method, net.gradient)
        state = client.init(W, P)
        rejected, passes = 0, []
        for b in batches:
            state, report = client.step(state, b, 0.2)
            rejected += sum(info.rejected for info in report.layer_info)
            passes.append(report.n_passes)
        return state, rejected, passes

    s1, rejected, passes = run()
    s2, _, _ = run()
    assert rejected > 0
    assert passes == [1] * len(batches)
    for A, B in zip(s1.weights, s2.weights, strict=True):
        np.testing.assert_array_equal(A.to_dense(), B.to_dense())


def test_a_failing_pass_is_raised_not_deadlocked(rng):
    net = small_net()
    calls = {"n": 0}

    def flaky(weights, params, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return net.gradient(weights, params, b)

    client = LowRankTraining(BUG(substep=Euler()), flaky)
    state = client.init(*net.init(rng))
    with pytest.raises(RuntimeError, match="device lost"):
        client.step(state, batch(rng), 0.1)


# --- descent and rank adaptivity ----------------------------------------------------------------


class Quadratic:
    """L(W) = 1/2 ||W - A||_F^2 as a user-supplied gradient (the V9 gradient flow)."""

    def __init__(self, A):
        self.A = A
        self.param_grads = []

    def __call__(self, weights, params, b):
        (Y,) = weights
        return _QuadraticPass(Y.to_dense() - self.A)


class _QuadraticPass:
    param_grads: list = []  # noqa: RUF012

    def __init__(self, R):
        self.R = R
        self.loss = 0.5 * float(np.sum(R * R))

    def right(self, i, V):
        return self.R @ V

    def left(self, i, U):
        return self.R.T @ U

    def project(self, i, U, V):
        return U.T @ self.R @ V


def v9_target():
    g = np.random.default_rng(3)
    Ua = np.linalg.qr(g.standard_normal((100, 80)))[0]
    Va = np.linalg.qr(g.standard_normal((80, 80)))[0]
    U0 = np.linalg.qr(g.standard_normal((100, 5)))[0]
    V0 = np.linalg.qr(g.standard_normal((80, 5)))[0]
    S0 = np.diag(g.random(5))
    A = Ua @ np.diag(0.8 ** np.arange(80)) @ Va.T
    return A, LowRankMatrix(U0, S0, V0)


@pytest.mark.parametrize(
    "method",
    [
        AugmentedBUG(FixedRank(5), substep=Euler()),
        AugmentedBackwardCorrectedPSI(FixedRank(5), substep=Euler()),
    ],
    ids=["augmented-bug", "abc-psi"],
)
def test_user_gradient_flow_descends_to_the_best_approximation(method):
    """V9 through the client: lr = 1/Lip, the loss never increases and reaches L*."""
    A, Y0 = v9_target()
    client = LowRankTraining(method, Quadratic(A))
    state = client.init([Y0])
    losses = []
    for _ in range(60):
        state, report = client.step(state, None, 1.0)
        losses.append(report.loss)
    assert np.all(np.diff(losses) <= 1e-12 * losses[0])
    L_star = 0.5 * np.sum(0.64 ** np.arange(5, 80))
    final = 0.5 * np.linalg.norm(state.weights[0].to_dense() - A) ** 2
    assert final == pytest.approx(L_star, rel=1e-8)


def test_full_batch_training_loss_does_not_increase_up_to_truncation(rng):
    net = MLP([Layer(10, 16, "lowrank", 4), Layer(16, 16, "lowrank", 4), Layer(16, 3, "dense")])
    W, P = net.init(rng)
    X = rng.standard_normal((120, 10))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    client = LowRankTraining(
        AugmentedBUG(Tolerance(1e-3, relative=True), substep=Euler()), net.gradient
    )
    state = client.init(W, P)
    losses = []
    for _ in range(40):
        state, report = client.step(state, (X, y), 0.05)
        losses.append(report.loss)
    # per-step increase allowed: O(tau ||grad||) from the truncation
    assert np.all(np.diff(losses) <= 1e-3 * losses[0])
    assert losses[-1] < 0.8 * losses[0]


def test_ranks_adapt_down_from_a_decaying_start_and_up_from_rank_one(rng):
    net = MLP([Layer(12, 16, "lowrank", 8), Layer(16, 4, "dense")])
    W, P = net.init(rng, singular_values=2.0)
    method = AugmentedBUG(Tolerance(0.1, relative=True, rmin=1), substep=Euler())
    client = LowRankTraining(method, net.gradient)
    state, _ = client.step(client.init(W, P), batch(rng, n_classes=4), 0.05)
    assert state.ranks[0] < 8

    net1 = MLP([Layer(12, 16, "lowrank", 1), Layer(16, 4, "dense")])
    W, P = net1.init(rng)
    client = LowRankTraining(
        AugmentedBUG(Tolerance(1e-6, relative=True), substep=Euler()), net1.gradient
    )
    state = client.init(W, P)
    ranks = [1]
    for _ in range(3):
        state, _ = client.step(state, batch(rng, n_classes=4), 0.1)
        ranks.append(state.ranks[0])
    assert ranks[-1] > 1
    assert all(r1 <= 2 * r0 for r0, r1 in itertools.pairwise(ranks))

    capped = AugmentedBUG(Tolerance(1e-6, relative=True, rmin=1, rmax=3), substep=Euler())
    client = LowRankTraining(capped, net1.gradient)
    state = client.init(W, P)
    for _ in range(4):
        state, _ = client.step(state, batch(rng, n_classes=4), 0.1)
        assert state.ranks[0] <= 3
    assert state.ranks[0] == 3


# --- divergence ---------------------------------------------------------------------------------


# the overflow happens in the layers' worker threads, where np.errstate does not reach
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_divergence_raises_and_leaves_the_state_untouched():
    """lr far above 2/Lip on the quadratic: the iterates overflow within a few steps."""
    A, Y0 = v9_target()
    client = LowRankTraining(
        AugmentedBUG(Tolerance(0.1, relative=True), substep=Euler()), Quadratic(A)
    )
    state = client.init([Y0])
    n_ok = 0
    with pytest.raises(TrainingDiverged), np.errstate(over="ignore", invalid="ignore"):
        for _ in range(20):
            state, _ = client.step(state, None, 1e150)
            n_ok += 1
    assert 0 < n_ok < 20
    assert np.all(np.isfinite(state.weights[0].S))


def test_a_non_finite_loss_is_divergence(rng):
    net = small_net()
    W, P = net.init(rng)
    client = LowRankTraining(BUG(substep=Euler()), net.gradient)
    X, y = batch(rng)
    X[0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="loss"):
        client.step(client.init(W, P), (X, y), 0.1)


# --- optimizers ---------------------------------------------------------------------------------


def flip_signs(Y, signs):
    U, S, V = Y
    return LowRankMatrix(U * signs, signs[:, None] * S * signs[None, :], V * signs)


@pytest.mark.parametrize("optimizer", [SGD(), HeavyBall(0.9), Adam()], ids=repr)
def test_optimizers_do_not_depend_on_the_signs_of_the_basis_vectors(rng, optimizer):
    """Moments reused in old coordinates after a basis change would break this invariance."""
    net = small_net()
    W, P = net.init(rng)
    W_flipped = [flip_signs(Y, np.where(np.arange(Y.rank) % 2 == 0, 1.0, -1.0)) for Y in W]
    batches = [batch(rng) for _ in range(4)]
    method = AugmentedBUG(Tolerance(0.05, relative=True), substep=Euler())
    results = []
    for start in (W, W_flipped):
        client = LowRankTraining(method, net.gradient, optimizer)
        state = client.init(start, P)
        for b in batches:
            state, _ = client.step(state, b, 0.05)
        results.append([Y.to_dense() for Y in state.weights])
    for A, B in zip(*results, strict=True):
        np.testing.assert_allclose(A, B, rtol=1e-9, atol=1e-12)


class _AdamWithoutTransport(Adam):
    """The pitfall: moments reused as if the basis had not changed (a control)."""

    def layer_view(self, state, layer, step, W):
        view = super().layer_view(state, layer, step, W)
        original = view._transported

        def untransported(kind, bases, g):
            m = view.slot.get(f"{kind}_m")
            if m is None or m.shape != g.shape:
                return original(kind, bases, g)
            return m, view.slot[f"{kind}_v"]

        view._transported = untransported
        return view


def test_adam_without_transport_fails_the_invariance(rng):
    net = small_net()
    W, P = net.init(rng)
    W_flipped = [flip_signs(Y, np.where(np.arange(Y.rank) % 2 == 0, 1.0, -1.0)) for Y in W]
    batches = [batch(rng) for _ in range(4)]
    method = AugmentedBUG(FixedRank(3), substep=Euler())
    results = []
    for start in (W, W_flipped):
        client = LowRankTraining(method, net.gradient, _AdamWithoutTransport())
        state = client.init(start, P)
        for b in batches:
            state, _ = client.step(state, b, 0.05)
        results.append(state.weights[0].to_dense())
    assert not np.allclose(results[0], results[1], rtol=1e-6)


def test_heavy_ball_on_dense_layers_is_polyaks_iteration(rng):
    net = MLP([Layer(6, 5, "dense"), Layer(5, 3, "dense")])
    _, P = net.init(rng)
    b, lr, beta = batch(rng, n_in=6, n_classes=3), 0.1, 0.8
    client = LowRankTraining(AugmentedBUG(FixedRank(1)), net.gradient, HeavyBall(beta))
    state = client.init([], P)
    prev, cur = None, [p.copy() for p in P]
    for _ in range(3):
        state, _ = client.step(state, b, lr)
        g = net.gradient([], cur, b).param_grads
        nxt = [
            c - lr * gi + (beta * (c - p) if prev is not None else 0)
            for c, gi, p in zip(cur, g, prev or cur, strict=True)
        ]
        prev, cur = cur, nxt
    for a, e in zip(state.params, cur, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


def test_heavy_ball_low_rank_step_without_truncation(rng):
    """Second step: W2 = W1 - lr P_Uhat (g - (beta/lr)(W1 - W0)) P_Vhat with the DLRT bases."""
    net = small_net()
    W, P = net.init(rng)
    b1, b2, lr, beta = batch(rng), batch(rng), 0.1, 0.5
    client = LowRankTraining(
        AugmentedBUG(keep_all(), substep=Euler()), net.gradient, HeavyBall(beta)
    )
    s1, _ = client.step(client.init(W, P), b1, lr)
    G, _ = dense_grads(net, s1.weights, s1.params, b2)
    s2, _ = client.step(s1, b2, lr)
    for W0, W1, Gi, W2 in zip(W, s1.weights, G, s2.weights, strict=True):
        D = Gi - (beta / lr) * (W1.to_dense() - W0.to_dense())
        U1, _, V1 = W1
        Uh = orth(np.hstack([D @ V1, U1]))
        Vh = orth(np.hstack([D.T @ U1, V1]))
        expected = W1.to_dense() - lr * proj(Uh) @ D @ proj(Vh)
        assert np.linalg.norm(W2.to_dense() - expected) <= 1e3 * np.finfo(
            float
        ).eps * np.linalg.norm(expected)


# --- argument checking --------------------------------------------------------------------------


def test_bad_arguments_are_named(rng):
    net = small_net()
    with pytest.raises(TypeError, match="method"):
        LowRankTraining("augmented-bug", net.gradient)
    with pytest.raises(TypeError, match="gradient"):
        LowRankTraining(BUG(), None)
    with pytest.raises(TypeError, match="optimizer"):
        LowRankTraining(BUG(), net.gradient, optimizer="adam")
    client = LowRankTraining(BUG(substep=Euler()), net.gradient)
    W, P = net.init(rng)
    with pytest.raises(TypeError, match="weights"):
        client.init([np.eye(3)], P)
    with pytest.raises(ValueError, match="lr"):
        client.step(client.init(W, P), batch(rng), -1.0)
