"""Per-step time and peak memory of the matrix integrators on a large structured problem.

Problem: ``F(Y) = A Y + Y B^T + C`` with sparse ``A = B = tridiag(1, -2, 1)`` (n x n) and a
rank-4 non-symmetric ``C`` kept factored, RK4 substeps (one internal step), rank r. The start
``Y0 = U0 S0 V0^T`` has random orthonormal ``U0``, ``V0`` and a diagonal core with
``sigma_i = eps^(i / 52)``, ``eps`` the machine epsilon of the dtype: ``2^-i`` in float64, and
in float32 the same fraction of the precision's range per index (``2^(-23 i / 52)``, down to
``7.5e-5`` at ``r = 32``). A float32 run with the float64 core would time another problem:
``2^-31`` lies below float32's epsilon (``2^-23``), a rank-32 state is then numerically of rank
about 24, and every QR of its factors is that of a rank-deficient matrix, which the robust QR
hands to Householder; with the scaled core the QRs take the same routes as in float64.
Beside the library's integrators, the same run times a minimal hand-written NumPy BUG step
on the same structured F (the K-, L- and S-fields with their r x r coefficients formed once
per substep), so the library's overhead is measured side by side, not against a number from
another day.

Two hand-written rows: "minimal-BUG" with ``numpy.linalg.qr`` and "minimal-BUG-sqr" with SciPy's
Householder QR on a Fortran-ordered copy (the library itself uses CholeskyQR2 with robust
fallbacks); "vs minimal" is the ratio to the first, "vs best" to the faster of the two.

Floor model: at start the driver measures, under the same BLAS thread limit, the GEMM rate
(1024^3), thin-GEMM rates (65536 x r times r x r) and the memory bandwidth (``a = b + c`` on
128 MB arrays). For each method it counts the essential work of one step phase by phase (see
``floor_model``: the thin products' flops, the bytes of each tall array read or written once
per phase, the CSR arrays once per operator product; QRs as CholeskyQR2) and prints
``floor ms`` (the sum over phases of max(flops / GEMM rate, bytes / bandwidth)) and
``x floor`` = median / floor. ``--phases`` prints each method's phases and the route every QR
of its step took (``qr_routes`` in the JSON): the floor counts CholeskyQR2, and where the new
columns are nearly dependent the QR takes the shifted Cholesky passes or Householder.

The RK4 stages are counted in the classical arrangement (per stage: read the stage, the start,
the source factor and the accumulator, write the accumulator and the next stage). On this
problem, whose substep fields are affine and autonomous, the library evaluates RK4 in nested
form (``RK4.affine_stages``: the start formed once, then per stage read the stage, the start
and the source factor and write the next stage), which moves fewer bytes than that model
charges. ``x nested`` is the ratio to the floor with the stages counted in the nested
arrangement: the stricter of the two figures.

The rates of a shared machine drift (by tens of percent within minutes), and a floor from
rates measured at start then tracks the machine of another moment. Each worker therefore
measures the rates again right before each method's warm-up and after its measured steps;
``x adj`` is the median time over the floor at the mean of those two measurements (JSON:
``adjacent_rates``, ``adjacent_floor_s``, ``ratio_to_adjacent_floor``). ``x floor`` keeps the
rates measured at start.

Time is CPU time (``time.process_time``) with the BLAS pools limited by threadpoolctl to
``--threads`` (default 1). "sys ms" is the part of it spent in the kernel (median..max over
the timed steps): mostly the zeroing of fresh pages for new tall arrays, which the C library
maps from the kernel above its mmap threshold (32 MB) and returns when they are freed. The
header names what decides how these pages arrive, as the run saw it (JSON: ``memory``): the
kernel's transparent huge page mode, ``NUMPY_MADVISE_HUGEPAGE`` (whether NumPy advises huge
pages for its large arrays; unset means NumPy's default, advised on Linux 4.6 and later) and
glibc's ``MALLOC_*`` variables.

Every (n, r) runs in a fresh worker process. Time: median over repeated steps from the same
state. Memory: the process's peak resident set during one step (the kernel's high-water mark
is reset right before the step), which includes LAPACK work arrays that Python's tracemalloc
does not see, together with the interpreter, the operators, the state and what the heap keeps
of the rate measurement before the method (``x adj``, above); "step adds" is that
peak minus the resident set right before the step, and "state MB" the size of U, S, V.
"step adds" is exact only for arrays that the C library maps and unmaps on their own (above
its mmap threshold, 32 MB by default): smaller freed arrays stay in the process's heap and
are counted in the resident set before the step. "kept MB" is what the method keeps between
steps (BUG and the projector splittings: two tall work arrays for their substeps, see
``lowrank_integrators.substeps.Workspace``; MidpointBUG: one ``n x 4r`` array for its
``U_hat``, see ``KeptStorage`` in ``lowrank_integrators.integrators.augmentation``): resident
before the step and reused in it, so
that a step's memory is "step adds" plus "kept"; each method is released (with what it
keeps) before the next one runs. "traced MB" is the peak of the memory
allocated during one more step as Python's tracemalloc sees it (NumPy and SciPy arrays,
LAPACK work arrays included), at every size.

Usage::

    python benchmarks/step_cost.py                  # n in {1024, 4096, 65536, 2^20}, r in {8, 32}
    python benchmarks/step_cost.py --quick          # n in {1024, 4096}, r in {8, 32}
    python benchmarks/step_cost.py --n 1048576 --r 16 32 --json out.json
    python benchmarks/step_cost.py --dtype float32 --n 4096 65536 --r 32

With three or more sizes the script also fits the exponent ``p`` of ``time ~ n^p`` per method.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

METHOD_NAMES = [
    "minimal-BUG",
    "minimal-BUG-sqr",
    "KSL",
    "Strang",
    "BUG",
    "AugmentedBUG",
    "ParallelBUG",
    "MidpointBUG",
    "abc-PSI",
]


def build_methods(lri, r):
    """The library integrators benchmarked, by name."""
    return {
        "KSL": lri.ProjectorSplitting(order=1),
        "Strang": lri.ProjectorSplitting(order=2),
        "BUG": lri.BUG(),
        "AugmentedBUG": lri.AugmentedBUG(truncation=lri.FixedRank(r)),
        "ParallelBUG": lri.ParallelBUG(truncation=lri.FixedRank(r), reject=False),
        "MidpointBUG": lri.MidpointBUG(truncation=lri.FixedRank(r)),
        "abc-PSI": lri.AugmentedBackwardCorrectedPSI(truncation=lri.FixedRank(r)),
    }


# --- floor model -----------------------------------------------------------------------------
#
# What a step must do at the least, phase by phase, counted for this problem: the dense flops
# of its thin products (n x w times w x w and the Gram matrices) and the bytes it must move
# (each tall array read or written once per phase, the operator's CSR arrays once per
# product). A phase cannot take less than max(flops / DGEMM peak, bytes / bandwidth); the
# floor of a step is the sum over its phases. The operator products and the elementwise RK4
# updates are counted in bytes only (a few flops per byte moved). The QRs are counted as
# CholeskyQR2 (two passes of Gram matrix plus triangular product, n w^2 flops each: both
# factors are triangular or symmetric), the cheapest factorisation
# that stays orthonormal for the conditioning these bases have; M = U1^H U0 is taken as formed
# in the QR's last pass (only U0 read). Rates are measured on the machine at start, and
# again beside each method in its worker (``x adj``).

NNZ_PER_ROW = 3  # tridiagonal A = B
SOURCE_RANK = 4


class Phase:
    """Essential work of one phase of a step: GEMM flops and bytes moved."""

    def __init__(self, name, flops, nbytes):
        self.name, self.flops, self.bytes = name, float(flops), float(nbytes)

    def seconds(self, rates):
        return max(self.flops / rates["dgemm"], self.bytes / rates["bandwidth"])


class StepModel:
    """Counts of the phases of one step for ``n`` rows, items of ``s`` bytes, rank ``r``."""

    def __init__(self, n, s, nested=False):
        self.n, self.s = n, s
        #: RK4 stages in nested form (affine autonomous fields) instead of the classical one
        self.nested = nested
        # CSR: values, column indices (int32) and row pointers of one operator
        self.op_bytes = n * NNZ_PER_ROW * (s + 4) + 4 * (n + 1)
        self.phases = []

    def add(self, name, flops, nbytes):
        self.phases.append(Phase(name, flops, nbytes))

    def sandwich(self, w, name="sandwich"):
        # W^H (A W): the operator once over W, the products accumulated while W is read
        self.add(name, 2 * self.n * w * w, self.s * self.n * w + self.op_bytes)

    def substep(self, w, name):
        """A K- or L-substep of width w with its r x r coefficients and four RK4 stages."""
        n, s, q = self.n, self.s, SOURCE_RANK
        self.sandwich(w, name + " coefficients")
        self.add(name + " source", 2 * n * q * w, s * n * q)
        per_stage_flops = 2 * n * w * w + 2 * n * q * w
        if self.nested:
            # the start U0 S0 formed once; per stage: read the stage, the start and the source
            # factor, write the next stage; one operator pass
            self.add(name + " start", 2 * n * w * w, 2 * s * n * w)
            per_stage_bytes = s * n * (3 * w + q) + self.op_bytes
        else:
            # per stage: read the stage, the start, the source factor and the accumulator,
            # write the accumulator and the next stage; one operator pass
            per_stage_bytes = s * n * (5 * w + q) + self.op_bytes
        self.add(name + " RK4 stages", 4 * per_stage_flops, 4 * per_stage_bytes)

    def qr(self, w, name="QR"):
        # two passes of a Gram matrix (symmetric: n w^2 flops) and a triangular product
        # (n w^2 flops), each reading the array twice and writing it once
        n, s = self.n, self.s
        self.add(name, 2 * (n * w * w + n * w * w), 2 * 3 * s * n * w)

    def inner(self, w1, w2, name="M"):
        self.add(name, 2 * self.n * w1 * w2, self.s * self.n * w2)

    def galerkin(self, wu, wv, name="S-step"):
        n, s, q = self.n, self.s, SOURCE_RANK
        self.add(
            name,
            2 * n * (wu * wu + wv * wv) + 2 * n * q * (wu + wv),
            s * n * (wu + wv + 2 * q) + 2 * self.op_bytes,
        )

    def field_product(self, w, name):
        """F(Y) V for Y of rank w and V of width w (or F^H U): operator, sandwich, source."""
        n, s, q = self.n, self.s, SOURCE_RANK
        self.add(
            name,
            2 * n * w * w * 3 + 2 * n * q * w,
            s * n * (4 * w + q) + 2 * self.op_bytes,
        )

    def truncate(self, w_from, w_to):
        n, s = self.n, self.s
        for side in ("U", "V"):
            self.add(f"{side}1 = {side}_hat P", 2 * n * w_from * w_to, s * n * (w_from + w_to))

    def seconds(self, rates):
        return sum(p.seconds(rates) for p in self.phases)


def floor_model(method, n, r, itemsize, nested=False):
    """The :class:`StepModel` of one step of ``method`` (a name of METHOD_NAMES); ``nested``:
    RK4 stages counted in nested form."""
    m = StepModel(n, itemsize, nested)
    if method in ("BUG", "minimal-BUG", "minimal-BUG-sqr"):
        m.substep(r, "K")
        m.qr(r)
        m.inner(r, r)
        m.substep(r, "L")
        m.qr(r)
        m.inner(r, r)
        m.galerkin(r, r)
    elif method == "KSL":
        m.substep(r, "K")
        m.qr(r)
        m.galerkin(r, r, "backward S")
        m.substep(r, "L")
        m.qr(r)
    elif method == "Strang":
        for name in ("K", "S", "L", "S", "K"):
            if name == "S":
                m.galerkin(r, r, "backward S")
            else:
                m.substep(r, name)
                m.qr(r)
    elif method in ("AugmentedBUG", "ParallelBUG"):
        for side in ("K", "L"):
            m.substep(r, side)
            m.qr(2 * r)
            m.inner(2 * r, r) if method == "AugmentedBUG" else m.inner(r, r)
        m.galerkin(2 * r, 2 * r) if method == "AugmentedBUG" else m.galerkin(r, r)
        m.truncate(2 * r, r)
    elif method == "MidpointBUG":
        for side in ("K", "L"):
            m.substep(r, side)
            m.qr(2 * r)
            m.inner(2 * r, r)
        m.galerkin(2 * r, 2 * r, "half-step S")
        m.field_product(2 * r, "F V_half")
        m.field_product(2 * r, "F^H U_half")
        for _ in range(2):
            m.qr(4 * r, "QR 4r")
            m.inner(4 * r, r)
        m.galerkin(4 * r, 4 * r)
        m.truncate(4 * r, r)
    elif method == "abc-PSI":
        m.substep(r, "K")
        m.qr(2 * r)
        m.inner(2 * r, r)
        m.substep(2 * r, "L (2r basis)")
        m.qr(2 * r)
        m.truncate(2 * r, r)
    else:
        raise ValueError(f"no floor model for {method!r}")
    return m


def measure_rates(np, dtype, repeats=5):
    """DGEMM (or SGEMM) peak, thin-GEMM rates and memory bandwidth, in CPU time."""

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return max(min(times), 1e-9)

    rng = np.random.default_rng(1)
    a = rng.standard_normal((1024, 1024)).astype(dtype)
    b = rng.standard_normal((1024, 1024)).astype(dtype)
    dgemm = 2 * 1024**3 / best(lambda: a @ b)
    thin = {}
    rows = 1 << 16
    for w in (8, 16, 32, 64):
        x = rng.standard_normal((rows, w)).astype(dtype)
        y = rng.standard_normal((w, w)).astype(dtype)
        thin[w] = 2 * rows * w * w / best(lambda x=x, y=y: x @ y)
    big = 1 << 24  # three arrays of 128 MB (float64): far beyond the caches
    u = np.ones(big, dtype)
    v = np.ones(big, dtype)
    out = np.empty(big, dtype)
    bandwidth = 3 * u.nbytes / best(lambda: np.add(u, v, out=out))
    return {"dgemm": dgemm, "thin": thin, "bandwidth": bandwidth}


# --- worker ---------------------------------------------------------------------------------


def _rk4(f, X, h):
    k1 = f(X)
    k2 = f(X + 0.5 * h * k1)
    k3 = f(X + 0.5 * h * k2)
    k4 = f(X + h * k3)
    return X + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def minimal_bug_step(np, A, B, C, U0, S0, V0, h, qr=None):
    """The fixed-rank BUG step written out by hand for F = A Y + Y B^T + Uc Sc Vc^T (real).

    ``qr`` defaults to ``numpy.linalg.qr``; the "minimal-BUG-sqr" row passes SciPy's QR on a
    Fortran-ordered copy, the factorisation the library uses for NumPy arrays, so that the
    library's overhead is also measured against the best hand-written step.
    """
    qr = np.linalg.qr if qr is None else qr
    Uc, Sc, Vc = C
    Bv = V0.T @ (B.T @ V0)
    Cv = Uc @ (Sc @ (Vc.T @ V0))
    K1 = _rk4(lambda K: A @ K + K @ Bv + Cv, U0 @ S0, h)
    U1 = qr(K1)[0]

    Au = U0.T @ (A.T @ U0)
    Cu = Vc @ (Sc.T @ (Uc.T @ U0))
    L1 = _rk4(lambda L: L @ Au + B @ L + Cu, V0 @ S0.T, h)
    V1 = qr(L1)[0]

    A1 = U1.T @ (A @ U1)
    B1 = V1.T @ (B.T @ V1)
    C1 = (U1.T @ Uc) @ Sc @ (Vc.T @ V1)
    S1 = _rk4(lambda S: A1 @ S + S @ B1 + C1, (U1.T @ U0) @ S0 @ (V0.T @ V1), h)
    return U1, S1, V1


def core_singular_values(np, r, dtype):
    """``eps^(i / 52)`` for ``i < r`` (``2^-i`` in float64; see the module docstring)."""
    eps = np.finfo(dtype).eps
    return (eps ** (np.arange(r) / 52.0)).astype(dtype)


def _read_status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_settings():
    """What decides how fresh tall arrays arrive, as this run saw it (printed and in the JSON).

    ``thp``: the kernel's transparent huge page mode; ``numpy_madvise_hugepage``: the
    environment variable by which NumPy is told whether to advise huge pages for its large
    arrays (unset: NumPy's default, advised on Linux 4.6 and later); ``malloc``: glibc's
    ``MALLOC_*`` variables that are set (see "Fresh memory at large n" in
    ``docs/performance.md``). The workers inherit them.
    """
    thp = None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            text = fh.read()
        if "[" in text:
            thp = text.split("[", 1)[1].split("]", 1)[0]
    except OSError:
        pass
    return {
        "thp": thp,
        "numpy_madvise_hugepage": os.environ.get("NUMPY_MADVISE_HUGEPAGE"),
        "malloc": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def benchmark_problem(lri, n, r, dtype="float64", seed=0):
    """``(problem, Y0)`` of the benchmark for the package ``lri``: ``F = A Y + Y A^T + C``,
    ``A`` tridiagonal CSR, ``C`` of rank 4 with a non-symmetric core, ``Y0`` of rank ``r``
    with singular values :func:`core_singular_values`."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr", dtype=dtype)
    Uc = np.linalg.qr(rng.standard_normal((n, 4)))[0].astype(dtype)
    Vc = np.linalg.qr(rng.standard_normal((n, 4)))[0].astype(dtype)
    Sc = rng.standard_normal((4, 4)).astype(dtype)  # non-symmetric core: C is not symmetric
    C = lri.LowRankMatrix(Uc, Sc, Vc, check=False)
    U0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    V0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    Y0 = lri.LowRankMatrix(U0, np.diag(core_singular_values(np, r, dtype)), V0)
    return lri.SylvesterODE(T, T, C), Y0


