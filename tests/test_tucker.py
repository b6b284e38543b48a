"""Specification of the Tucker container and its multilinear algebra (C-order convention)."""

from __future__ import annotations

import string

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.tucker import fold, mode_product, multi_mode_product, unfold

from .conftest import to_xp


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def random_orthonormal(rng, n, r, dtype=np.float64):
    X = rng.standard_normal((n, r))
    if np.issubdtype(dtype, np.complexfloating):
        X = X + 1j * rng.standard_normal((n, r))
    return np.linalg.qr(X)[0].astype(dtype)


def random_tucker(rng, shape, ranks, dtype=np.float64):
    core = rng.standard_normal(ranks)
    if np.issubdtype(dtype, np.complexfloating):
        core = core + 1j * rng.standard_normal(ranks)
    factors = [random_orthonormal(rng, n, r, dtype) for n, r in zip(shape, ranks, strict=True)]
    return lri.TuckerTensor(core.astype(dtype), factors)


def einsum_mode_product(X, A, mode):
    """X x_mode A written with einsum: an independent spelling of the definition."""
    letters = string.ascii_lowercase[: X.ndim]
    out = letters.replace(letters[mode], "z")
    return np.einsum(f"z{letters[mode]},{letters}->{out}", A, X)


def kron_all(mats):
    out = np.ones((1, 1))
    for M in mats:
        out = np.kron(out, M)
    return out


# --- multilinear algebra ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5)])
def test_unfold_moves_the_mode_to_the_front_in_c_order(rng, shape):
    X = rng.standard_normal(shape)
    for i in range(len(shape)):
        expected = np.moveaxis(X, i, 0).reshape(shape[i], -1)
        np.testing.assert_array_equal(unfold(X, i), expected)
        np.testing.assert_array_equal(fold(unfold(X, i), i, shape), X)


def test_mode_product_is_the_contraction_with_the_second_axis(rng):
    X = rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))
    for i, n in enumerate(X.shape):
        A = rng.standard_normal((7, n)) + 1j * rng.standard_normal((7, n))
        Z = mode_product(X, A, i)
        assert Z.shape[i] == 7
        np.testing.assert_allclose(Z, einsum_mode_product(X, A, i), rtol=1e-13, atol=1e-13)
        # Mat_i(X x_i A) = A Mat_i(X)
        np.testing.assert_allclose(unfold(Z, i), A @ unfold(X, i), rtol=1e-13, atol=1e-13)


def test_multi_mode_product_skips_none_and_ignores_the_order_of_contraction(rng):
    X = rng.standard_normal((3, 4, 5))
    A = [rng.standard_normal((6, 3)), None, rng.standard_normal((2, 5))]
    expected = einsum_mode_product(einsum_mode_product(X, A[0], 0), A[2], 2)
    np.testing.assert_allclose(multi_mode_product(X, A), expected, rtol=1e-13, atol=1e-13)


def test_mode_product_rejects_a_wrong_matrix(rng):
    X = rng.standard_normal((3, 4, 5))
    with pytest.raises(ValueError, match="4 columns"):
        mode_product(X, np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="mode"):
        unfold(X, 3)


# --- the mode-i matrix form --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize(("shape", "ranks"), [((6, 5, 4), (3, 2, 4)), ((5, 4, 3, 4), (2, 3, 2, 2))])
def test_mode_i_matricization_is_U_i_S_i_V_i_H(rng, dtype, shape, ranks):
    Y = random_tucker(rng, shape, ranks, dtype)
    dense = Y.to_dense()
    tol = 100 * _eps(dtype) * np.linalg.norm(dense)
    core, factors = Y
    for i in range(len(shape)):
        M = Y.matricize(i)
        U, _, V = M
        np.testing.assert_allclose(M.to_dense(), unfold(dense, i), atol=tol)
        assert U is factors[i]
        assert np.linalg.norm(V.conj().T @ V - np.eye(V.shape[1])) < 100 * _eps(dtype)
        # The convention: Kronecker factors of the other modes in increasing order.
        others = kron_all([factors[j] for j in range(len(shape)) if j != i])
        np.testing.assert_allclose(
            factors[i] @ unfold(core, i) @ others.T, unfold(dense, i), atol=tol
        )


def test_singular_values_are_those_of_the_unfoldings_of_the_tensor(rng):
    Y = random_tucker(rng, (7, 6, 5), (3, 4, 2), np.complex128)
    dense = Y.to_dense()
    sv = Y.singular_values()
    assert isinstance(sv, tuple) and len(sv) == 3
    for i, s in enumerate(sv):
        assert isinstance(s, np.ndarray)
        expected = np.linalg.svd(unfold(dense, i), compute_uv=False)[: Y.ranks[i]]
        np.testing.assert_allclose(s[: len(expected)], expected, rtol=1e-12, atol=1e-12)


def test_tucker_tensor_unpacks_like_core_and_factors(rng):
    Y = random_tucker(rng, (5, 4, 3), (2, 2, 3))
    core, factors = Y
    assert core is Y.core and isinstance(factors, tuple) and len(factors) == 3
    assert Y.shape == (5, 4, 3) and Y.ranks == (2, 2, 3) and Y.ndim == 3
    assert Y.dtype == np.float64
    np.testing.assert_allclose(Y.norm(), np.linalg.norm(Y.to_dense()), rtol=1e-12)
    assert "ranks=(2, 2, 3)" in repr(Y)


