"""Fault injection: a run that meets non-finite numbers, a failing problem, an interrupt or an
unwritable output ends promptly, with a status or a clear error, and never hangs.

Every test here runs under a time limit (the autouse fixture ``time_limit``): an alarm fails a
test that loops in Python, and a watchdog thread ends the whole run, with the traceback of
every thread, when a test is stuck inside compiled code (an SVD that never returns), so that a
hang fails CI instead of blocking it.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import lowrank_integrators as lri
from lowrank_integrators.errors import NonFiniteError
from tests.problems_for_tests import orthonormal

LIMIT_S = 60  # per test; the tests take well under a second each, the subprocess ones ~3 s
ROOT = Path(__file__).resolve().parent.parent


class TimeLimitExceeded(Exception):
    pass


@pytest.fixture(autouse=True)
def time_limit():
    def expire(signum, frame):
        raise TimeLimitExceeded(f"the test ran for more than {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    faulthandler.dump_traceback_later(2 * LIMIT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- non-finite values, matrix integrators ----------------------------------------------------

T_BAD = 0.25  # the field turns non-finite from this time on
H = 0.1


def matrix_methods():
    return {
        "bug": lri.BUG(),
        "projector_splitting": lri.ProjectorSplitting(),
        "augmented_bug": lri.AugmentedBUG(lri.Tolerance(1e-6)),
        "parallel_bug": lri.ParallelBUG(lri.Tolerance(1e-6)),
        "parallel_bug_order2": lri.ParallelBUG(lri.Tolerance(1e-6), order=2),
        "midpoint_bug": lri.MidpointBUG(lri.Tolerance(1e-6)),
        "abc_psi": lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-6)),
        "augmented_bug_fixed_rank": lri.AugmentedBUG(lri.FixedRank(2)),
    }


class PoisonedField(lri.MatrixODE):
    """``F(t, Y) = A Y`` that turns ``bad`` (NaN or inf) from ``T_BAD`` on.

    ``where="all"`` poisons every product; ``where="core"`` only ``U^H F V``, so that finite
    bases meet a non-finite core (the SVD of a core holding inf may never return).
    """

    def __init__(self, A, bad, where):
        self.A, self.bad, self.where = A, bad, where

    def _poison(self, t, X, kind):
        if t >= T_BAD and (self.where == "all" or kind == "core"):
            X = X.copy()
            X[0, 0] = self.bad
        return X

    def apply_right(self, t, Y, V):
        return self._poison(t, self.A @ Y.matmul(V), "right")

    def apply_left(self, t, Y, U):
        return self._poison(t, Y.rmatmul_adjoint(self.A.T @ U), "left")

    def project(self, t, Y, U, V):
        return self._poison(t, U.T @ (self.A @ Y.matmul(V)), "core")


def start(rng, n=10, r=2):
    return lri.LowRankMatrix(orthonormal(rng, n, r), np.diag([1.0, 0.5]), orthonormal(rng, n, r))


# abc-PSI never asks for U^H F V, so a poisoned core product does not reach it.
POISON_CASES = [
    (name, where)
    for name in sorted(matrix_methods())
    for where in ("all", "core")
    if not (name == "abc_psi" and where == "core")
]


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(("name", "where"), POISON_CASES)
def test_a_non_finite_field_ends_the_run_as_failed_with_the_last_good_state(rng, name, bad, where):
    A = rng.standard_normal((10, 10)) / 3
    Y0 = start(rng)
    method = matrix_methods()[name]
    problem = PoisonedField(A, bad, where)
    with np.errstate(all="ignore"):
        sol = lri.solve(problem, Y0, (0.0, 1.0), H, method=method, save_states=True)
    assert sol.status == "failed"
    # Steps start at 0, 0.1, 0.2, 0.3: the step from 0.2 reaches T_BAD in its substeps.
    assert "step 3 of 10" in sol.message and "t = 0.2" in sol.message
    assert sol.t[-1] == pytest.approx(0.2)
    assert sol.Y is sol.states[-1]
    assert all(np.isfinite(a).all() for a in sol.Y)
    clean = lri.solve(PoisonedField(A, 0.0, "none"), Y0, (0.0, 0.2), H, method=method)
    np.testing.assert_allclose(sol.Y.to_dense(), clean.Y.to_dense(), atol=1e-12)


def test_a_core_holding_inf_is_never_handed_to_the_svd():
    """The core of this shape is one that LAPACK's SVD may never return from."""
    core = np.diag([np.inf, 1.0, 1.0, 1.0])
    with pytest.raises(NonFiniteError, match=r"SVD \(shape \(4, 4\)\)"):
        lri.Tolerance(1e-3).truncate_core(core, h=0.1)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_tall_block_holding_nan_or_inf_is_never_handed_to_the_qr(rng, bad):
    from lowrank_integrators import _backend as bk

    X = rng.standard_normal((50, 3))
    X[17, 1] = bad
    with pytest.raises(NonFiniteError, match="QR"):
        bk.qr(X)
    with pytest.raises(NonFiniteError, match="QR"):
        bk.qr_blocks([rng.standard_normal((50, 2)), X])