def worker(n, r, repeats, methods_wanted, dtype="float64", threads=1, numba=True):
    import numpy as np
    import scipy.linalg  # noqa: F401 - SciPy's own BLAS (QRs, SVDs): loaded before the limit
    from threadpoolctl import threadpool_limits

    import lowrank_integrators as lri
    from lowrank_integrators import _fused

    # after the imports: a limit reaches only the BLAS libraries loaded by then (the package
    # loads SciPy's when a step first needs it)
    threadpool_limits(threads)
    _fused.use_numba = numba

    problem, Y0 = benchmark_problem(lri, n, r, dtype)
    T, (Uc, Sc, Vc), (U0, S0, V0) = problem.A, tuple(problem.C), tuple(Y0)
    h = 1e-3
    state_mb = (U0.nbytes + V0.nbytes + S0.nbytes) / 2**20

    import scipy.linalg as sla

    def scipy_qr(X):
        return sla.qr(np.array(X, order="F"), mode="economic", overwrite_a=True, check_finite=False)

    factors = (Uc, Sc, Vc)
    runners = {
        "minimal-BUG": lambda: minimal_bug_step(np, T, T, factors, U0, S0, V0, h),
        "minimal-BUG-sqr": lambda: minimal_bug_step(np, T, T, factors, U0, S0, V0, h, scipy_qr),
    }
    methods = build_methods(lri, r)
    for name, method in methods.items():
        state = method.init(problem, Y0, 0.0)
        runners[name] = lambda method=method, state=state: method.step(problem, state, 0.0, h)
    method = state = None

    results = []
    for name in [m for m in METHOD_NAMES if m in runners and m in methods_wanted]:
        run = runners[name]
        # The machine's rates once more, right before the warm-up and after the measured
        # steps: the floor of this method at the speed the machine had while it ran (a shared
        # host drifts by tens of percent within minutes). Before the warm-up, so that the
        # probe's arrays do not change the memory the timed steps find.
        probes = [measure_rates(np, np.dtype(dtype), repeats=3)]
        run()  # warm-up (also checks that it runs)
        times, kernel = [], []
        for _ in range(repeats):
            k0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            t0 = time.process_time()
            run()
            times.append(time.process_time() - t0)
            kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - k0)
        hwm = before = float("nan")
        if _reset_hwm():
            before = _read_status_mb("VmRSS")
            run()
            hwm = _read_status_mb("VmHWM")
        gc.collect()
        tracemalloc.start()
        with _recording_qr_routes() as routes:
            run()
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        probes.append(measure_rates(np, np.dtype(dtype), repeats=3))
        # work arrays the method keeps between steps (resident before each step, so not in
        # "step adds"); the method is then released, with them, before the next one runs
        owned = getattr(methods.get(name), "__dict__", {})
        kept = sum(
            owned[key].nbytes / 2**20 for key in ("_workspace", "_kept_storage") if key in owned
        )
        runners[name] = run = None
        methods.pop(name, None)
        gc.collect()
        results.append(
            {
                "n": n,
                "r": r,
                "method": name,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "median_sys_s": statistics.median(kernel),
                "max_sys_s": max(kernel),
                "repeats": repeats,
                "peak_rss_mb": hwm,
                "rss_before_mb": before,
                "traced_peak_mb": traced,
                "kept_mb": kept,
                "state_mb": state_mb,
                "qr_routes": routes,
                "adjacent_rates": _rates_json(_mean_rates(probes)),
            }
        )
    print(json.dumps(results))


