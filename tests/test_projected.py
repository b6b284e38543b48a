"""Projected operators ``W^H op W`` are formed once per step and basis."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators._projected import ProjectedOperators


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = bk.sandwich

    def sandwich(W, op, V):
        calls.append((W.shape[1], V.shape[1]))
        return real(W, op, V)

    monkeypatch.setattr(bk, "sandwich", sandwich)
    return calls


def operator(n, rng):
    """A real non-symmetric sparse operator."""
    return sp.random(n, n, density=0.05, random_state=np.random.RandomState(1), format="csr") + (
        sp.diags(rng.standard_normal(n), format="csr")
    )


def test_a_basis_is_projected_once_per_scope_and_not_outside(rng, counted):
    A = operator(300, rng)
    W = np.linalg.qr(rng.standard_normal((300, 4)))[0]
    kept = ProjectedOperators()
    expected = W.T @ (A @ W)
    with kept.scope():
        first = kept.get(W, A, "A")
        with kept.scope():  # a nested scope shares the products of the outer one
            assert kept.get(W, A, "A") is first
    np.testing.assert_allclose(first, expected, atol=1e-12)
    assert len(counted) == 1
    kept.get(W, A, "A")  # outside a scope nothing is kept
    with kept.scope():
        kept.get(W, A, "A")
    assert len(counted) == 3


def test_a_basis_the_step_releases_is_not_kept_alive(rng):
    A = operator(300, rng)
    kept = ProjectedOperators()
    with kept.scope():
        W = np.linalg.qr(rng.standard_normal((300, 4)))[0]
        kept.get(W, A, "A")
        ref = weakref.ref(W)
        del W
        gc.collect()
        assert ref() is None


def test_projector_splitting_forms_two_projected_operators_per_step_not_four(rng, counted):
    n = 200
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr")
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((n, n)), rank=5)
    problem = lri.SylvesterODE(T, 2.0 * T)
    method = lri.ProjectorSplitting()
    state = method.init(problem, Y0, 0.0)
    counted.clear()
    new, _ = method.step(problem, state, 0.0, 1e-3)
    assert len(counted) == 2  # V0^H B^T V0 (K- and S-step) and U1^H A U1 (S- and L-step)

    class Unshared(lri.SylvesterODE):
        step_scope = lri.MatrixODE.step_scope  # keeps nothing

    reference = method.step(Unshared(T, 2.0 * T), state, 0.0, 1e-3)[0]
    assert len(counted) == 2 + 4
    np.testing.assert_allclose(new.Y.to_dense(), reference.Y.to_dense(), atol=1e-12)