# --- non-finite values, Tucker integrators ----------------------------------------------------


def tucker_methods():
    return {
        "tucker_bug": lri.TuckerBUG(),
        "tucker_bug_adaptive": lri.TuckerBUG(lri.Tolerance(1e-6)),
        "tucker_projector_splitting": lri.TuckerProjectorSplitting(),
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", sorted(tucker_methods()))
def test_a_non_finite_tensor_field_ends_the_run_as_failed(rng, name, bad):
    n, r = 5, 2
    core = rng.standard_normal((r, r, r))
    Y0 = lri.TuckerTensor(core, [orthonormal(rng, n, r) for _ in range(3)])

    def f(t, Y):
        F = -Y
        if t >= T_BAD:
            F = F.copy()
            F[0, 0, 0] = bad
        return F

    with np.errstate(all="ignore"):
        sol = lri.solve(lri.DenseTensorODE(f), Y0, (0.0, 1.0), H, method=tucker_methods()[name])
    assert sol.status == "failed"
    assert "step 3 of 10" in sol.message
    assert sol.t[-1] == pytest.approx(0.2)
    assert np.isfinite(sol.Y.core).all() and all(np.isfinite(U).all() for U in sol.Y.factors)


# --- non-finite gradients in training ---------------------------------------------------------


class PoisonedPass:
    """A gradient pass with a finite loss whose core products hold ``bad``."""

    def __init__(self, G, bad):
        self.loss, self.param_grads, self.G, self.bad = 1.0, [], G, bad

    def right(self, layer, V):
        return self.G @ V

    def left(self, layer, U):
        return self.G.T @ U

    def project(self, layer, U, V):
        P = U.T @ self.G @ V
        P[0, 0] = self.bad
        return P


# the factorisations warn before the finiteness check refuses their input
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", ["augmented_bug", "midpoint_bug", "parallel_bug", "bug"])
def test_a_non_finite_gradient_in_training_is_divergence_and_keeps_the_state(rng, name, bad):
    from lowrank_integrators.training import LowRankTraining, TrainingDiverged

    method = {
        "augmented_bug": lri.AugmentedBUG(lri.Tolerance(0.1, relative=True), substep=lri.Euler()),
        "midpoint_bug": lri.MidpointBUG(lri.Tolerance(0.1, relative=True), substep=lri.Euler()),
        "parallel_bug": lri.ParallelBUG(lri.Tolerance(0.1, relative=True), substep=lri.Euler()),
        "bug": lri.BUG(substep=lri.Euler()),
    }[name]
    G = rng.standard_normal((10, 10))
    client = LowRankTraining(method, lambda W, P, batch: PoisonedPass(G, bad))
    state = client.init([start(rng)])
    with pytest.raises(TrainingDiverged, match="step 0"), np.errstate(all="ignore"):
        client.step(state, None, 0.1)
    assert all(np.isfinite(a).all() for a in state.weights[0])


# --- a problem that raises --------------------------------------------------------------------


class ProblemBroke(Exception):
    pass


@pytest.mark.parametrize("name", sorted(matrix_methods()))
def test_an_exception_of_the_problem_reaches_the_caller_unchanged(rng, name):
    A = rng.standard_normal((10, 10)) / 3

    def f(t, Y):
        if t >= T_BAD:
            raise ProblemBroke(f"no data at t = {t}")
        return A @ Y

    with pytest.raises(ProblemBroke, match="no data"):
        lri.solve(lri.DenseODE(f), start(rng), (0.0, 1.0), H, method=matrix_methods()[name])


# --- interrupts -------------------------------------------------------------------------------


def interrupt_after_start(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; once it prints ``started``, send SIGINT.

    Returns the finished process; fails the test when it does not end within 20 s of the
    interrupt.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A process started in the background by a non-interactive shell (a test run under `&`
    # or nohup) inherits SIGINT as ignored, and Python then installs no handler: the child
    # gets Python's default handler back, so that the test sees what an interactive user's
    # Ctrl-C does.
    prelude = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "started", proc.stderr.read()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigint_during_solve_ends_the_run_with_keyboard_interrupt():
    done = interrupt_after_start(
        """
        import numpy as np
        import lowrank_integrators as lri

        rng = np.random.default_rng(0)
        W = rng.standard_normal((60, 60)); W = W - W.T
        Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((60, 60)), rank=4)
        first = []

        def tell(t, Y, info):
            if not first:
                first.append(t)
                print("started", flush=True)

        lri.solve(lri.SylvesterODE(W, W), Y0, (0.0, 1e4), 1e-3, method=lri.MidpointBUG(
            lri.Tolerance(1e-8)), callback=tell)
        print("finished", flush=True)
        """
    )
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr
    assert "finished" not in done.stdout


def test_sigint_during_training_ends_the_run_with_keyboard_interrupt():
    pytest.importorskip("sklearn")
    done = interrupt_after_start(
        """
        from lowrank_integrators.training.experiment import RunConfig, run_training

        started = []

        def log(line):
            pass

        cfg = RunConfig(dataset="digits", arch="64-64-64-10", integrator="parallel-bug",
                        epochs=10_000, n_train=256, n_test=64, batch_size=16, tau=0.1)
        import lowrank_integrators.training.client as client
        step = client.LowRankTraining.step

        def step_and_tell(self, *args, **kwargs):
            if not started:
                started.append(True)
                print("started", flush=True)
            return step(self, *args, **kwargs)

        client.LowRankTraining.step = step_and_tell
        run_training(cfg, progress=False, log=log)
        print("finished", flush=True)
        """
    )
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr
    assert "finished" not in done.stdout


# --- files the command line writes ------------------------------------------------------------


FILE_LIMIT = 64  # bytes: every file the command writes is larger


def full_disk() -> None:
    """In the child: writing past FILE_LIMIT bytes fails with an OSError (EFBIG), as on a
    full disk (without the signal that would otherwise end the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def run_cli(*args: str, cwd: Path, preexec_fn=None) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter, in ``cwd`` (where default outputs go)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "lowrank_integrators.cli", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S - 10,
        env=env,
        cwd=cwd,
        preexec_fn=preexec_fn,
    )


TRAIN = ["train", "--arch", "64-16-10", "--rank", "4", "--epochs", "1", "--n-train", "64"]
TRAIN += ["--n-test", "32", "--no-progress"]


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory path nobody can create (its parent is a regular file), even as root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "out"


def test_train_reports_a_full_disk_as_an_error_not_a_traceback(tmp_path):
    pytest.importorskip("sklearn")
    outputs = ["--json", str(tmp_path / "s.json"), "--checkpoint", str(tmp_path / "ckpt")]
    done = run_cli(*TRAIN, *outputs, cwd=tmp_path, preexec_fn=full_disk)
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr
    assert "error" in done.stderr.lower()


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda out: ["--json", str(out / "s.json")], id="json"),
        pytest.param(lambda out: ["--checkpoint", str(out)], id="checkpoint"),
    ],
)
def test_train_reports_an_unwritable_output_as_an_error_not_a_traceback(tmp_path, where):
    pytest.importorskip("sklearn")
    out = unwritable_dir(tmp_path)
    done = run_cli(*TRAIN, *where(out), cwd=tmp_path)
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr
    assert str(out.parent) in done.stderr


def test_validate_reports_an_unwritable_output_folder_as_an_error(tmp_path):
    out = unwritable_dir(tmp_path)
    args = ["validate", "--out", str(out), "--quick", "--only", "V1-sylvester/KSL/exactness"]
    done = run_cli(*args, "--no-figures", "--no-progress", cwd=tmp_path)
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr
    assert str(out.parent) in done.stderr


def test_validate_reports_a_full_disk_as_an_error(tmp_path):
    args = [
        "validate",
        "--out",
        str(tmp_path / "r"),
        "--quick",
        "--only",
        "V1-sylvester/KSL/exactness",
    ]
    done = run_cli(*args, "--no-figures", "--no-progress", cwd=tmp_path, preexec_fn=full_disk)
    assert done.returncode not in (0, None)
    assert "Traceback" not in done.stderr, done.stderr


# --- finiteness tests read back together ------------------------------------------------------


def test_deferred_finiteness_tests_raise_the_first_failure_when_the_block_ends(deferred_tests):
    torch = pytest.importorskip("torch")
    from lowrank_integrators import _backend as bk
    from lowrank_integrators.errors import NonFiniteError

    good = torch.ones(3, 2, dtype=torch.float64)
    bad = good.clone()
    bad[1, 1] = float("inf")
    reached = []
    with pytest.raises(NonFiniteError, match=r"the second \(shape \(3, 2\)\)"):
        with bk.deferred_finite_checks():
            bk.require_finite(good, "the first")
            bk.require_finite(bad, "the second")
            bk.require_finite(bad * 0, "the third")  # NaN, but after the second
            reached.append(True)  # the block runs on: nothing was read yet
    assert reached == [True]


def test_deferred_finiteness_tests_take_precedence_over_the_error_they_caused(deferred_tests):
    torch = pytest.importorskip("torch")
    from lowrank_integrators import _backend as bk
    from lowrank_integrators.errors import NonFiniteError

    bad = torch.full((2, 2), float("nan"), dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="the input"):
        with bk.deferred_finite_checks():
            bk.require_finite(bad, "the input")
            raise torch.linalg.LinAlgError("no convergence")  # what NaN input may cause
    # with every test passed, the block's own error goes through
    with pytest.raises(ValueError, match="other"):
        with bk.deferred_finite_checks():
            bk.require_finite(torch.ones(2, dtype=torch.float64), "fine")
            raise ValueError("other")


def test_finiteness_tests_outside_a_deferring_block_or_in_host_memory_are_immediate(rng):
    torch = pytest.importorskip("torch")
    from lowrank_integrators import _backend as bk
    from lowrank_integrators.errors import NonFiniteError

    bad = np.array([[np.nan]])
    with pytest.raises(NonFiniteError):
        with bk.deferred_finite_checks():
            bk.require_finite(bad, "a NumPy array")
            pytest.fail("a NumPy array is tested at once")
    with pytest.raises(NonFiniteError):  # a CPU tensor: no device to wait for
        with bk.deferred_finite_checks():
            bk.require_finite(torch.from_numpy(bad), "a tensor in host memory")
            pytest.fail("a tensor in host memory is tested at once")