def _mean_rates(probes):
    """The mean of several :func:`measure_rates` results, rate by rate."""
    mean = {k: statistics.fmean(p[k] for p in probes) for k in ("dgemm", "bandwidth")}
    mean["thin"] = {w: statistics.fmean(p["thin"][w] for p in probes) for w in probes[0]["thin"]}
    return mean


def _rates_json(rates):
    """``rates`` with the thin-GEMM widths as strings (JSON object keys)."""
    return {**rates, "thin": {str(k): v for k, v in rates["thin"].items()}}


def _rates_from_json(rates):
    return {**rates, "thin": {int(k): v for k, v in rates["thin"].items()}}


@contextlib.contextmanager
def _recording_qr_routes():
    """The route of every tall QR of the library in the block (``"CholeskyQR2, 64 columns"``):
    what the floor, which counts CholeskyQR2, does not foresee where the data need more."""
    from lowrank_integrators import _qr

    routes: list[str] = []
    factor = _qr._factor

    def recording(x, *args, **kwargs):
        out = factor(x, *args, **kwargs)
        routes.append(f"{out[3]}, {int(x.shape[1])} columns")
        return out

    _qr._factor = recording
    try:
        yield routes
    finally:
        _qr._factor = factor


# --- driver ---------------------------------------------------------------------------------