# --- HOSVD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_hosvd_reproduces_a_tensor_of_low_multilinear_rank(rng, dtype):
    X = random_tucker(rng, (8, 7, 6, 5), (3, 2, 4, 2), dtype).to_dense()
    Y = lri.TuckerTensor.from_dense(X, ranks=(3, 2, 4, 2))
    assert Y.ranks == (3, 2, 4, 2)
    np.testing.assert_allclose(Y.to_dense(), X, atol=100 * _eps(dtype) * np.linalg.norm(X))
    # Valid container: the check accepts its own factors.
    lri.TuckerTensor(Y.core, Y.factors)
    # A tolerance finds the multilinear rank by itself.
    Z = lri.TuckerTensor.from_dense(X, tol=1e-8 * np.linalg.norm(X))
    assert Z.ranks == (3, 2, 4, 2)


def test_hosvd_with_a_tolerance_keeps_the_error_below_it(rng):
    X = random_tucker(rng, (9, 8, 7), (3, 3, 3)).to_dense()
    X = X + 1e-3 * rng.standard_normal(X.shape)
    for tol in (1e-1, 3e-2, 1e-2):
        Y = lri.TuckerTensor.from_dense(X, tol=tol)
        assert np.linalg.norm(Y.to_dense() - X) <= tol
    coarse = lri.TuckerTensor.from_dense(X, tol=1e-1).ranks
    fine = lri.TuckerTensor.from_dense(X, tol=1e-2).ranks
    assert all(c <= f for c, f in zip(coarse, fine, strict=True))
    # An int rank applies to every mode.
    assert lri.TuckerTensor.from_dense(X, ranks=2).ranks == (2, 2, 2)


def test_float32_tucker_round_trip_at_single_precision(rng):
    X = random_tucker(rng, (10, 9, 8), (2, 3, 2)).to_dense().astype(np.float32)
    Y = lri.TuckerTensor.from_dense(X, ranks=(2, 3, 2))
    assert Y.dtype == np.float32
    lri.TuckerTensor(Y.core, Y.factors)  # orthonormality checked at float32 tolerance
    err = np.linalg.norm(Y.to_dense() - X) / np.linalg.norm(X)
    assert err < 100 * _eps(np.float32)


def test_tucker_algebra_runs_on_every_backend(xp, rng):
    Y_np = random_tucker(rng, (6, 5, 4), (2, 3, 2))
    X = to_xp(xp, Y_np.to_dense())
    Y = lri.TuckerTensor.from_dense(X, ranks=(2, 3, 2))
    assert type(Y.core) is type(X)
    assert all(type(U) is type(X) for U in Y.factors)
    np.testing.assert_allclose(bk.to_host(Y.to_dense()), Y_np.to_dense(), atol=1e-12)
    M = Y.matricize(1)
    np.testing.assert_allclose(bk.to_host(M.to_dense()), unfold(Y_np.to_dense(), 1), atol=1e-12)


# --- bad input ---------------------------------------------------------------------------------


def test_factor_count_must_match_the_order_of_the_core(rng):
    Y = random_tucker(rng, (5, 4, 3), (2, 2, 2))
    with pytest.raises(ValueError, match="factors has 2 matrices but the core has order 3"):
        lri.TuckerTensor(Y.core, Y.factors[:2])


def test_ranks_larger_than_dimensions_are_rejected(rng):
    core = rng.standard_normal((4, 2, 2))
    factors = [np.ones((3, 4)) / 2, np.eye(5)[:, :2], np.eye(5)[:, :2]]
    with pytest.raises(ValueError, match="exceeds the dimension n_0 = 3"):
        lri.TuckerTensor(core, factors)
    X = rng.standard_normal((4, 5, 6))
    with pytest.raises(ValueError, match=r"ranks\[0\] must satisfy 1 <= r <= n_0 = 4"):
        lri.TuckerTensor.from_dense(X, ranks=(5, 2, 2))


def test_non_orthonormal_factors_are_rejected(rng):
    Y = random_tucker(rng, (5, 4, 3), (2, 2, 2))
    bad = list(Y.factors)
    bad[1] = 1.01 * bad[1]
    with pytest.raises(ValueError, match=r"factors\[1\] must have orthonormal columns"):
        lri.TuckerTensor(Y.core, bad)
    # Integrators may build such intermediate states explicitly.
    lri.TuckerTensor(Y.core, bad, check=False)


def test_other_bad_input_is_named(rng):
    Y = random_tucker(rng, (5, 4, 3), (2, 2, 2))
    with pytest.raises(ValueError, match=r"factors\[2\] has 2 columns but the core has size 3"):
        lri.TuckerTensor(rng.standard_normal((2, 2, 3)), Y.factors)
    with pytest.raises(TypeError, match="factors must be a list or tuple"):
        lri.TuckerTensor(Y.core, Y.factors[0])
    with pytest.raises(TypeError, match="dtype"):
        lri.TuckerTensor(Y.core.astype(np.complex128), Y.factors)
    with pytest.raises(ValueError, match="at least 2 axes"):
        lri.TuckerTensor(np.ones(2), [np.eye(2)])
    with pytest.raises(ValueError, match="exactly one of ranks= and tol="):
        lri.TuckerTensor.from_dense(Y.to_dense())
    with pytest.raises(ValueError, match="exactly one of ranks= and tol="):
        lri.TuckerTensor.from_dense(Y.to_dense(), ranks=2, tol=1e-3)
    with pytest.raises(ValueError, match="non-finite"):
        lri.TuckerTensor.from_dense(np.full((3, 3, 3), np.nan), ranks=1)
