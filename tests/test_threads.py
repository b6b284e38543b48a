"""Thread limits: the library's entry points run on one BLAS thread unless the user decides."""

from __future__ import annotations

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import lowrank_integrators as lri
from lowrank_integrators import threads
from lowrank_integrators.cli import main


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch):
    """A fresh user: no thread variable, no global choice."""
    for name in (*threads.USER_VARIABLES, threads.ENV_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_global_choice", threads._UNSET)


def blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def threads_seen_by_solve() -> set[int]:
    """The BLAS pool sizes during a step of ``solve``."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 20))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((20, 20)), rank=3)
    seen: set[int] = set()

    def record(t, Y, info):
        seen.update(blas_threads())

    lri.solve(lri.SylvesterODE(W - W.T, W - W.T), Y0, (0.0, 0.02), 0.01, callback=record)
    return seen


def test_solve_runs_on_one_thread_and_restores_the_pools():
    import scipy.linalg  # noqa: F401  (SciPy's BLAS loaded, as in any run of the library)

    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        assert threads_seen_by_solve() == {1}
        assert blas_threads() == {2}


class _RecordingRK4(lri.RK4):
    """RK4 substeps that record the BLAS pool sizes when they start."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def stages(self, f, t0, t1, X0):
        self.seen.update(blas_threads())
        return (yield from super().stages(f, t0, t1, X0))


@pytest.mark.parametrize("name", ["BUG", "AugmentedBUG"])
def test_a_step_called_directly_runs_on_one_thread_and_restores_the_pools(name):
    # a user's own time loop calls the step; SciPy's BLAS is loaded only by the step itself
    rng = np.random.default_rng(1)
    W = rng.standard_normal((20, 20))
    problem = lri.SylvesterODE(W - W.T, W - W.T)
    substep = _RecordingRK4()
    if name == "BUG":
        method = lri.BUG(substep=substep)
    else:
        method = lri.AugmentedBUG(lri.FixedRank(3), substep=substep)
    state = method.init(problem, lri.LowRankMatrix.from_dense(W, rank=3), 0.0)
    with threadpool_limits(limits=2, user_api="blas"):
        method.step(problem, state, 0.0, 0.01)
        assert substep.seen == {1}
        assert blas_threads() == {2}


@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_user_thread_variable_wins(monkeypatch, variable):
    monkeypatch.setenv(variable, "2")
    assert threads.current_limit() is None
    with threadpool_limits(limits=2, user_api="blas"):
        assert threads_seen_by_solve() == {2}


def test_the_library_variable_sets_the_limit_or_turns_it_off(monkeypatch):
    monkeypatch.setenv(threads.ENV_VARIABLE, "2")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the library's own variable comes first
    assert threads.current_limit() == 2
    monkeypatch.setenv(threads.ENV_VARIABLE, "off")
    assert threads.current_limit() is None
    monkeypatch.setenv(threads.ENV_VARIABLE, "many")
    with pytest.raises(ValueError, match=threads.ENV_VARIABLE):
        threads.current_limit()


def test_every_change_of_the_environment_is_seen_at_the_next_entry(monkeypatch):
    # the variables are read on every call, also where os.environ is changed in place or
    # replaced by another mapping (as os.environ.get would see them)
    for v in threads.USER_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(threads.ENV_VARIABLE, raising=False)
    assert threads.current_limit() == threads.DEFAULT_LIMIT
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.current_limit() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "  ")  # blank: as if not set
    assert threads.current_limit() == threads.DEFAULT_LIMIT
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(threads.ENV_VARIABLE, "3")
    assert threads.current_limit() == 3
    monkeypatch.setattr(os, "environ", {threads.ENV_VARIABLE: "off"})
    assert threads.current_limit() is None
    monkeypatch.setattr(os, "environ", {"MKL_NUM_THREADS": "2"})
    assert threads.current_limit() is None
    monkeypatch.setattr(os, "environ", {})
    assert threads.current_limit() == threads.DEFAULT_LIMIT


def test_set_thread_limit_none_opts_out_and_an_integer_sets_the_limit():
    with threadpool_limits(limits=2, user_api="blas"):
        lri.set_thread_limit(None)
        assert threads_seen_by_solve() == {2}
        lri.set_thread_limit(1)
        assert threads_seen_by_solve() == {1}


def test_thread_limit_block_wins_over_the_default():
    with lri.thread_limit(2):
        assert blas_threads() == {2}
        assert threads.current_limit() == 2
        assert threads_seen_by_solve() == {2}
    with threadpool_limits(limits=2, user_api="blas"), lri.thread_limit(None):
        assert threads_seen_by_solve() == {2}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="limit"):
        lri.set_thread_limit(bad)
    with pytest.raises(ValueError, match="limit"), lri.thread_limit(bad):
        pass


def test_the_decorator_applies_the_limit_and_keeps_the_signature():
    @threads.limited
    def work(x: int) -> set[int]:
        """Docstring."""
        return blas_threads()

    with threadpool_limits(limits=2, user_api="blas"):
        assert work(1) == {1}
    assert work.__name__ == "work" and work.__doc__ == "Docstring."


def test_cli_commands_run_under_the_limit(monkeypatch, tmp_path):
    seen: set[int] = set()

    def fake_run_cases(cases, progress=False):
        seen.update(blas_threads())
        return []

    monkeypatch.setattr("lowrank_integrators.verify.suite.run_cases", fake_run_cases)
    with threadpool_limits(limits=2, user_api="blas"):
        main(["validate", "--quick", "--only", "V5-stiff-heat/KSL", "--out", str(tmp_path)])
    assert seen == {1}


def test_torch_threads_are_limited_inside_and_restored_after():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.limit_threads(torch=True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_error_inside_an_entry_point_restores_the_pools_and_torch():
    import scipy.linalg  # noqa: F401

    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)

    @threads.limited(torch=True)
    def fails():
        assert blas_threads() == {1} and torch.get_num_threads() == 1
        raise RuntimeError("inside")

    try:
        with threadpool_limits(limits=2, user_api="blas"):
            with pytest.raises(RuntimeError, match="inside"):
                fails()
            assert blas_threads() == {2}
            assert torch.get_num_threads() == 2
            assert threads._active.get() is None  # the next entry point applies its limit
            assert threads_seen_by_solve() == {1}
    finally:
        torch.set_num_threads(before)


def test_a_torch_entry_point_inside_a_numpy_one_limits_torch_too():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.limit_threads(), threads.limit_threads(torch=True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pools_already_at_the_limit_are_left_alone(monkeypatch):
    import scipy.linalg  # noqa: F401
    import threadpoolctl

    def refuse(*args, **kwargs):
        raise AssertionError("threadpoolctl's limiter entered for pools already at the limit")

    with threadpool_limits(limits=1):
        monkeypatch.setattr(threadpoolctl.ThreadpoolController, "limit", refuse)
        assert threads_seen_by_solve() == {1}
        assert blas_threads() == {1}
