"""Sparse operators on row-chunked Dask factors: equal to SciPy, chunk by chunk, lazy.

n = 4096 rows in 4 chunks. "Chunk by chunk" is checked on the executed tasks: a recording
callback sees every task's result, and none of them may be a tall array of more rows than a
chunk and its halo (banded) or than a chunk's gathered rows (general CSR).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_integrators as lri

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
from dask.callbacks import Callback  # noqa: E402

from lowrank_integrators.dask_operators import ChunkedOperator, is_dask_array  # noqa: E402

N, CHUNK, R = 4096, 1024, 6


class RecordTasks(Callback):
    """Records the shape of every array a task returns.

    Results are persisted (``dask.persist``), so no task joins the chunks for the client.
    """

    def __init__(self):
        super().__init__()
        self.shapes = []

    def _posttask(self, key, result, dsk, state, worker_id):
        self.shapes.append(tuple(getattr(result, "shape", ())))

    def tallest(self):
        return max((s[0] for s in self.shapes if len(s) == 2), default=0)


def band(n, offsets, seed=0, dtype=float):
    rng = np.random.default_rng(seed)
    diags = [rng.standard_normal(n - abs(k)).astype(dtype) for k in offsets]
    if np.issubdtype(dtype, np.complexfloating):
        diags = [d + 1j * rng.standard_normal(d.size) for d in diags]
    return sp.diags(diags, offsets, shape=(n, n), format="csr")


def scattered(n, seed=1):
    """A general sparse matrix: random entries plus a few far-off-diagonal couplings."""
    A = sp.random(n, n, density=4.0 / n, random_state=seed, format="csr")
    far = sp.csr_matrix(([1.0, -2.0, 3.0], ([0, 5, n - 1], [n - 1, n // 2, 3])), shape=(n, n))
    return (A + far + sp.eye(n)).tocsr()


def tall(k=R, seed=2, dtype=float):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, k))
    if np.issubdtype(dtype, np.complexfloating):
        X = X + 1j * rng.standard_normal((N, k))
    return X, chunked(X, (CHUNK, k))


def difference(Y, Z):
    """``||Y - Z||_F / ||Z||_F`` of two NumPy low-rank matrices, from their factors."""
    U, V = np.hstack([Y.U, Z.U]), np.hstack([Y.V, Z.V])
    S = np.zeros((U.shape[1], V.shape[1]), dtype=np.result_type(Y.S, Z.S))
    S[: Y.rank, : Y.rank], S[Y.rank :, Y.rank :] = Y.S, -Z.S
    ru, rv = np.linalg.qr(U)[1], np.linalg.qr(V)[1]
    return np.linalg.norm(ru @ S @ rv.conj().T) / np.linalg.norm(Z.S)


def chunked(X, chunks):
    """``X`` as a Dask array whose chunks are in memory (a factor the step has persisted)."""
    return da.from_array(X, chunks=chunks).persist()


def relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


# --- ChunkedOperator ----------------------------------------------------------------------------


@pytest.mark.parametrize("offsets", [(-1, 0, 1), (-3, 0, 2, 5), (0,)])
def test_banded_operator_equals_scipy_and_keeps_the_row_chunks(offsets):
    A = band(N, offsets)
    X, Xd = tall()
    op = ChunkedOperator(A)
    Y = op @ Xd
    assert op.bandwidth == max(abs(k) for k in offsets)
    assert Y.chunks == Xd.chunks
    assert relative(Y.compute(), A @ X) < 1e-15


def test_banded_operator_tasks_see_one_chunk_and_its_halo_only():
    A = band(N, (-3, 0, 2, 5))  # bandwidth 5
    X, Xd = tall()
    Y = ChunkedOperator(A) @ Xd
    with RecordTasks() as rec:
        (Y,) = dask.persist(Y, scheduler="sync")
    assert rec.tallest() == CHUNK + 2 * 5
    assert relative(Y.compute(), A @ X) < 1e-15
    # one multiplication per chunk: four tasks return the chunk's rows
    assert sum(1 for s in rec.shapes if s == (CHUNK, R)) >= 4


def test_banded_operator_uses_the_halo_exchange_of_dask_overlap():
    Y = ChunkedOperator(band(N, (-1, 0, 1))) @ tall()[1]
    layers = " ".join(Y.__dask_graph__().layers)
    assert "overlap" in layers


def test_general_csr_operator_equals_scipy_and_gathers_only_needed_rows():
    A = scattered(N)
    X, Xd = tall()
    op = ChunkedOperator(A)
    Y = op @ Xd
    assert Y.chunks == Xd.chunks
    with RecordTasks() as rec:
        (Y,) = dask.persist(Y, scheduler="sync")
    assert relative(Y.compute(), A @ X) < 1e-15
    # the largest tall task result is a chunk's product or a chunk's gathered rows
    needed = max(np.unique(A[k * CHUNK : (k + 1) * CHUNK].indices).size for k in range(4))
    assert rec.tallest() <= max(CHUNK, needed) < N


def test_forcing_the_gather_strategy_on_a_banded_operator_gives_the_same_product():
    A = band(N, (-2, 0, 1))
    X, Xd = tall()
    Y = ChunkedOperator(A, strategy="gather") @ Xd
    assert any("csr-gather" in key[0] for key in Y.__dask_graph__() if isinstance(key, tuple))
    assert relative(Y.compute(), A @ X) < 1e-15


def test_row_blocks_without_nonzeros_give_zero_rows():
    A = sp.csr_matrix(([2.0, 3.0], ([1, N - 1], [N - 1, 0])), shape=(N, N))  # chunks 1, 2 empty
    X, Xd = tall()
    for strategy in ("auto", "gather"):
        Y = ChunkedOperator(A, strategy=strategy) @ Xd
        assert np.array_equal(Y.compute(), A @ X)


def test_complex_operator_and_factor_and_uneven_chunks():
    A = band(N, (-1, 0, 1), dtype=complex)
    X, _ = tall(dtype=complex)
    Xd = chunked(X, ((1000, 1100, 996, 1000), (R,)))
    Y = ChunkedOperator(A) @ Xd
    assert Y.chunks == Xd.chunks and Y.dtype == np.complex128
    assert relative(Y.compute(), A @ X) < 1e-15


def test_several_column_chunks_are_joined_and_vectors_are_accepted():
    A = band(N, (-1, 0, 1))
    X, _ = tall()
    Y = ChunkedOperator(A) @ chunked(X, (CHUNK, 2))
    assert Y.chunks == ((CHUNK,) * 4, (R,))
    assert relative(Y.compute(), A @ X) < 1e-15
    y = ChunkedOperator(A) @ chunked(X[:, 0], CHUNK)
    assert y.shape == (N,) and relative(y.compute(), A @ X[:, 0]) < 1e-15


@pytest.mark.parametrize("strategy", ["banded", "gather"])
def test_a_stage_is_the_operator_product_plus_the_small_and_source_terms(strategy):
    A = band(N, (-1, 0, 2), dtype=complex)
    X, Xd = tall(dtype=complex)
    rng = np.random.default_rng(9)
    M = rng.standard_normal((R, R))
    W, Wd = tall(k=3, seed=10)
    C = rng.standard_normal((3, R))
    op = ChunkedOperator(A, strategy=strategy)
    for m in (M, da.from_array(M)):
        Y = op.stage(Xd, m, Wd, C)
        assert Y.chunks == Xd.chunks
        assert relative(Y.compute(), A @ X + X @ M + W @ C) < 1e-15
    assert relative(op.stage(Xd, M).compute(), A @ X + X @ M) < 1e-15
    with RecordTasks() as rec:
        dask.persist(op.stage(Xd, M, Wd, C), scheduler="sync")
    assert rec.tallest() <= CHUNK + 2 * 2
    with pytest.raises(ValueError, match="W and C must be given together"):
        op.stage(Xd, M, Wd)


def test_a_product_is_lazy_until_computed():
    Y = ChunkedOperator(scattered(N)) @ tall()[1]
    with RecordTasks() as rec:
        Z = (Y @ np.eye(R)).T @ Y  # more lazy algebra on top
    assert rec.shapes == [] and is_dask_array(Z)


@pytest.mark.parametrize(
    ("op", "X", "error", "match"),
    [
        (np.eye(4), None, TypeError, "op must be a scipy.sparse"),
        (sp.eye(4, 5, format="csr"), None, ValueError, "op must be square"),
        (sp.eye(N, format="csr"), np.ones((N, 2)), TypeError, "X must be a dask"),
        (sp.eye(N, format="csr"), "short", ValueError, r"X must have shape \(4096, k\)"),
    ],
)
def test_bad_operators_and_inputs_are_refused_by_name(op, X, error, match):
    with pytest.raises(error, match=match):
        chunked = ChunkedOperator(op)
        chunked @ (da.ones((10, 2), chunks=5) if isinstance(X, str) else X)


def test_bad_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be"):
        ChunkedOperator(sp.eye(4, format="csr"), strategy="halo")
    wide = ChunkedOperator(band(N, (-3, 0, 3)), strategy="banded")
    with pytest.raises(ValueError, match="chunks of at least the bandwidth 3"):
        wide @ da.ones((N, 2), chunks=(2, 2))


# --- SylvesterODE on Dask factors ---------------------------------------------------------------


def states(dtype=float, seed=3):
    rng = np.random.default_rng(seed)

    def orth(k):
        X = rng.standard_normal((N, k))
        if np.issubdtype(dtype, np.complexfloating):
            X = X + 1j * rng.standard_normal((N, k))
        return np.linalg.qr(X)[0]

    U, V = orth(R), orth(R)
    S = np.diag(2.0 ** -np.arange(R)).astype(dtype)
    Y = lri.LowRankMatrix(U, S, V)
    chunks = (CHUNK, R)
    Yd = lri.LowRankMatrix(chunked(U, chunks), S, chunked(V, chunks))
    return Y, Yd


def sylvester(kind, dtype=float):
    rng = np.random.default_rng(4)
    if kind == "banded":
        A, B = band(N, (-1, 0, 1), 5, dtype), band(N, (-2, 0, 1), 6, dtype)
    else:
        A, B = scattered(N, 5).astype(dtype), scattered(N, 6).astype(dtype)
    Uc, Vc = rng.standard_normal((N, 3)), rng.standard_normal((N, 3))
    return lri.SylvesterODE(A, B, lri.LowRankMatrix(Uc, np.eye(3), Vc, check=False))


def products(problem, Y):
    U, _, V = Y
    K, L = U @ Y.S, V @ Y.S.conj().T
    yield "apply_right", problem.apply_right(0.0, Y, V)
    yield "apply_left", problem.apply_left(0.0, Y, U)
    yield "project", problem.project(0.0, Y, U, V)
    yield "k_field", problem.k_field(V)(0.0, K)
    yield "l_field", problem.l_field(U)(0.0, L)
    yield "s_field", problem.s_field(U, V)(0.0, Y.S)


@pytest.mark.parametrize(("kind", "dtype"), [("banded", complex), ("general", float)])
def test_sylvester_products_on_dask_factors_equal_the_numpy_products(kind, dtype):
    Y, Yd = states(dtype)
    problem = sylvester(kind, dtype)
    for (name, ref), (_, got) in zip(products(problem, Y), products(problem, Yd), strict=True):
        if name != "s_field":
            assert is_dask_array(got), name
        if got.shape[0] == N:
            assert got.chunks[0] == (CHUNK,) * 4, name
        assert relative(dask.compute(got)[0], ref) < 1e-13, name


def test_sylvester_tall_products_are_lazy_and_computed_chunk_by_chunk():
    _, Yd = states()
    problem = sylvester("banded")
    U, _, V = Yd
    with RecordTasks() as rec:
        right = problem.apply_right(0.0, Yd, V)
        stage = problem.k_field(V)(0.0, U)
    assert rec.shapes == []  # nothing computed while the graph is built
    with RecordTasks() as rec:
        dask.persist(right, stage, scheduler="sync")
    assert 0 < rec.tallest() <= CHUNK + 2 * 2  # B has bandwidth 2


def test_sylvester_with_a_dense_source_and_no_b():
    rng = np.random.default_rng(7)
    C = rng.standard_normal((N, N)) / N
    Y, Yd = states()
    problem = lri.SylvesterODE(band(N, (-1, 0, 1)), None, C)
    for (name, ref), (_, got) in zip(products(problem, Y), products(problem, Yd), strict=True):
        assert relative(dask.compute(got)[0], ref) < 1e-13, name


def test_symmetric_operators_share_their_row_blocks():
    A = band(N, (-1, 0, 1))
    A = (A + A.T).tocsr()
    problem = lri.SylvesterODE(A, A)
    _, Yd = states()
    problem.k_field(Yd.V)
    chunked = problem._on_chunks(Yd.U)
    assert chunked.A is chunked.A_H is chunked.B_T is chunked.B_conj


def test_sylvester_on_dask_factors_refuses_a_dense_operator_by_name():
    _, Yd = states()
    problem = lri.SylvesterODE(np.eye(N))
    with pytest.raises(TypeError, match=r"A is a numpy\.ndarray.*SciPy sparse"):
        problem.check_state(Yd, 0.0)


def test_user_problem_with_a_chunked_operator_runs_in_bug_like_its_numpy_twin():
    A = band(N, (-1, 0, 1))
    chunked = ChunkedOperator(A)

    class Heat(lri.MatrixODE):
        """F(Y) = A Y + Y A^T, written once for NumPy and Dask factors."""

        def apply_right(self, t, Y, V):
            U, S, W = Y
            AU = chunked @ U if is_dask_array(U) else A @ U
            AW = chunked @ (W.conj()) if is_dask_array(W) else A @ W.conj()
            return AU @ (S @ (W.conj().T @ V)) + U @ (S @ (AW.T @ V))

        def apply_left(self, t, Y, X):
            U, S, W = Y
            AU = chunked @ U if is_dask_array(U) else A @ U
            AW = chunked @ W if is_dask_array(W) else A @ W
            return W @ (S.conj().T @ (AU.conj().T @ X)) + AW @ (S.conj().T @ (U.conj().T @ X))

    Y, Yd = states()
    method = lri.BUG()
    ref = method.step(Heat(), method.init(Heat(), Y, 0.0), 0.0, 0.05)[0].Y
    got = method.step(Heat(), method.init(Heat(), Yd, 0.0), 0.0, 0.05)[0].Y
    assert is_dask_array(got.U)
    got = lri.LowRankMatrix(got.U.compute(), got.S, got.V.compute(), check=False)
    assert difference(got, ref) < 1e-10


METHODS = {
    "BUG": lambda: lri.BUG(),
    "KSL": lambda: lri.ProjectorSplitting(order=1),
    "AugmentedBUG": lambda: lri.AugmentedBUG(lri.FixedRank(R)),
    "ParallelBUG": lambda: lri.ParallelBUG(lri.FixedRank(R)),
    "MidpointBUG": lambda: lri.MidpointBUG(lri.FixedRank(R)),
}
# a method of each kind on the banded problem (fixed rank, augmented, parallel, second order);
# the general operator through BUG (every method on Dask factors: tests/test_dask.py)
RUNS = [("banded", name) for name in METHODS] + [("general", "BUG")]


@pytest.mark.parametrize(("kind", "name"), RUNS)
def test_every_method_on_a_sparse_sylvester_problem_equals_the_numpy_run(kind, name, monkeypatch):
    def refuse(self, key, value):
        raise AssertionError("item assignment into a dask array")

    monkeypatch.setattr(da.Array, "__setitem__", refuse)
    Y, Yd = states()
    problem = sylvester(kind)
    ref = lri.solve(problem, Y, (0.0, 0.02), 0.01, METHODS[name]())
    sol = lri.solve(problem, Yd, (0.0, 0.02), 0.01, METHODS[name]())
    assert sol.status == "success", sol.message
    assert is_dask_array(sol.Y.U) and sol.Y.U.chunks == Yd.U.chunks
    got = lri.LowRankMatrix(sol.Y.U.compute(), sol.Y.S, sol.Y.V.compute(), check=False)
    assert difference(got, ref.Y) < 1e-10


def test_operators_work_on_a_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    A = band(N, (-1, 0, 1))
    G = scattered(N)
    X, Xd = tall()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2) as client:
        banded, general = ChunkedOperator(A) @ Xd, ChunkedOperator(G) @ Xd
        out = client.compute([banded, general], sync=True)
    assert relative(out[0], A @ X) < 1e-15 and relative(out[1], G @ X) < 1e-15
