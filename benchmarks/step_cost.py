"""Per-step time and peak memory of the matrix integrators on a large structured problem.

Problem: ``F(Y) = A Y + Y B^T + C`` with sparse ``A = B = tridiag(1, -2, 1)`` (n x n) and a
rank-4 non-symmetric ``C`` kept factored, RK4 substeps (one internal step), rank r.
Beside the library's integrators, the same run times a minimal hand-written NumPy BUG step
on the same structured F (the K-, L- and S-fields with their r x r coefficients formed once
per substep), so the library's overhead is measured side by side, not against a number from
another day.

Two hand-written rows: "minimal-BUG" with ``numpy.linalg.qr`` and "minimal-BUG-sqr" with the
QR the library uses for NumPy arrays (SciPy's, on a Fortran-ordered copy); "vs minimal" is the
ratio to the first, "vs best" to the faster of the two.

Every (n, r) runs in a fresh worker process. Time: median over repeated steps from the same
state. Memory: the process's peak resident set during one step (the kernel's high-water mark
is reset right before the step), which includes LAPACK work arrays that Python's tracemalloc
does not see, together with the interpreter, the operators and the state; "step adds" is that
peak minus the resident set right before the step, and "state MB" the size of U, S, V.
"step adds" is exact only for arrays that the C library maps and unmaps on their own (above
its mmap threshold, 32 MB by default): smaller freed arrays stay in the process's heap and
are counted in the resident set before the step. "traced MB" is the peak of the memory
allocated during one more step as Python's tracemalloc sees it (NumPy and SciPy arrays,
LAPACK work arrays included), at every size.

Usage::

    python benchmarks/step_cost.py                  # n in {1024, 4096, 65536, 2^20}, r in {8, 32}
    python benchmarks/step_cost.py --quick          # n in {1024, 4096}, r in {8, 32}
    python benchmarks/step_cost.py --n 1048576 --r 16 32 --json out.json

BLAS threads: ``--threads N`` (default 1) is exported as OPENBLAS/OMP/MKL_NUM_THREADS before
NumPy is imported in the workers; on small 2-core machines one thread is faster for the
small factorisations these steps are made of.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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
    """The library integrators benchmarked, by name (methods missing here are skipped)."""
    methods = {
        "KSL": lri.ProjectorSplitting(order=1),
        "Strang": lri.ProjectorSplitting(order=2),
        "BUG": lri.BUG(),
        "AugmentedBUG": lri.AugmentedBUG(truncation=lri.FixedRank(r)),
    }
    optional = {
        "ParallelBUG": lambda: lri.ParallelBUG(truncation=lri.FixedRank(r), reject=False),
        "MidpointBUG": lambda: lri.MidpointBUG(truncation=lri.FixedRank(r)),
        "abc-PSI": lambda: lri.AugmentedBackwardCorrectedPSI(truncation=lri.FixedRank(r)),
    }
    for name, make in optional.items():
        try:
            methods[name] = make()
        except AttributeError:
            pass
    return methods


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


def _read_status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(n, r, repeats, methods_wanted, dtype="float64"):
    import numpy as np
    import scipy.sparse as sp

    import lowrank_integrators as lri

    rng = np.random.default_rng(0)
    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr", dtype=dtype)
    Uc = np.linalg.qr(rng.standard_normal((n, 4)))[0].astype(dtype)
    Vc = np.linalg.qr(rng.standard_normal((n, 4)))[0].astype(dtype)
    Sc = rng.standard_normal((4, 4)).astype(dtype)  # non-symmetric core: C is not symmetric
    C = lri.LowRankMatrix(Uc, Sc, Vc, check=False)
    problem = lri.SylvesterODE(T, T, C)
    U0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    V0 = np.linalg.qr(rng.standard_normal((n, r)))[0].astype(dtype)
    S0 = np.diag(2.0 ** -np.arange(r)).astype(dtype)
    Y0 = lri.LowRankMatrix(U0, S0, V0)
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
    for name, method in build_methods(lri, r).items():
        state = method.init(problem, Y0, 0.0)
        runners[name] = lambda method=method, state=state: method.step(problem, state, 0.0, h)

    results = []
    for name in [m for m in METHOD_NAMES if m in runners and m in methods_wanted]:
        run = runners[name]
        run()  # warm-up (also checks that it runs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        hwm = before = float("nan")
        if _reset_hwm():
            before = _read_status_mb("VmRSS")
            run()
            hwm = _read_status_mb("VmHWM")
        gc.collect()
        tracemalloc.start()
        run()
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        results.append(
            {
                "n": n,
                "r": r,
                "method": name,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "repeats": repeats,
                "peak_rss_mb": hwm,
                "rss_before_mb": before,
                "traced_peak_mb": traced,
                "state_mb": state_mb,
            }
        )
    print(json.dumps(results))


# --- driver ---------------------------------------------------------------------------------


def repeats_for(n):
    return 15 if n <= 4096 else (5 if n <= 65536 else 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {1024, 4096} only")
    parser.add_argument("--n", type=int, nargs="+", help="problem sizes")
    parser.add_argument("--r", type=int, nargs="+", help="ranks")
    parser.add_argument("--methods", nargs="+", default=METHOD_NAMES, choices=METHOD_NAMES)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads in the workers")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        n, r, repeats = args.worker
        worker(n, r, repeats, set(args.methods), args.dtype)
        return 0

    sizes = args.n or ([1024, 4096] if args.quick else [1024, 4096, 65536, 2**20])
    ranks = args.r or [8, 32]
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)

    rows = []
    print(
        f"# step_cost: F = A Y + Y B^T + C, tridiagonal A = B, rank-4 C, RK4 substeps, "
        f"{args.dtype}, {args.threads} BLAS thread(s)"
    )
    header = (
        f"{'n':>8} {'r':>3} {'method':>15} {'median ms':>10} {'vs minimal':>10} {'vs best':>9} "
        f"{'peak RSS MB':>11} {'step adds MB':>12} {'traced MB':>9} {'state MB':>9}"
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
                "--methods",
                *args.methods,
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{n:>8} {r:>3} worker failed:\n{out.stderr}", file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            base = next((x["median_s"] for x in res if x["method"] == "minimal-BUG"), None)
            hand = [x["median_s"] for x in res if x["method"].startswith("minimal")]
            best = min(hand) if hand else None
            for x in res:
                x["ratio_to_minimal"] = x["median_s"] / base if base else None
                x["ratio_to_best_hand"] = x["median_s"] / best if best else None
                ratio = f"{x['ratio_to_minimal']:.2f}" if base else "-"
                ratio_best = f"{x['ratio_to_best_hand']:.2f}" if best else "-"
                print(
                    f"{n:>8} {r:>3} {x['method']:>15} {1e3 * x['median_s']:>10.2f} "
                    f"{ratio:>10} {ratio_best:>9} {x['peak_rss_mb']:>11.0f} "
                    f"{x['peak_rss_mb'] - x['rss_before_mb']:>12.0f} {x['traced_peak_mb']:>9.1f} "
                    f"{x['state_mb']:>9.1f}",
                    flush=True,
                )
            rows.extend(res)

    # time per unknown: linear scaling in n shows as a flat column
    print("\n# time per step / n (ns), by method and r: flat across n means linear in n")
    for r in ranks:
        for name in args.methods:
            pts = [(x["n"], x["median_s"]) for x in rows if x["r"] == r and x["method"] == name]
            if pts:
                cells = " ".join(f"n={n}: {1e9 * t / n:7.1f}" for n, t in pts)
                print(f"r={r:>3} {name:>15}  {cells}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "dtype": args.dtype, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
