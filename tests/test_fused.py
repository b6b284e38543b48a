"""Stage evaluations of Sylvester fields: the fused numba path equals the NumPy path.

Specification: for CSR operators the K- and L-fields of :class:`SylvesterODE` give the same
stage values to round-off whether the one-pass numba kernel (extra ``fast``) or the NumPy path
(operator product, then thin terms added block by block) is used, for real, complex and
single-precision factors; without numba the NumPy path is taken. The row-blocked operator
products of the backend equal plain products, and the in-place capability is a property of
the array library.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators import _fused

needs_numba = pytest.mark.skipif(not _fused.numba_available(), reason="numba not installed")

CASES = {
    "float64": (np.float64, 1e-13),
    "complex128": (np.complex128, 1e-13),
    "float32": (np.float32, 1e-5),
}


def sylvester(rng, n, dtype, with_b=True, source=True):
    complex_ = np.issubdtype(dtype, np.complexfloating)
    A = sp.diags(
        [rng.standard_normal(n - 1), rng.standard_normal(n), rng.standard_normal(n - 2)],
        [-1, 0, 2],
        format="csr",
    )
    if complex_:
        A = (A * (1 + 0.5j)).tocsr()
    A = A.astype(dtype)
    B = sp.diags([np.ones(n - 1), -2 * np.ones(n)], [1, 0], format="csr").astype(dtype)
    C = None
    if source:
        Uc = np.linalg.qr(rng.standard_normal((n, 3)))[0].astype(dtype)
        C = lri.LowRankMatrix(Uc, rng.standard_normal((3, 3)).astype(dtype), Uc, check=False)
    return lri.SylvesterODE(A, B if with_b else None, C)


def fields(problem, basis, X, use_numba, monkeypatch):
    monkeypatch.setattr(_fused, "use_numba", use_numba)
    return problem.k_field(basis)(0.0, X), problem.l_field(basis)(0.0, X)


@needs_numba
@pytest.mark.parametrize("with_b", [True, False], ids=["A and B", "A only"])
@pytest.mark.parametrize("source", [True, False], ids=["source", "no source"])
@pytest.mark.parametrize("dtype_name", list(CASES))
def test_fused_stages_equal_the_numpy_path(rng, monkeypatch, dtype_name, with_b, source):
    dtype, tol = CASES[dtype_name]
    n, r = 3000, 5
    problem = sylvester(rng, n, dtype, with_b, source)
    basis = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    X = rng.standard_normal((n, r)).astype(dtype)
    fused = fields(problem, basis, X, True, monkeypatch)
    plain = fields(problem, basis, X, False, monkeypatch)
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == b.dtype and a.flags.c_contiguous
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())


@needs_numba
def test_fused_stages_on_many_row_blocks_and_a_real_operator_with_complex_factors(rng, monkeypatch):
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    monkeypatch.setattr(_fused, "_BLOCK_ELEMENTS", 7)
    n, r = 200, 3
    problem = sylvester(rng, n, np.float64)
    basis = np.linalg.qr(rng.standard_normal((n, r)) + 1j * rng.standard_normal((n, r)))[0]
    X = rng.standard_normal((n, r)) + 1j * rng.standard_normal((n, r))
    fused = fields(problem, basis, X, True, monkeypatch)
    plain = fields(problem, basis, X, False, monkeypatch)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(b).max())


def test_without_numba_the_numpy_path_is_used(rng, monkeypatch):
    monkeypatch.setattr(_fused, "_NUMBA", False)
    problem = sylvester(rng, 50, np.float64)
    basis = np.linalg.qr(rng.standard_normal((50, 2)))[0]
    assert not _fused.supports(problem.A, basis)
    K = rng.standard_normal((50, 2))
    Uc, Sc, Vc = problem.C
    Bv = basis.T @ (problem.B.T @ basis)
    expected = problem.A @ K + K @ Bv + Uc @ (Sc @ (Vc.T @ basis))
    np.testing.assert_allclose(problem.k_field(basis)(0.0, K), expected, atol=1e-13)


def test_only_csr_operators_on_numpy_arrays_are_fused(rng):
    A = sp.random(20, 20, density=0.2, random_state=1, format="csr")
    X = np.zeros((20, 2))
    if _fused.numba_available():
        assert _fused.supports(A, X)
    assert not _fused.supports(A.tocsc(), X)
    assert not _fused.supports(A.toarray(), X)
    assert not _fused.supports(A.astype(np.complex128), X)  # complex operator, real factors


@pytest.mark.parametrize("fmt", ["csr", "csc", "transposed csr", "complex csr", "dense"])
def test_row_blocked_sandwich_equals_the_plain_product(rng, monkeypatch, fmt):
    n = 60
    A = sp.random(n, n, density=0.1, random_state=2, format="csr")
    op = {
        "csr": A,
        "csc": A.tocsc(),
        "transposed csr": A.T,
        "complex csr": (A * (1 + 1j)).tocsr(),
        "dense": A.toarray(),
    }[fmt]
    W = rng.standard_normal((n, 4)) + 1j * rng.standard_normal((n, 4))
    V = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    assert len(bk.row_blocks(V)) > 5
    np.testing.assert_allclose(bk.sandwich(W, op, V), W.conj().T @ (op @ V), atol=1e-12)
    np.testing.assert_allclose(
        bk.sandwich(W.real, op, V.real), W.real.T @ (op @ V.real), atol=1e-12
    )


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("square", [True, False], ids=["square", "wide"])
def test_operator_applied_to_a_product_equals_the_plain_product(rng, monkeypatch, square, compiled):
    if compiled and not _fused.numba_available():
        pytest.skip("numba not installed")
    monkeypatch.setattr(_fused, "use_numba", compiled)
    monkeypatch.setattr(bk, "_BLOCK_ELEMENTS_NUMPY", 7)
    monkeypatch.setattr(_fused, "_SANDWICH_BLOCK_ELEMENTS", 12)  # blocks of 6 rows, one ragged
    n = 40
    A = sp.random(n, n, density=0.1, random_state=3, format="csr")
    X = rng.standard_normal((n, 3))
    W = rng.standard_normal((3, 3 if square else 5))
    np.testing.assert_allclose(bk.apply_to_product(A, X, W), A @ (X @ W), atol=1e-13)


@needs_numba
def test_the_compiled_operator_product_declines_what_it_does_not_handle(rng):
    A = sp.random(50, 50, density=0.1, random_state=5, format="csr")
    X, W = rng.standard_normal((50, 3)), rng.standard_normal((3, 3))
    np.testing.assert_allclose(_fused.apply_then(A, X, W), (A @ X) @ W, atol=1e-13)
    assert _fused.apply_then(A.tocsc(), X, W) is None  # not CSR
    assert _fused.apply_then((A * 1j).tocsr(), X, W) is None  # complex operator
    assert _fused.apply_then(A, X.astype(np.float32), W.astype(np.float32)) is None  # mixed
    assert _fused.apply_then(A, np.asfortranarray(X), W) is None  # not row-major


def test_in_place_updates_are_a_capability_of_the_array_library(xp):
    x = xp.zeros((3, 2))
    expected = type(x).__module__.split(".")[0] in ("numpy", "torch", "cupy")
    assert bk.allows_inplace(x) is expected
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    assert not bk.allows_inplace(frozen)


def test_tucker_fields_with_shared_projected_operators_equal_their_own(rng):
    """Projected operators formed once per set of bases give the same fields."""
    n, ranks = 9, (3, 2, 4)
    ops = [rng.standard_normal((n, n)) for _ in range(3)]
    ops[1] = None
    bases = [np.linalg.qr(rng.standard_normal((n, r)))[0] for r in ranks]
    Cg = rng.standard_normal((2, 2, 2))
    C = lri.TuckerTensor(Cg, [np.linalg.qr(rng.standard_normal((n, 2)))[0] for _ in range(3)])
    problem = lri.TensorSylvesterODE(ops, C=C)
    shared = problem.projected_operators(bases)
    assert shared[1] is None
    np.testing.assert_allclose(shared[0], bases[0].T @ ops[0] @ bases[0], atol=1e-13)
    core = rng.standard_normal(ranks)
    np.testing.assert_allclose(
        problem.core_field(bases, projected=shared)(0.0, core),
        problem.core_field(bases)(0.0, core),
        atol=1e-13,
    )
    for mode in range(3):
        others = int(np.prod([r for j, r in enumerate(ranks) if j != mode]))
        Q = np.linalg.qr(rng.standard_normal((others, ranks[mode])))[0]
        K = rng.standard_normal((n, ranks[mode]))
        np.testing.assert_allclose(
            problem.mode_field(bases, Q, mode, projected=shared)(0.0, K),
            problem.mode_field(bases, Q, mode)(0.0, K),
            atol=1e-13,
        )
    with pytest.raises(ValueError, match="bases"):
        problem.projected_operators(bases[:2])


@needs_numba
@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("width", [4, 100], ids=["narrow", "wide"])
def test_compiled_sandwich_equals_the_numpy_path(rng, monkeypatch, fmt, dtype_name, width):
    """W^H (A V) with the rows of A V formed block by block (numba) equals the NumPy path
    (blocks of a fixed number of entries for a narrow V, of 2k rows for a wide one)."""
    dtype, tol = CASES[dtype_name]
    n = 5000
    A = sp.random(n, n, density=5 / n, random_state=4, format=fmt).astype(dtype)
    W = rng.standard_normal((n, 6)).astype(dtype)
    V = rng.standard_normal((n, width)).astype(dtype)
    fused = bk.sandwich(W, A, V)
    monkeypatch.setattr(_fused, "use_numba", False)
    plain = bk.sandwich(W, A, V)
    assert fused.shape == plain.shape == (6, width) and fused.dtype == plain.dtype == dtype
    np.testing.assert_allclose(fused, plain, rtol=0, atol=tol * np.abs(plain).max())


@needs_numba
def test_compiled_sandwich_declines_what_it_does_not_handle(rng):
    A = sp.random(50, 50, density=0.1, random_state=5, format="csr")
    V = rng.standard_normal((50, 3))
    assert _fused.sandwich(V, A, V) is not None
    assert _fused.sandwich(V, (A * 1j).tocsr(), V) is None  # complex operator
    assert _fused.sandwich(V.astype(np.float32), A, V.astype(np.float32)) is None  # mixed
    assert _fused.sandwich(np.asfortranarray(V), A, V) is None  # not row-major


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
def test_an_augmented_basis_written_row_by_row_has_the_entries_of_its_two_blocks(rng, dtype):
    pytest.importorskip("numba")
    U0 = rng.standard_normal((1001, 5)).astype(dtype)
    Q = rng.standard_normal((1001, 3)).astype(dtype)
    d = np.array([1, -1, -1, 1, -1], dtype=dtype)
    out = _fused.beside(U0, d, Q)
    np.testing.assert_array_equal(out, np.concatenate([U0 * d, Q], axis=1))
    given = np.full((1001, 8), np.nan, dtype=dtype)
    assert _fused.beside(U0, d, Q, given) is given  # written into the array given
    np.testing.assert_array_equal(given, out)
    for wrong in (np.empty((1001, 7), dtype), np.empty((8, 1001), dtype).T):
        with pytest.raises(ValueError, match="out must be"):
            _fused.beside(U0, d, Q, wrong)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("rows", [1, 2, 7, 1001])
def test_a_basis_grown_over_the_basis_it_extends_has_the_entries_of_its_two_blocks(
    rng, dtype, rows, compiled, monkeypatch
):
    """``beside_over``: the left block is the tail of the result's own storage, read row by
    row ahead of the writes (with numba, and by blocks of rows without it)."""
    if compiled:
        pytest.importorskip("numba")
    monkeypatch.setattr(_fused, "use_numba", compiled)
    monkeypatch.setattr(_fused, "_OVER_BLOCK_ENTRIES", 40)  # several blocks of rows
    p, q = 5, 3
    storage = np.full(rows * (p + q), np.nan, dtype=dtype)
    left = storage[q * rows :].reshape(rows, p)
    left[...] = rng.standard_normal((rows, p)).astype(dtype)
    expected_left = left.copy()
    Q = rng.standard_normal((rows, q)).astype(dtype)
    d = np.array([1, -1, -1, 1, -1], dtype=dtype)
    out = storage.reshape(rows, p + q)
    assert _fused.beside_over(left, d, Q, out) is out
    np.testing.assert_array_equal(out, np.concatenate([expected_left * d, Q], axis=1))


def test_a_basis_grown_over_another_refuses_every_other_layout(rng):
    rows, p, q = 20, 4, 2
    storage = np.zeros(rows * (p + q))
    out = storage.reshape(rows, p + q)
    d = np.ones(p)
    Q = rng.standard_normal((rows, q))
    with pytest.raises(ValueError, match="last n p entries"):  # at the start, not the end
        _fused.beside_over(storage[: rows * p].reshape(rows, p), d, Q, out)
    with pytest.raises(ValueError, match="last n p entries"):  # apart from out
        _fused.beside_over(np.zeros((rows, p)), d, Q, out)
    left = storage[q * rows :].reshape(rows, p)
    with pytest.raises(ValueError, match="must not overlap"):
        _fused.beside_over(left, d, storage[: rows * q].reshape(rows, q), out)
    with pytest.raises(ValueError, match="expected C-ordered"):
        _fused.beside_over(left, d, Q.astype(np.float32), out)
    with pytest.raises(TypeError, match="NumPy arrays"):
        _fused.beside_over(left.tolist(), d, Q, out)


def test_the_row_by_row_augmented_basis_declines_what_it_does_not_handle(rng, monkeypatch):
    pytest.importorskip("numba")
    U0, Q, d = rng.standard_normal((50, 4)), rng.standard_normal((50, 2)), np.ones(4)
    assert _fused.beside(U0, d, Q.astype(np.float32)) is None  # mixed dtypes
    assert _fused.beside(np.asfortranarray(U0), d, Q) is None  # not C-ordered
    assert _fused.beside(U0, d, Q[:40]) is None  # rows differ
    assert _fused.beside(U0, np.ones(3), Q) is None  # one sign per column of U0
    assert _fused.beside(U0.astype(int), d.astype(int), Q.astype(int)) is None
    monkeypatch.setattr(_fused, "use_numba", False)
    assert _fused.beside(U0, d, Q) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_one_pass_relu_steps_give_numpys_entries_bit_for_bit(rng, dtype):
    pytest.importorskip("numba")
    z = rng.standard_normal((37, 11)).astype(dtype)
    b = rng.standard_normal(11).astype(dtype)
    z[0, :4] = [np.nan, -np.inf, np.inf, 0.0]
    z[1, :] = -b  # sums that are exactly zero, of either sign
    expected = np.maximum(z + b, 0)
    out = z.copy()
    assert _fused.bias_relu(out, b)
    assert out.tobytes() == expected.tobytes()  # NaN kept, signed zeros as NumPy makes them

    g = rng.standard_normal((37, 11)).astype(dtype)
    g[2, :3] = [np.nan, np.inf, -0.0]
    a = np.maximum(rng.standard_normal((37, 11)).astype(dtype), 0)
    a[2, :3] = 0.0  # a NaN or an infinity of an inactive unit stays NaN, as in the product
    with np.errstate(invalid="ignore"):  # inf * 0
        expected = g * (a > 0)
    assert _fused.relu_gradient(g, a)
    assert g.tobytes() == expected.tobytes()


def test_the_one_pass_relu_steps_decline_what_they_do_not_handle(rng, monkeypatch):
    pytest.importorskip("numba")
    z, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    assert not _fused.bias_relu(z, b.astype(np.float32))  # mixed dtypes
    assert not _fused.bias_relu(np.asfortranarray(z), b)  # not C-ordered
    assert not _fused.bias_relu(z, b[:3])  # one bias per column
    assert not _fused.bias_relu(z.astype(np.complex128), b.astype(np.complex128))
    assert not _fused.bias_relu(z.astype(np.float16), b.astype(np.float16))
    assert not _fused.relu_gradient(z, z[:5])  # shapes differ
    assert not _fused.relu_gradient(z[:, ::2], z[:, ::2].copy())  # a strided view
    frozen = z.copy()
    frozen.flags.writeable = False
    assert not _fused.relu_gradient(frozen, z)
    monkeypatch.setattr(_fused, "use_numba", False)
    assert not _fused.bias_relu(z, b)
    assert not _fused.relu_gradient(z, z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(784, 4), (4, 4), (16,), (3, 5, 7), (0, 4)])
def test_the_compiled_finiteness_test_answers_as_numpy(rng, dtype, shape):
    pytest.importorskip("numba")
    a = rng.standard_normal(shape).astype(dtype)
    assert _fused.all_finite(a) is True
    big = np.finfo(dtype).max
    tiny = np.finfo(dtype).smallest_subnormal
    for value in (big, -big, tiny, -0.0):  # finite, where x - x or a sum could mislead
        if a.size:
            b = a.copy()
            b.flat[a.size // 2] = value
            b.flat[0] = big
            assert _fused.all_finite(b) is True
    for value in (np.nan, np.inf, -np.inf):
        for at in {0, a.size // 2, a.size - 1} if a.size else ():
            b = a.copy()
            b.flat[at] = value
            assert _fused.all_finite(b) is False
            assert _fused.all_finite(a, b) is False  # any of several arrays
            assert _fused.all_finite(b) == bk.all_finite(b)


def test_the_compiled_finiteness_test_leaves_other_arrays_to_numpy(rng, monkeypatch):
    pytest.importorskip("numba")
    a = rng.standard_normal((30, 6))
    bad = a.copy()
    bad[3, 4] = np.nan
    for other in (np.asfortranarray(bad), bad[:, ::2], bad.astype(np.complex128), bad.T):
        assert _fused.all_finite(other) is False
    assert _fused.all_finite(np.arange(6), a.astype(np.float16)) is True
    monkeypatch.setattr(_fused, "use_numba", False)
    assert _fused.all_finite(a) is True
    assert _fused.all_finite(bad) is False


# Every compiled kernel once, on small arrays; prints, per kernel of _fused_kernels, how many
# of its compilations came from numba's disk cache and how many were compiled.
_USE_EVERY_KERNEL = """
import json
import numpy as np
import scipy.sparse as sp
from lowrank_integrators import _fused
A = sp.random(50, 50, density=0.1, format="csr", random_state=0)
X, M, U, coef = np.ones((50, 3)), np.eye(3), np.ones((50, 2)), np.ones((2, 3))
_fused.CSRStage(A, M, U, coef)(X)
_fused.sandwich(X, A, X)
_fused.beside(X, np.ones(3), X)
_fused.apply_then(A, X, M)
_fused.bias_relu(X.copy(), np.ones(3))
_fused.relu_gradient(X.copy(), X)
_fused.all_finite(X)
acc, stage, k = X.copy(), X.copy(), X.copy()
_fused.rk4_update(acc, stage, k, X.copy(), 0.5, 0.5, True, 16)
_fused.rk4_update(acc, stage, k, (X, M), 0.5, 0.5, False, 16)
from lowrank_integrators import _fused_kernels as K
print(json.dumps({
    name: [sum(getattr(K, name).stats.cache_hits.values()),
           sum(getattr(K, name).stats.cache_misses.values())]
    for name in K.__all__
}))
"""


@needs_numba
def test_every_compiled_kernel_is_loaded_from_the_disk_cache_by_the_next_process(tmp_path):
    """A kernel numba cannot cache is compiled again in every process (seconds before the
    first step of a run, and a new cache file each time)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def run() -> dict[str, list[int]]:
        out = subprocess.run(
            [sys.executable, "-c", _USE_EVERY_KERNEL],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    entry = [
        "stage", "folded_stage", "sandwich_rows", "beside_rows", "apply_then", "register_update",
        "bias_relu", "relu_gradient", "all_finite",
    ]  # fmt: skip
    assert all(sum(first[name]) >= 1 for name in entry), first  # each one was used
    second = run()
    assert all(misses == 0 for _, misses in second.values()), second
    assert all(second[name][0] >= 1 for name in entry), second