def repeats_for(n):
    return 15 if n <= 4096 else (5 if n <= 65536 else 3)


def summarize(paths):
    """Median time and ``x floor`` of each (dtype, n, r, method) over the runs in ``paths``."""
    runs = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for x in data["rows"]:
            key = (data["dtype"], x["n"], x["r"], x["method"])
            runs.setdefault(key, []).append(x)
    print(f"# median over runs of: {' '.join(paths)}")
    print(
        f"{'dtype':>8} {'n':>8} {'r':>3} {'method':>15} {'runs':>4} {'median ms':>10} "
        f"{'floor ms':>9} {'x floor':>8} {'x floor min..max':>17} {'x nested':>8} "
        f"{'x adj':>6} {'x adj min..max':>15}"
    )
    for (dtype, n, r, name), xs in sorted(runs.items(), key=lambda kv: kv[0][:3]):
        ratios = [x["ratio_to_floor"] for x in xs]
        # files written before the nested column have none
        nested = [x["ratio_to_nested_floor"] for x in xs if "ratio_to_nested_floor" in x]
        cell = f"{statistics.median(nested):>8.2f}" if nested else f"{'-':>8}"
        # and those written before the adjacent floor none of that
        adjacent = [x["ratio_to_adjacent_floor"] for x in xs if "ratio_to_adjacent_floor" in x]
        cell += (
            f" {statistics.median(adjacent):>6.2f} {min(adjacent):>6.2f}..{max(adjacent):<7.2f}"
            if adjacent
            else f" {'-':>6} {'-':>15}"
        )
        print(
            f"{dtype:>8} {n:>8} {r:>3} {name:>15} {len(xs):>4} "
            f"{1e3 * statistics.median(x['median_s'] for x in xs):>10.2f} "
            f"{1e3 * statistics.median(x['floor_s'] for x in xs):>9.2f} "
            f"{statistics.median(ratios):>8.2f} {min(ratios):>8.2f}..{max(ratios):<8.2f} {cell}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {1024, 4096} only")
    parser.add_argument("--n", type=int, nargs="+", help="problem sizes")
    parser.add_argument("--r", type=int, nargs="+", help="ranks")
    parser.add_argument("--methods", nargs="+", default=METHOD_NAMES, choices=METHOD_NAMES)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads in the workers")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="print the floor model's phases and the route each QR of a step took",
    )
    parser.add_argument(
        "--no-numba", action="store_true", help="the NumPy path even where numba is installed"
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSON",
        help="print the median over runs (JSON files written by --json) of each row and exit",
    )
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.summarize:
        summarize(args.summarize)
        return 0

    if args.worker:
        n, r, repeats = args.worker
        worker(n, r, repeats, set(args.methods), args.dtype, args.threads, not args.no_numba)
        return 0

    import numpy as np
    from threadpoolctl import threadpool_limits

    from lowrank_integrators import _fused

    numba = None
    if _fused.numba_available() and not args.no_numba:
        import numba as numba_module

        numba = numba_module.__version__
    with threadpool_limits(args.threads):
        rates = measure_rates(np, np.dtype(args.dtype))
    itemsize = np.dtype(args.dtype).itemsize

    sizes = args.n or ([1024, 4096] if args.quick else [1024, 4096, 65536, 2**20])
    ranks = args.r or [8, 32]
    rows = []
    print(
        f"# step_cost: F = A Y + Y B^T + C, tridiagonal A = B, rank-4 C, RK4 substeps, "
        f"{args.dtype}, {args.threads} BLAS thread(s), CPU time"
    )
    print(
        f"# numba {numba} (extra 'fast'): compiled stages with their RK4 updates, sandwiches"
        if numba
        else "# without numba: the NumPy path of the fields"
    )
    thin = ", ".join(f"r={w}: {rate / 1e9:.1f}" for w, rate in rates["thin"].items())
    print(
        f"# measured: GEMM 1024^3 {rates['dgemm'] / 1e9:.1f} GF/s; thin 65536 x r times r x r "
        f"GF/s {thin}; bandwidth (a = b + c, 128 MB arrays) {rates['bandwidth'] / 1e9:.1f} GB/s"
    )
    memory = memory_settings()
    advice = memory["numpy_madvise_hugepage"]
    malloc = " ".join(f"{k}={v}" for k, v in memory["malloc"].items()) or "unset"
    print(
        f"# fresh memory: transparent huge pages '{memory['thp']}'; "
        f"NUMPY_MADVISE_HUGEPAGE {'unset' if advice is None else advice}; MALLOC_* {malloc}"
    )
    print(
        "# floor: sum over phases of max(GEMM flops / GEMM rate, bytes / bandwidth); "
        "'x floor' = median / floor"
    )
    header = (
        f"{'n':>8} {'r':>3} {'method':>15} {'median ms':>10} {'floor ms':>9} {'x floor':>8} "
        f"{'x nested':>8} {'x adj':>6} {'vs minimal':>10} {'vs best':>9} "
        f"{'peak RSS MB':>11} {'step adds MB':>12} {'kept MB':>8} {'traced MB':>9} "
        f"{'state MB':>9} {'sys ms':>13}"
    )
    print(header)
    for n in sizes:
        for r in ranks:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                str(n),
                str(r),
                str(repeats_for(n)),
                "--dtype",
                args.dtype,
                "--threads",
                str(args.threads),
                "--methods",
                *args.methods,
                *(["--no-numba"] if args.no_numba else []),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{n:>8} {r:>3} worker failed:\n{out.stderr}", file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            base = next((x["median_s"] for x in res if x["method"] == "minimal-BUG"), None)
            hand = [x["median_s"] for x in res if x["method"].startswith("minimal")]
            best = min(hand) if hand else None
            for x in res:
                model = floor_model(x["method"], n, r, itemsize)
                x["floor_s"] = model.seconds(rates)
                x["ratio_to_floor"] = x["median_s"] / x["floor_s"]
                x["nested_floor_s"] = floor_model(x["method"], n, r, itemsize, True).seconds(rates)
                x["ratio_to_nested_floor"] = x["median_s"] / x["nested_floor_s"]
                x["adjacent_floor_s"] = model.seconds(_rates_from_json(x["adjacent_rates"]))
                x["ratio_to_adjacent_floor"] = x["median_s"] / x["adjacent_floor_s"]
                x["ratio_to_minimal"] = x["median_s"] / base if base else None
                x["ratio_to_best_hand"] = x["median_s"] / best if best else None
                ratio = f"{x['ratio_to_minimal']:.2f}" if base else "-"
                ratio_best = f"{x['ratio_to_best_hand']:.2f}" if best else "-"
                print(
                    f"{n:>8} {r:>3} {x['method']:>15} {1e3 * x['median_s']:>10.2f} "
                    f"{1e3 * x['floor_s']:>9.2f} {x['ratio_to_floor']:>8.2f} "
                    f"{x['ratio_to_nested_floor']:>8.2f} {x['ratio_to_adjacent_floor']:>6.2f} "
                    f"{ratio:>10} {ratio_best:>9} {x['peak_rss_mb']:>11.0f} "
                    f"{x['peak_rss_mb'] - x['rss_before_mb']:>12.0f} {x['kept_mb']:>8.0f} "
                    f"{x['traced_peak_mb']:>9.1f} {x['state_mb']:>9.1f} "
                    f"{1e3 * x['median_sys_s']:>6.1f}..{1e3 * x['max_sys_s']:<5.0f}",
                    flush=True,
                )
                if args.phases and not x["method"].startswith("minimal"):
                    for ph in model.phases:
                        print(
                            f"{'':>13} {ph.name:>24}: {ph.flops / 1e6:9.1f} MF "
                            f"{ph.bytes / 1e6:9.1f} MB -> {1e3 * ph.seconds(rates):7.3f} ms"
                        )
                    print(f"{'':>13} {'QR routes':>24}: {'; '.join(x['qr_routes']) or '-'}")
            rows.extend(res)

    # time per unknown: linear scaling in n shows as a flat column
    print("\n# time per step / n (ns), by method and r: flat across n means linear in n")
    for r in ranks:
        for name in args.methods:
            pts = [(x["n"], x["median_s"]) for x in rows if x["r"] == r and x["method"] == name]
            if pts:
                cells = " ".join(f"n={n}: {1e9 * t / n:7.1f}" for n, t in pts)
                print(f"r={r:>3} {name:>15}  {cells}")
    if len({x["n"] for x in rows}) >= 3:
        print("\n# fitted exponent p of time ~ n^p over the sizes run (1.0 = linear in n)")
        for r in ranks:
            for name in args.methods:
                pts = [(x["n"], x["median_s"]) for x in rows if x["r"] == r and x["method"] == name]
                if len(pts) >= 3:
                    p = np.polyfit(np.log([a for a, _ in pts]), np.log([b for _, b in pts]), 1)[0]
                    print(f"r={r:>3} {name:>15}  p = {p:.3f}")
    if args.json:
        rates_json = _rates_json(rates)
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "command": " ".join(
                        [
                            "python",
                            "benchmarks/step_cost.py",
                            *(sys.argv[1:] if argv is None else argv),
                        ]
                    ),
                    "threads": args.threads,
                    "dtype": args.dtype,
                    "numba": numba,
                    "memory": memory,
                    "rates": rates_json,
                    "rows": rows,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
