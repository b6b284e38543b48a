"""The augmentation of a basis by new columns: ``U_hat = [U0 D, Q]`` orthonormal, containing X.

The rank-adaptive steps factorise only the new columns (``project_out`` then
``augment_projected``); whatever the part of ``X`` outside ``span(U0)`` (large, at the level of
rounding, exactly zero), the result is orthonormal to working precision, keeps ``U0`` (up to
the signs ``D``) as its leading block and spans ``X``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_integrators.errors import NonFiniteError
from lowrank_integrators.integrators.augmentation import augment, augment_projected, project_out
from lowrank_integrators.integrators.base import Ledger

TOL = {np.float32: 1e-5, np.float64: 1e-13}


def basis_and_block(rng, m, r, k, dtype, outside, decay):
    U0 = np.linalg.qr(rng.standard_normal((m, r)))[0]
    N = rng.standard_normal((m, k)) * np.logspace(0, -decay, k)[None, :]
    X = U0 @ rng.standard_normal((r, k)) + outside * N
    return U0.astype(dtype), X.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("outside", [1.0, 1e-4, 1e-8, 0.0])
@pytest.mark.parametrize("decay", [0, 8])
@pytest.mark.parametrize("shape", [(500, 8, 8), (40, 3, 5)])
def test_new_columns_give_an_orthonormal_basis_that_spans_the_block(
    rng, dtype, outside, decay, shape
):
    m, r, k = shape
    U0, X = basis_and_block(rng, m, r, k, dtype, outside, decay)
    X_before = X.copy()
    led = Ledger()
    U_hat, d = augment_projected(led, project_out(U0, X), U0)
    tol = TOL[dtype]
    U = U_hat.astype(np.float64)
    assert U_hat.dtype == dtype and U_hat.shape == (m, r + k)
    assert np.abs(U.T @ U - np.eye(r + k)).max() <= tol
    # U_hat^H U0 = [diag(d); 0] with |d| = 1, the leading block U0 D itself
    assert np.array_equal(np.abs(d), np.ones(r, dtype))
    assert np.array_equal(U_hat[:, :r], U0 * d)
    # range(X) inside range(U_hat)
    X64 = X.astype(np.float64)
    assert np.linalg.norm(X64 - U @ (U.T @ X64)) <= 10 * tol * max(np.linalg.norm(X64), 1.0)
    assert np.array_equal(X, X_before)
    assert led.info.n_qr == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_zero_block_still_gives_an_orthonormal_basis(rng, dtype):
    U0 = np.linalg.qr(rng.standard_normal((30, 4)))[0].astype(dtype)
    for make in (
        lambda Z, U: augment_projected(Ledger(), project_out(U, Z), U),
        lambda Z, U: augment(Ledger(), Z, U),
    ):
        U_hat, d = make(np.zeros((30, 4), dtype), U0)
        U = U_hat.astype(np.float64)
        assert np.abs(U.T @ U - np.eye(8)).max() <= TOL[dtype]
        assert np.allclose(U.T @ U0, np.vstack([np.diag(d), np.zeros((4, 4))]), atol=TOL[dtype])


def test_the_basis_does_not_depend_on_the_signs_of_the_old_columns(rng):
    U0, X = basis_and_block(rng, 200, 5, 5, np.float64, 1e-2, 0)
    flip = np.array([1.0, -1.0, 1.0, -1.0, -1.0])
    a = augment_projected(Ledger(), project_out(U0, X), U0)[0]
    b = augment_projected(Ledger(), project_out(U0 * flip, X * flip), U0 * flip)[0]
    assert np.allclose(a, b, atol=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_refused_before_any_factorisation(rng, bad):
    U0, X = basis_and_block(rng, 50, 3, 3, np.float64, 1.0, 0)
    X[7, 1] = bad
    with pytest.raises(NonFiniteError, match="non-finite"):
        project_out(U0, X)
