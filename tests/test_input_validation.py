"""Bad input is a ValueError or TypeError that names the argument, raised before any step is
taken; numpy scalars are accepted wherever Python numbers are."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np
import pytest

import lowrank_integrators as lri
from tests.problems_for_tests import orthonormal


def start(rng, n=8, r=2, dtype=np.float64):
    U, V = orthonormal(rng, n, r).astype(dtype), orthonormal(rng, n, r).astype(dtype)
    return lri.LowRankMatrix(U, np.diag([1.0, 0.5]).astype(dtype), V)


class CountingODE(lri.SylvesterODE):
    """A Sylvester problem that counts its products (none may happen before a refusal)."""

    calls = 0

    def apply_right(self, t, Y, V):
        CountingODE.calls += 1
        return super().apply_right(t, Y, V)


# --- dtypes and array libraries ---------------------------------------------------------------


def test_half_precision_factors_are_refused(rng):
    Y = start(rng)
    with pytest.raises(TypeError, match="U has dtype float16"):
        lri.LowRankMatrix(*(a.astype(np.float16) for a in Y))
    with pytest.raises(TypeError, match="A has dtype float16"):
        lri.LowRankMatrix.from_dense(np.eye(4, dtype=np.float16), rank=2)
    unchecked = lri.LowRankMatrix(*(a.astype(np.float16) for a in Y), check=False)
    with pytest.raises(TypeError, match=r"Y0\.U has dtype float16"):
        lri.solve(lri.SylvesterODE(np.eye(8)), unchecked, (0.0, 1.0), 0.1)


def test_half_precision_tucker_tensors_are_refused(rng):
    core = rng.standard_normal((2, 2, 2)).astype(np.float16)
    factors = [np.eye(4, 2, dtype=np.float16)] * 3
    with pytest.raises(TypeError, match="core has dtype float16"):
        lri.TuckerTensor(core, factors)
    Y0 = lri.TuckerTensor(core, factors, check=False)
    problem = lri.DenseTensorODE(lambda t, Y: -Y)
    with pytest.raises(TypeError, match=r"Y0\.core has dtype float16"):
        lri.solve(problem, Y0, (0.0, 1.0), 0.1, method=lri.TuckerBUG())


def test_a_torch_start_with_a_numpy_operator_is_refused_and_the_reverse(rng):
    torch = pytest.importorskip("torch")
    Y = start(rng)
    Yt = lri.LowRankMatrix(*(torch.asarray(a) for a in Y))
    with pytest.raises(TypeError, match="A is a numpy"):
        lri.solve(lri.SylvesterODE(np.eye(8)), Yt, (0.0, 1.0), 0.1)
    with pytest.raises(TypeError, match="A is a torch"):
        lri.solve(lri.SylvesterODE(torch.eye(8, dtype=torch.float64)), Y, (0.0, 1.0), 0.1)
    with pytest.raises(TypeError, match="A is a SciPy operator"):
        import scipy.sparse as sp

        lri.solve(lri.SylvesterODE(sp.eye(8, format="csr")), Yt, (0.0, 1.0), 0.1)


def test_a_data_problem_of_another_library_is_refused(rng):
    torch = pytest.importorskip("torch")
    Yt = lri.LowRankMatrix(*(torch.asarray(a) for a in start(rng)))
    problem = lri.DataODE(lambda t: np.eye(8) * (1 + t))
    with pytest.raises(TypeError, match=r"A\(t\) is a numpy"):
        lri.solve(problem, Yt, (0.0, 1.0), 0.1)


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: lri.BUG(),
        lambda: lri.ProjectorSplitting(),
        lambda: lri.MidpointBUG(lri.Tolerance(1e-6)),
    ],
    ids=["bug", "psi", "midpoint"],
)
def test_an_operator_of_the_wrong_size_is_refused_before_any_product(rng, make):
    CountingODE.calls = 0
    with pytest.raises(ValueError, match=r"Y has shape \(8, 8\), but the SylvesterODE acts on"):
        lri.solve(CountingODE(np.eye(6)), start(rng), (0.0, 1.0), 0.1, method=make())
    assert CountingODE.calls == 0


def test_a_data_problem_of_the_wrong_shape_is_refused(rng):
    problem = lri.DataODE(lambda t: np.ones((8, 7)) * t)
    with pytest.raises(ValueError, match=r"A\(t\) has shape \(8, 7\) at t = 0.0"):
        lri.solve(problem, start(rng), (0.0, 1.0), 0.1)


def test_a_data_problem_whose_shape_changes_is_refused(rng):
    problem = lri.DataODE(lambda t: np.eye(8) * t if t < 0.3 else np.eye(9) * t)
    with pytest.raises(ValueError, match=r"A\(t\) returned shape \(9, 9\)"):
        lri.solve(problem, start(rng), (0.0, 1.0), 0.1)


def test_a_complex_data_problem_for_a_real_start_is_refused(rng):
    problem = lri.DataODE(lambda t: np.eye(8) * (1 + 1j * t))
    with pytest.raises(TypeError, match=r"A\(t\) returned an array of dtype complex128"):
        lri.solve(problem, start(rng), (0.0, 1.0), 0.1)


def test_a_substep_solver_returning_the_wrong_shape_is_named(rng):
    def broken(f, t0, t1, X0):
        return X0[:, :1]

    with pytest.raises(ValueError, match=r"substep solver .* shape \(8, 1\), expected \(8, 2\)"):
        lri.solve(lri.SylvesterODE(np.eye(8)), start(rng), (0.0, 1.0), 0.1, lri.BUG(broken))


class WrongShapeTensorProblem(lri.TensorODE):
    def project(self, t, Y, bases, skip=None):
        return np.zeros((3, 3, 3))


@pytest.mark.parametrize(
    "method",
    [lri.TuckerBUG(), lri.TuckerBUG(lri.Tolerance(1e-6)), lri.TuckerProjectorSplitting()],
    ids=["bug", "bug_adaptive", "psi"],
)
def test_a_tensor_problem_returning_the_wrong_shape_is_named(rng, method):
    Y0 = lri.TuckerTensor(rng.standard_normal((2, 2, 2)), [orthonormal(rng, 5, 2)] * 3)
    with pytest.raises(
        ValueError, match=r"problem\.project returned an array of shape \(3, 3, 3\)"
    ):
        lri.solve(WrongShapeTensorProblem(), Y0, (0.0, 1.0), 0.1, method=method)


# --- problem kinds and truncation rules -------------------------------------------------------

MATRIX_METHODS = [
    lri.BUG(),
    lri.ProjectorSplitting(),
    lri.AugmentedBUG(lri.Tolerance(1e-6)),
    lri.ParallelBUG(lri.Tolerance(1e-6)),
    lri.MidpointBUG(lri.Tolerance(1e-6)),
    lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-6)),
]


@pytest.mark.parametrize("method", MATRIX_METHODS, ids=lambda m: type(m).__name__)
def test_a_tensor_problem_given_to_a_matrix_integrator_is_refused(rng, method):
    problem = lri.DenseTensorODE(lambda t, Y: -Y)
    with pytest.raises(TypeError, match="integrates matrix problems"):
        lri.solve(problem, start(rng), (0.0, 1.0), 0.1, method=method)


def test_a_matrix_problem_given_to_a_tucker_integrator_is_refused(rng):
    Y0 = lri.TuckerTensor(rng.standard_normal((2, 2, 2)), [orthonormal(rng, 5, 2)] * 3)
    with pytest.raises(TypeError, match="integrates tensor problems"):
        lri.solve(lri.SylvesterODE(np.eye(5)), Y0, (0.0, 1.0), 0.1, method=lri.TuckerBUG())


@pytest.mark.parametrize(
    "cls",
    [lri.AugmentedBUG, lri.ParallelBUG, lri.MidpointBUG, lri.AugmentedBackwardCorrectedPSI],
)
def test_per_mode_fixed_ranks_are_refused_by_matrix_integrators(cls):
    with pytest.raises(ValueError, match="per-mode ranks"):
        cls(lri.FixedRank((2, 3)))


@pytest.mark.parametrize("power", [float("inf"), float("nan"), 0.0, -1.0])
def test_scale_with_h_must_be_a_finite_positive_power(power):
    with pytest.raises(ValueError, match="scale_with_h"):
        lri.Tolerance(0.1, scale_with_h=power)


# --- numpy scalars ----------------------------------------------------------------------------


def test_numpy_scalars_are_accepted_like_python_numbers(rng):
    assert lri.FixedRank(np.int64(3)).rank == 3
    assert lri.FixedRank((np.int32(2), np.int64(3))).rank == (2, 3)
    rule = lri.Tolerance(
        np.float32(0.5), rmin=np.int64(2), rmax=np.int64(4), scale_with_h=np.int64(2)
    )
    assert (rule.theta, rule.rmin, rule.rmax, rule.scale_with_h) == (0.5, 2, 4, 2)
    assert lri.Tolerance(np.int64(1)).theta == 1.0
    assert lri.RK4(steps=np.int64(3)).steps == 3
    assert lri.ParallelBUG(lri.FixedRank(2), c_eta=np.float32(2.0)).c_eta == 2.0
    Y = lri.LowRankMatrix.from_dense(rng.standard_normal((6, 5)), rank=np.int64(2))
    assert Y.rank == 2
    sol = lri.solve(
        lri.SylvesterODE(np.eye(6), np.eye(5)),
        Y,
        (np.float64(0), np.int64(1)),
        np.float32(0.25),
        method=lri.AugmentedBUG(rule),
    )
    assert sol.success


# --- DataODE from several threads -------------------------------------------------------------


class _YieldingCache(OrderedDict):
    """A cache that hands the GIL to another thread right after each lookup: a check-then-use
    without a lock then meets an entry that another thread has evicted in between."""

    def __contains__(self, key):
        found = super().__contains__(key)
        time.sleep(0)
        return found


def test_data_problem_cache_is_safe_under_threads():
    """Threads asking for A(t) at a few recurring times (cache hits, misses and evictions
    interleaved) all get the right matrix and no error."""
    problem = lri.DataODE(lambda t: np.full((3, 3), float(t)))
    problem._cache = _YieldingCache()  # widen the window between a lookup and its use
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        try:
            for t in rng.integers(0, 7, size=300):
                value = problem.data(float(t))
                assert value[0, 0] == t
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
