"""The augmentation of a basis by new columns: ``U_hat = [U0 D, Q]`` orthonormal, containing X.

The rank-adaptive steps factorise only the new columns (``project_out`` then
``augment_projected``); whatever the part of ``X`` outside ``span(U0)`` (large, at the level of
rounding, exactly zero), the result is orthonormal to working precision, keeps ``U0`` (up to
the signs ``D``) as its leading block and spans ``X``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_integrators._qr import nearly_orthonormal_q, tall_q
from lowrank_integrators.errors import NonFiniteError
from lowrank_integrators.integrators.augmentation import (
    KeptStorage,
    RegisterHandover,
    augment,
    augment_projected,
    leading_signs,
    project_out,
)
from lowrank_integrators.integrators.base import Ledger
from lowrank_integrators.substeps import TALL_ENTRIES

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


def augmented(rng, U0, signs, k):
    """``[U0 diag(signs), Q]`` as the augmentation builds it."""
    W = np.empty((U0.shape[0], U0.shape[1] + k), U0.dtype)
    np.multiply(U0, signs, out=W[:, : U0.shape[1]])
    W[:, U0.shape[1] :] = rng.standard_normal((U0.shape[0], k))
    return W


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leading_signs_recognise_an_augmented_basis_exactly(rng, dtype):
    U0 = np.linalg.qr(rng.standard_normal((30, 4)))[0].astype(dtype)
    signs = np.array([1, -1, -1, 1], dtype)
    W = augmented(rng, U0, signs, 3)
    np.testing.assert_array_equal(leading_signs(W, U0), signs)
    assert leading_signs(W[:, :4].copy(), U0) is not None  # U0 D alone
    W[11, 2] = np.nextafter(W[11, 2], dtype(0))  # one entry off by one unit in the last place
    assert leading_signs(W, U0) is None


@pytest.mark.parametrize("rows", [30, 4000])  # whole-array and row-block paths
def test_a_basis_built_here_is_recognised_from_its_record_and_a_copy_by_its_entries(
    rng, rows, monkeypatch
):
    import lowrank_integrators.integrators.augmentation as aug

    U0, X = basis_and_block(rng, rows, 4, 3, np.float64, 1.0, 0)
    U0 = U0 * np.array([1.0, -1.0, 1.0, -1.0])  # columns of either sign
    U_hat, d = augment(Ledger(rank_before=4), X, U0)
    checked = []
    entry_check = aug._leading_signs_numpy
    monkeypatch.setattr(
        aug, "_leading_signs_numpy", lambda W, W0: checked.append(1) or entry_check(W, W0)
    )
    np.testing.assert_array_equal(leading_signs(U_hat, U0), d)
    assert not checked  # the record answered
    copy = U_hat.copy()
    np.testing.assert_array_equal(leading_signs(copy, U0), d)
    assert checked  # an array the module did not build is checked
    assert leading_signs(U_hat, U0.copy()) is not None  # another start basis: checked, equal
    copy[1, 0] = np.nextafter(copy[1, 0], 2.0)
    assert leading_signs(copy, U0) is None


def test_leading_signs_read_columns_that_vanish_in_the_first_row(rng):
    # the signs cannot be read off the first row where U0 vanishes there: the inner products
    # of the columns decide, and the check on every entry stays exact
    U0 = np.vstack([np.zeros((1, 3)), np.linalg.qr(rng.standard_normal((19, 3)))[0]])
    U0[0, 0] = 0.0
    signs = np.array([-1.0, 1.0, -1.0])
    W = augmented(rng, U0, signs, 2)
    np.testing.assert_array_equal(leading_signs(W, U0), signs)


def test_leading_signs_refuse_other_shapes_and_complex_bases(rng):
    U0 = np.linalg.qr(rng.standard_normal((12, 3)))[0]
    assert leading_signs(np.ones((11, 5)), U0) is None
    assert leading_signs(U0[:, :2].copy(), U0) is None
    assert leading_signs(augmented(rng, U0, np.ones(3), 2).astype(complex), U0 + 0j) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_an_ill_conditioned_new_part_costs_a_qr_of_its_own_columns(monkeypatch, dtype, seed):
    # A new part with condition number 2000 whose projection left 100 eps in span(U0) (as a
    # training step's does): its QR's trailing columns leave span(U0) by ~eps kappa only, too
    # little for one more projection. They are projected and factored once more (k columns)
    # instead of one QR of all r + k columns.
    import lowrank_integrators.integrators.augmentation as augmentation

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to the QR of [U0, Q]")

    monkeypatch.setattr(augmentation, "_augment_by_one_qr", refuse)
    rng = np.random.default_rng(seed)
    m, r, k = 500, 32, 32
    U0 = np.linalg.qr(rng.standard_normal((m, r)))[0]
    N = rng.standard_normal((m, k))
    N = np.linalg.qr(N - U0 @ (U0.T @ N))[0] * np.logspace(0, -3.3, k)
    residual = U0 @ rng.standard_normal((r, k)) * (100 * np.finfo(dtype).eps / np.sqrt(r * k))
    U0, Z = U0.astype(dtype), (N + residual).astype(dtype)
    led = Ledger()
    U_hat, d = augment_projected(led, Z, U0)
    U = U_hat.astype(np.float64)
    assert np.abs(U.T @ U - np.eye(r + k)).max() <= TOL[dtype]
    assert np.array_equal(U_hat[:, :r], U0 * d)
    N64 = N.astype(np.float64)  # the new part lies in the basis
    assert np.linalg.norm(N64 - U @ (U.T @ N64)) <= 10 * TOL[dtype]
    assert led.info.n_qr == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("outside", [1.0, 1e-8])
def test_augmenting_in_the_storage_of_the_block_gives_the_same_basis(rng, dtype, outside):
    import tracemalloc

    m, r, k = 40000, 6, 6  # tall enough for the in-place paths
    U0, X = basis_and_block(rng, m, r, k, dtype, outside, 8)
    U_ref, d_ref = augment(Ledger(), X.copy(), U0)
    tracemalloc.start()
    U_hat, d = augment(Ledger(), X, U0, overwrite=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # X holds the new columns while they are factored: the basis is the only tall array added
    assert peak <= U_hat.nbytes + 0.25 * X.nbytes
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_allclose(U_hat, U_ref, rtol=0, atol=50 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [8, 5, 0], ids=lambda k: f"new rank {k}")
def test_new_columns_refined_by_one_cholesky_pass_stay_orthonormal(monkeypatch, dtype, rank):
    # A numerically rank-deficient new part (as the midpoint BUG's 4r enrichment has): its
    # QR fills the deficient columns with directions of its rounding, which leave span(U0)
    # only partly; once projected, they are within ||U0^H Q||^2 of orthonormal and one
    # Cholesky pass ends the augmentation (no second full QR, no fallback).
    import lowrank_integrators.integrators.augmentation as augmentation

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to the QR of [U0, Q]")

    monkeypatch.setattr(augmentation, "_augment_by_one_qr", refuse)
    factored = []
    refined = []
    monkeypatch.setattr(
        augmentation, "tall_q", lambda x, **kw: factored.append(x.shape) or tall_q(x, **kw)
    )
    monkeypatch.setattr(
        augmentation,
        "nearly_orthonormal_q",
        lambda x, **kw: refined.append(nearly_orthonormal_q(x, **kw)) or refined[-1],
    )
    rng = np.random.default_rng(rank)
    m, r, k = 20_000, 8, 8
    U0 = np.linalg.qr(rng.standard_normal((m, r)))[0]
    N = rng.standard_normal((m, k))
    N = np.linalg.qr(N - U0 @ (U0.T @ N))[0][:, :rank] @ rng.standard_normal((rank, k))
    X = (U0 @ rng.standard_normal((r, k)) + N).astype(dtype)
    U0 = U0.astype(dtype)
    led = Ledger()
    U_hat, d = augment_projected(led, project_out(U0, X), U0)
    U = U_hat.astype(np.float64)
    assert U_hat.shape == (m, r + k)
    assert np.abs(U.T @ U - np.eye(r + k)).max() <= TOL[dtype]
    assert np.array_equal(U_hat[:, :r], U0 * d)
    X64 = X.astype(np.float64)
    assert np.linalg.norm(X64 - U @ (U.T @ X64)) <= 10 * TOL[dtype] * np.linalg.norm(X64)
    assert factored == [(m, k)] and led.info.n_qr == 1
    if rank == 5:  # the filled columns overlap span(U0): refined, where a full QR was
        assert len(refined) == 1 and refined[0] is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_projecting_out_by_row_blocks_is_the_plain_block_gram_schmidt(dtype):
    # Tall enough for the row-blocked pass that subtracts the first projection and forms the
    # second product while each block is in the cache; the result is the whole-array formula.
    rng = np.random.default_rng(7)
    m, r, k = 30_000, 6, 5
    U0 = np.linalg.qr(
        rng.standard_normal((m, r))
        + (1j if dtype == np.complex128 else 0) * rng.standard_normal((m, r))
    )[0]
    U0 = U0.astype(dtype)
    X = (U0 @ rng.standard_normal((r, k)) + rng.standard_normal((m, k))).astype(dtype)
    Z = project_out(U0, X)
    U0h = U0.conj().T
    expected = X - U0 @ (U0h @ X)
    expected = expected - U0 @ (U0h @ expected)
    tol = TOL.get(dtype, 1e-13)
    np.testing.assert_allclose(Z, expected, rtol=0, atol=10 * tol * np.abs(X).max())
    assert np.abs(U0h @ Z).max() <= 10 * tol * np.abs(X).max()


# --- the K-substep's work arrays handed to the L-substep ---------------------------------------


def test_the_handover_serves_square_numpy_steps_only():
    rng = np.random.default_rng(7)
    U, V = rng.standard_normal((60, 3)), rng.standard_normal((60, 3))
    assert RegisterHandover(U, V).work is not None
    # an m x n problem: the K-substep's arrays would not fit the L-substep's
    assert RegisterHandover(U, rng.standard_normal((50, 3))).work is None
    assert RegisterHandover(U, V.astype(np.float32)).work is None


def test_the_handover_keeps_nothing_once_the_l_substep_is_done():
    rows = TALL_ENTRIES  # tall enough to be kept
    U = np.zeros((rows, 2))
    handover = RegisterHandover(U, U)
    for _ in range(2):  # the K-substep's two dead registers
        handover.work.give(np.empty((rows, 2)))
    handover.give(np.empty((rows, 2)), U)
    assert len(handover.work) == 3
    handover.give(np.empty((rows, 3)), U)  # another shape is not kept
    assert len(handover.work) == 3
    handover.l_substep_done()
    assert len(handover.work) == 0
    for _ in range(2):
        handover.work.give(np.empty((rows, 2)))
    handover.give(np.empty((rows, 2)), U)  # too late: nothing would take it
    assert len(handover.work) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("outside", [1.0, 1e-8, 0.0])
def test_torch_new_columns_wait_once_for_the_device_and_match_numpy(
    rng, host_reads, deferred_tests, dtype, outside
):
    """On an accelerator the QR of well-conditioned new columns (large enough for the
    Cholesky passes) and the check of their orthogonality to ``U0`` read back one number pair,
    not one number per test; every case gives NumPy's basis to rounding."""
    torch = pytest.importorskip("torch")
    U0, X = basis_and_block(rng, 20_000, 8, 8, dtype, outside, 0)
    expected, d_np = augment_projected(Ledger(), project_out(U0, X), U0)
    U0_t, X_t = torch.from_numpy(U0), torch.from_numpy(X)
    Z = project_out(U0_t, X_t)
    host_reads.count = 0
    U_hat, d = augment_projected(Ledger(), Z, U0_t)
    if outside == 1.0:  # CholeskyQR2 and an orthogonal result: one read
        assert host_reads.count == 1
    U = U_hat.double().numpy()
    assert np.abs(U.T @ U - np.eye(16)).max() <= TOL[dtype]
    assert np.array_equal(d.numpy(), d_np)
    if outside == 1.0:
        np.testing.assert_allclose(U, expected, atol=50 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("outside", [1.0, 1e-4, 1e-8, 0.0])
@pytest.mark.parametrize("shape", [(20_000, 8, 8), (300, 6, 6)], ids=["cholesky", "householder"])
def test_a_basis_whose_deferred_tests_pass_is_the_tested_basis(
    rng, deferred_tests, dtype, outside, shape
):
    """``augment_projected_deferred`` reads nothing; where its test comes out true the basis
    and signs are those of ``augment_projected``, bit for bit, and the ledger counts one QR."""
    torch = pytest.importorskip("torch")
    from lowrank_integrators.integrators.augmentation import augment_projected_deferred

    m, r, k = shape
    U0, X = basis_and_block(rng, m, r, k, dtype, outside, 0)
    U0_t = torch.from_numpy(U0)
    Z = project_out(U0_t, torch.from_numpy(X))
    led = Ledger()
    U_hat, d, good = augment_projected_deferred(led, Z, U0_t)
    assert good.shape == () and good.dtype == torch.bool and led.info.n_qr == 1
    if outside == 1.0:  # new columns of full rank, well apart from span(U0)
        assert bool(good)
    if bool(good):
        expected, d_expected = augment_projected(Ledger(), Z.clone(), U0_t)
        assert torch.equal(U_hat, expected) and torch.equal(d, d_expected)
    # NumPy arrays and tensors in host memory by default: nothing deferred
    assert augment_projected_deferred(Ledger(), project_out(U0, X), U0) is None


def test_kept_storage_lends_its_array_only_while_nothing_refers_to_it():
    owner = type("Method", (), {})()
    like = np.zeros((4096, 4))
    kept = KeptStorage.take(owner, like, 4096, 16)
    whole = kept.whole(4096, 16, like.dtype)
    assert whole is kept.block and whole.flags.c_contiguous
    assert kept.whole(4096, 16, like.dtype) is None  # handed out and still alive
    assert kept.whole(4096, 12, like.dtype) is None  # another shape
    held = whole[:, :3]  # someone keeps a view
    whole = None
    assert kept.whole(4096, 16, like.dtype) is None
    kept.close()
    assert len(owner._kept_storage) == 0  # not kept: a view refers to it
    again = KeptStorage.take(owner, like, 4096, 16)
    assert not np.shares_memory(again.block, held)
    block = again.block
    again.close()
    assert len(owner._kept_storage) == 0  # a name still refers to it
    del block
    third = KeptStorage.take(owner, like, 4096, 16)
    assert third.whole(4096, 16, like.dtype) is not None  # a temporary, gone at once
    first_array = id(third.block)
    third.close()
    assert len(owner._kept_storage) == 1
    fourth = KeptStorage.take(owner, like, 4096, 16)
    assert id(fourth.block) == first_array and len(owner._kept_storage) == 0  # taken
    assert KeptStorage.take(owner, like.astype(np.int64), 4096, 16) is None
    assert KeptStorage.take(owner, like[:10], 10, 16) is None  # not tall: nothing kept


def test_kept_storage_lends_parts_that_substeps_own_while_no_one_else_holds_a_view():
    from lowrank_integrators.substeps import _SOLE_REFERENCES, _owned

    owner = type("Method", (), {})()
    like = np.zeros((4096, 4))
    kept = KeptStorage.take(owner, like, 4096, 16, keep=2)
    parts = kept.carve((4096, 4), (4096, 4), (4096, 8))
    assert [p.shape for p in parts] == [(4096, 4), (4096, 4), (4096, 8)]
    assert all(p.flags.c_contiguous and p.base is kept.block for p in parts)
    assert not np.shares_memory(parts[0], parts[1]) and not np.shares_memory(parts[1], parts[2])
    assert kept.carve((4096, 4)) is None  # parts are out: the array is not idle
    assert kept.whole(4096, 16, like.dtype) is None
    first = parts[0]
    # (the references to the part itself are the caller's to count: here, one name)
    assert _owned(first, _SOLE_REFERENCES)
    held = parts[1][:, :2]  # someone keeps a view of a part
    assert not _owned(first, _SOLE_REFERENCES)
    assert not _owned(np.zeros((8192, 4))[:4096], _SOLE_REFERENCES)  # a view, not carved
    del held, first
    parts = None
    assert kept.whole(4096, 16, like.dtype) is kept.block  # all parts released
    assert kept.carve((4096, 17)) is None  # does not fit


def test_kept_storage_grows_a_basis_over_the_part_that_holds_it_only_if_nothing_else_does():
    owner = type("Method", (), {})()
    like = np.zeros((4096, 4))
    kept = KeptStorage.take(owner, like, 4096, 8)
    first, last = kept.carve((4096, 4), (4096, 4))
    assert kept.around(last, 4096, 8, like.dtype) is None  # the first part is alive
    del first
    assert kept.around(last, 4096, 8, like.dtype) is kept.block
    assert kept.around(last, 4096, 9, like.dtype) is None  # another shape
    alias = last
    assert kept.around(last, 4096, 8, like.dtype) is None  # a second name holds the part
    del alias
    view = last[:5]
    assert kept.around(last, 4096, 8, like.dtype) is None  # a view of it is alive
    del view
    assert kept.around(last, 4096, 8, like.dtype) is kept.block
