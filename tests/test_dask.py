"""Factors on Dask: every matrix integrator on row-chunked dask factors with a host core.

The specification: ``LowRankMatrix(U, S, V)`` takes tall ``dask.array`` factors in row chunks
and a NumPy core; every matrix integrator, driven by a problem written with Dask operations,
gives the NumPy run's result to 1e-10 (relative), returns Dask factors in the input's row
chunks and a NumPy core, never assigns into a Dask array, and does the same work in every step
(each step starts from the persisted state, not from the graph of the run). The same code runs
on a ``dask.distributed`` cluster of worker processes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import lowrank_integrators as lri  # noqa: E402
from lowrank_integrators.errors import NonFiniteError  # noqa: E402

N, R, CHUNK = 4096, 4, 1024  # 4 row chunks


class DiagonalSylvester(lri.MatrixODE):
    """``F(Y) = diag(a) Y + Y diag(b) + C`` written with array operations only.

    The same class serves NumPy and Dask: given Dask vectors and factors, every product it
    returns is a Dask operation (a user's field written with Dask).
    """

    def __init__(self, a, b, C):
        self.a, self.b, self.C = a, b, C

    def apply_right(self, t, Y, V):
        U, S, W = Y
        Uc, Sc, Vc = self.C
        out = self.a[:, None] * (U @ (S @ (W.T @ V)))
        out = out + U @ (S @ ((self.b[:, None] * W).T @ V))
        return out + Uc @ (Sc @ (Vc.T @ V))

    def apply_left(self, t, Y, X):
        U, S, W = Y
        Uc, Sc, Vc = self.C
        out = W @ (S.T @ (U.T @ (self.a[:, None] * X)))
        out = out + self.b[:, None] * (W @ (S.T @ (U.T @ X)))
        return out + Vc @ (Sc.T @ (Uc.T @ X))


def _orth(rng, k):
    return np.linalg.qr(rng.standard_normal((N, k)))[0]


def _to_dask(x, chunks=CHUNK):
    return da.from_array(x, chunks=(chunks, -1) if x.ndim == 2 else chunks)


@pytest.fixture(scope="module")
def case():
    """The NumPy problem and start, and the same as Dask arrays in 4 row chunks."""
    rng = np.random.default_rng(7)
    a, b = -1.0 - rng.random(N), -1.0 - rng.random(N)
    Uc, Vc, Sc = _orth(rng, 3), _orth(rng, 3), np.diag([1.0, 0.5, 0.2])
    U0, V0, S0 = _orth(rng, R), _orth(rng, R), np.diag(2.0 ** -np.arange(R))
    numpy_case = (DiagonalSylvester(a, b, (Uc, Sc, Vc)), lri.LowRankMatrix(U0, S0, V0))
    dask_problem = DiagonalSylvester(_to_dask(a), _to_dask(b), (_to_dask(Uc), Sc, _to_dask(Vc)))
    dask_case = (dask_problem, lri.LowRankMatrix(_to_dask(U0), S0, _to_dask(V0)))
    return numpy_case, dask_case


def _relative_difference(Y, Z):
    """``||Y - Z||_F / ||Z||_F`` from the factors (NumPy)."""
    U = np.concatenate([np.asarray(Y.U), np.asarray(Z.U)], axis=1)
    V = np.concatenate([np.asarray(Y.V), np.asarray(Z.V)], axis=1)
    S = np.zeros((U.shape[1], V.shape[1]))
    S[: Y.rank, : Y.rank], S[Y.rank :, Y.rank :] = Y.S, -np.asarray(Z.S)
    ru, rv = np.linalg.qr(U)[1], np.linalg.qr(V)[1]
    return np.linalg.norm(ru @ S @ rv.T) / np.linalg.norm(np.asarray(Z.S))


def _computed(Y):
    return lri.LowRankMatrix(Y.U.compute(), Y.S, Y.V.compute(), check=False)


METHODS = {
    "BUG": lambda: lri.BUG(),
    "KSL": lambda: lri.ProjectorSplitting(order=1),
    "Strang": lambda: lri.ProjectorSplitting(order=2),
    "AugmentedBUG": lambda: lri.AugmentedBUG(lri.FixedRank(R)),
    "ParallelBUG": lambda: lri.ParallelBUG(lri.FixedRank(R)),
    "MidpointBUG": lambda: lri.MidpointBUG(lri.FixedRank(R)),
    "abc-PSI": lambda: lri.AugmentedBackwardCorrectedPSI(lri.FixedRank(R)),
}


@pytest.fixture
def no_item_assignment(monkeypatch):
    """Any item assignment into a Dask array fails the test."""

    def refuse(self, key, value):
        raise AssertionError("item assignment into a dask array")

    monkeypatch.setattr(da.Array, "__setitem__", refuse)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_on_dask_factors_equals_the_numpy_run(case, name, no_item_assignment):
    (np_problem, Y_np), (dk_problem, Y_dk) = case
    ref = lri.solve(np_problem, Y_np, (0.0, 0.04), 0.02, METHODS[name]())
    sol = lri.solve(dk_problem, Y_dk, (0.0, 0.04), 0.02, METHODS[name]())
    assert sol.status == "success", sol.message
    Y = sol.Y
    assert isinstance(Y.U, da.Array) and isinstance(Y.V, da.Array)
    assert type(Y.S) is np.ndarray
    assert Y.U.chunks == Y_dk.U.chunks and Y.V.chunks == Y_dk.V.chunks
    assert sol.ranks == ref.ranks
    assert _relative_difference(_computed(Y), ref.Y) <= 1e-10
    for s_dask, s_np in zip(sol.singular_values, ref.singular_values, strict=True):
        np.testing.assert_allclose(s_dask, s_np, rtol=1e-10)


def test_rank_adaptive_run_takes_the_rank_decisions_of_the_numpy_run(case):
    (np_problem, Y_np), (dk_problem, Y_dk) = case
    method = lri.AugmentedBUG(lri.Tolerance(1e-3))
    ref = lri.solve(np_problem, Y_np, (0.0, 0.06), 0.02, method)
    sol = lri.solve(dk_problem, Y_dk, (0.0, 0.06), 0.02, method)
    assert sol.ranks == ref.ranks and len(set(sol.ranks)) > 1  # the rank did change
    assert _relative_difference(_computed(sol.Y), ref.Y) <= 1e-10


def test_irregular_row_chunks_of_the_input_are_kept(case):
    """The problem's arrays come in other chunks than the state: the result keeps the state's."""
    (np_problem, Y_np), (dk_problem, _) = case
    rows = (1000, 1096, 1000, 1000)
    Y0 = lri.LowRankMatrix(
        da.from_array(Y_np.U, chunks=(rows, -1)), Y_np.S, da.from_array(Y_np.V, chunks=(rows, -1))
    )
    method = lri.AugmentedBUG(lri.FixedRank(R), substep=lri.Euler())
    sol = lri.solve(dk_problem, Y0, (0.0, 0.04), 0.02, method)
    ref = lri.solve(np_problem, Y_np, (0.0, 0.04), 0.02, method)
    assert sol.Y.U.chunks[0] == rows and sol.Y.V.chunks[0] == rows
    assert _relative_difference(_computed(sol.Y), ref.Y) <= 1e-10


class _TaskCounter(dask.callbacks.Callback):
    """Counts the tasks the local scheduler runs."""

    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _start_state(self, dsk, state):
        self.tasks += len(state["ready"]) + len(state["waiting"])


@pytest.mark.parametrize("name", ["BUG", "AugmentedBUG"])
def test_work_per_step_does_not_grow_over_a_run(case, name):
    """Every step runs the same number of tasks and leaves a state of one task per chunk."""
    _, (dk_problem, Y_dk) = case
    tasks_per_step, graph_sizes = [], []
    counter = _TaskCounter()

    def record(t, Y, info):
        tasks_per_step.append(counter.tasks)
        counter.tasks = 0
        graph_sizes.append(len(Y.U.__dask_graph__()) + len(Y.V.__dask_graph__()))

    method = METHODS[name]()
    method.substep = lri.Euler()
    with counter:
        sol = lri.solve(dk_problem, Y_dk, (0.0, 0.2), 0.01, method, callback=record)
    assert sol.status == "success" and len(tasks_per_step) == 20
    assert tasks_per_step[-1] <= 1.3 * tasks_per_step[1]
    assert max(tasks_per_step[1:]) == min(tasks_per_step[1:])
    n_chunks = len(Y_dk.U.chunks[0]) + len(Y_dk.V.chunks[0])
    assert graph_sizes == [n_chunks] * 20


def test_singular_values_norm_and_products_of_a_dask_matrix(case):
    _, (_, Y) = case
    np.testing.assert_allclose(Y.singular_values(), 2.0 ** -np.arange(R), rtol=1e-14)
    assert Y.norm() == pytest.approx(np.linalg.norm(2.0 ** -np.arange(R)))
    X = da.ones((N, 2), chunks=(CHUNK, -1))
    assert isinstance(Y.matmul(X), da.Array)
    assert Y.matmul(X).chunks[0] == Y.U.chunks[0]


def test_dask_core_is_computed_to_the_host_and_columns_gathered(case):
    (_, Y_np), _ = case
    U = da.from_array(Y_np.U, chunks=(CHUNK, 2))  # columns in two chunks
    Y = lri.LowRankMatrix(U, da.from_array(Y_np.S), _to_dask(Y_np.V))
    assert type(Y.S) is np.ndarray
    assert Y.U.chunks == ((CHUNK,) * 4, (R,))


def test_bad_dask_factors_are_refused_with_what_is_expected(case):
    (_, Y_np), (_, Y) = case
    with pytest.raises(TypeError, match="V must be a Dask array"):
        lri.LowRankMatrix(Y.U, Y.S, Y_np.V)
    with pytest.raises(TypeError, match="S is a Dask array but U and V are numpy"):
        lri.LowRankMatrix(Y_np.U, da.from_array(Y_np.S), Y_np.V)
    with pytest.raises(TypeError, match="S must be a NumPy array"):
        lri.LowRankMatrix(Y.U, [[1.0]], Y.V)
    unknown = Y.U[Y.U[:, 0] > -np.inf]  # boolean indexing: unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        lri.LowRankMatrix(unknown, Y.S, Y.V)
    with pytest.raises(ValueError, match="U must have orthonormal columns"):
        lri.LowRankMatrix(2.0 * Y.U, Y.S, Y.V)
    bad = da.concatenate([Y.V[:-1], da.full((1, R), np.nan)], axis=0)
    with pytest.raises(ValueError, match="V contains non-finite entries"):
        lri.LowRankMatrix(Y.U, Y.S, bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        lri.LowRankMatrix(Y.U, np.eye(R + 1), Y.V)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_qr_of_a_non_finite_dask_array_raises(case):
    from lowrank_integrators import _backend as bk

    _, (_, Y) = case
    with pytest.raises(NonFiniteError):
        bk.qr(Y.U * np.inf)


def test_qr_of_an_increment_of_dask_blocks_equals_the_numpy_one(rng):
    from lowrank_integrators import _backend as bk

    U0 = np.linalg.qr(rng.standard_normal((90, 3)))[0]
    S0 = rng.standard_normal((3, 2))
    K1 = U0 @ S0 + 0.1 * rng.standard_normal((90, 2))
    Q, R = bk.qr_increment(da.from_array(U0, chunks=30), da.from_array(K1, chunks=30), S0)
    Qn, Rn = bk.qr_increment(U0, K1, S0)
    assert isinstance(Q, da.Array)
    np.testing.assert_allclose(np.asarray(Q.compute()), Qn, atol=1e-13)
    np.testing.assert_allclose(np.asarray(R), Rn, atol=1e-13)


def test_a_numpy_run_never_imports_dask():
    code = (
        "import sys, numpy as np, lowrank_integrators as lri\n"
        "Y = lri.LowRankMatrix.from_dense(np.outer(np.arange(1.0, 9.0), np.ones(6)), rank=1)\n"
        "P = lri.DenseODE(lambda t, Y: -Y)\n"
        "lri.solve(P, Y, (0, 0.1), 0.05, lri.AugmentedBUG(lri.FixedRank(1)))\n"
        "print('dask' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_same_code_on_a_distributed_cluster_of_processes(case):
    distributed = pytest.importorskip("distributed")
    (np_problem, Y_np), (dk_problem, Y_dk) = case
    method = lri.AugmentedBUG(lri.FixedRank(R), substep=lri.Euler())
    ref = lri.solve(np_problem, Y_np, (0.0, 0.04), 0.02, method)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        sol = lri.solve(dk_problem, Y_dk, (0.0, 0.04), 0.02, method)
        assert sol.status == "success", sol.message
        assert sol.Y.U.chunks == Y_dk.U.chunks
        Y = _computed(sol.Y)
    assert _relative_difference(Y, ref.Y) <= 1e-10


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_step_with_non_finite_values_fails_the_run_and_keeps_the_last_good_state(case):
    _, (dk_problem, Y_dk) = case

    class BlowsUp(DiagonalSylvester):
        def apply_right(self, t, Y, V):
            out = super().apply_right(t, Y, V)
            return out * np.inf if t > 0.01 else out  # Euler: t = 0, then 0.02

    problem = BlowsUp(dk_problem.a, dk_problem.b, dk_problem.C)
    euler = lri.Euler()
    for method in (lri.BUG(substep=euler), lri.AugmentedBUG(lri.FixedRank(R), substep=euler)):
        sol = lri.solve(problem, Y_dk, (0.0, 0.04), 0.02, method)
        assert sol.status == "failed" and "step 2 of 2" in sol.message
        assert isinstance(sol.Y.U, da.Array) and np.all(np.isfinite(sol.Y.U.compute()))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_non_finite_core_is_found_when_the_state_is_persisted(case):
    _, (dk_problem, Y_dk) = case

    class CoreBlowsUp(DiagonalSylvester):
        def project(self, t, Y, U, V):
            out = U.T @ self.apply_right(t, Y, V)
            return out * np.inf if t > 0.01 else out

    problem = CoreBlowsUp(dk_problem.a, dk_problem.b, dk_problem.C)
    sol = lri.solve(problem, Y_dk, (0.0, 0.04), 0.02, lri.BUG(substep=lri.Euler()))
    assert sol.status == "failed" and "step 2 of 2" in sol.message
    assert "non-finite values" in sol.message
    assert np.all(np.isfinite(sol.Y.S))


def test_qr_of_dask_factors_gives_the_numpy_bases():
    """CholeskyQR2 over row chunks gives the NumPy QR's Q and R; a nearly rank-deficient input
    goes to Householder TSQR and is still factored to working precision, with the same signs."""
    from lowrank_integrators import _backend as bk

    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, 6))
    Q_np, R_np = bk.qr(x)
    Q, R = bk.qr(_to_dask(x))
    assert isinstance(Q, da.Array) and Q.chunks[0] == (CHUNK,) * 4 and type(R) is np.ndarray
    np.testing.assert_allclose(Q.compute(), Q_np, atol=1e-13)
    np.testing.assert_allclose(R, R_np, atol=1e-12)

    y = x.copy()
    y[:, 5] = y[:, 4] + 1e-11 * rng.standard_normal(N)  # kappa ~ 1e13: no CholeskyQR2
    Q, R = bk.qr(_to_dask(y))
    Qc = Q.compute()
    np.testing.assert_allclose(Qc.T @ Qc, np.eye(6), atol=1e-13)
    np.testing.assert_allclose(Qc @ R, y, atol=1e-12)
    assert np.all(np.diagonal(Qc[:6]) <= 0)
    np.testing.assert_allclose(Qc[:, :5], bk.qr(y)[0][:, :5], atol=1e-10)
