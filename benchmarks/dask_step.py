"""Time and memory per step: the library on NumPy factors against Dask factors.

Problem (as in ``benchmarks/step_cost.py``): ``F(Y) = A Y + Y B^T + C`` with sparse
``A = B = tridiag(1, -2, 1)`` (n x n, SciPy CSR) and a rank-4 non-symmetric ``C`` kept factored,
RK4 substeps, rank r, step ``h = 1e-3``. On Dask factors the tridiagonal operators act chunk by
chunk (a halo of one row exchanged between neighbouring chunks, see
:mod:`lowrank_integrators.dask_operators`); ``U``, ``V`` and the factors of ``C`` are row-chunked
Dask arrays made on the workers, the core ``S`` is a NumPy array.

Three ways to run a step, each (n, way) in a fresh process:

* ``numpy``: the library on NumPy factors (under its default BLAS thread limit, one thread);
* ``threads``: Dask factors on the local threaded scheduler with two threads (one BLAS thread
  each), all in one process;
* ``cluster``: Dask factors on a ``dask.distributed`` ``LocalCluster`` of two worker processes
  with one thread each; the client only builds graphs and holds ``r x r`` arrays.

Each run calls :func:`lowrank_integrators.solve` for ``--steps`` steps and records, per step,
the wall time and the CPU time (``time.process_time`` of the process, plus that of every worker
process for ``cluster``). The first step includes setting up (the operators' row blocks are cut
and sent once) and is left out of the medians. Memory is the peak resident set
(``ru_maxrss``) of the process and of each worker over the whole run (start values included).

Memory is capped so that a run can never take the machine down: ``--memory-gb`` G is the
address-space limit (``RLIMIT_AS``) of the ``numpy`` and ``threads`` processes and of the
``cluster`` client; each of the two cluster workers gets ``memory_limit = G/2`` (it spills to
disk from 60% of it and is ended at 95%). A run that exceeds its cap is reported as failed, with
the error.

The machine this runs on may be shared with other jobs: wall times then carry their noise,
CPU times less so. Compare the rows of one run, not runs of different days.

Usage::

    python benchmarks/dask_step.py --quick                  # n = 2^16, r = 8, BUG, < 1 min
    python benchmarks/dask_step.py --n 1048576 --json benchmarks/results/dask_step_2p20.json
    python benchmarks/dask_step.py --n 16777216 --steps 2 --memory-gb 21 --ways numpy threads
    python benchmarks/dask_step.py --n 8388608 --memory-gb 6 --ways numpy cluster  # spilling
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WAYS = ["numpy", "threads", "cluster"]
METHODS = ["BUG", "AugmentedBUG"]
H = 1e-3
SOURCE_RANK = 4


def chunk_rows(n: int) -> int:
    """Rows per chunk: 2^17 (16 MB at r = 16) and at most 64 chunks."""
    return min(n, max(1 << 17, n // 64))


# --- worker ---------------------------------------------------------------------------------


def _cap_memory(gb: float) -> None:
    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _orthonormal_numpy(np, rng, n, k):
    """An n x k NumPy array with orthonormal columns (CholeskyQR2 in place: one tall array)."""
    X = rng.standard_normal((n, k))
    block = 1 << 16
    for _ in range(2):
        R = np.linalg.cholesky(X.T @ X).T
        Rinv = np.linalg.inv(R)
        for i in range(0, n, block):
            X[i : i + block] = X[i : i + block] @ Rinv
    return X


def _orthonormal_dask(np, da, seed, n, k, chunks):
    """The same on Dask, made chunk by chunk on the workers and persisted."""
    X = da.random.default_rng(seed).standard_normal((n, k), chunks=(chunks, k))
    for _ in range(2):
        R = np.linalg.cholesky((X.T @ X).compute()).T
        X = X @ np.linalg.inv(R)
    return X.persist()


def _build(way, n, r, lri):
    import numpy as np
    import scipy.sparse as sp

    T = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr")
    rng = np.random.default_rng(0)
    Sc = rng.standard_normal((SOURCE_RANK, SOURCE_RANK))  # non-symmetric: C is not symmetric
    S0 = np.diag(2.0 ** -np.arange(r))
    if way == "numpy":
        Uc, Vc = (_orthonormal_numpy(np, rng, n, SOURCE_RANK) for _ in range(2))
        U0, V0 = (_orthonormal_numpy(np, rng, n, r) for _ in range(2))
    else:
        import dask.array as da

        c = chunk_rows(n)
        Uc, Vc = (_orthonormal_dask(np, da, s, n, SOURCE_RANK, c) for s in (1, 2))
        U0, V0 = (_orthonormal_dask(np, da, s, n, r, c) for s in (3, 4))
    C = lri.LowRankMatrix(Uc, Sc, Vc, check=False)
    return lri.SylvesterODE(T, T, C), lri.LowRankMatrix(U0, S0, V0, check=False)


def _method(lri, name, r):
    return lri.BUG() if name == "BUG" else lri.AugmentedBUG(truncation=lri.FixedRank(r))


def worker(way, n, r, steps, methods, memory_gb):
    """One (way, n): every method for ``steps`` steps; prints one JSON line."""
    _cap_memory(memory_gb)
    import lowrank_integrators as lri

    client = cluster = None
    if way == "threads":
        import dask

        dask.config.set(scheduler="threads", num_workers=2)
    elif way == "cluster":
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=f"{memory_gb / 2:.3f}GiB",
            dashboard_address=None,
        )
        client = Client(cluster)

    def cpu_now():
        cpu = time.process_time()
        if client is not None:
            cpu += sum(client.run(time.process_time).values())
        return cpu

    records = []
    try:
        problem, Y0 = _build(way, n, r, lri)
        for name in methods:
            stamps = [(time.perf_counter(), cpu_now())]

            def after_step(t, Y, info, stamps=stamps):
                stamps.append((time.perf_counter(), cpu_now()))

            sol = lri.solve(
                problem, Y0, (0.0, steps * H), H, _method(lri, name, r), callback=after_step
            )
            if sol.status != "success":
                raise RuntimeError(sol.message)
            wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
            cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
            timed = slice(1, None) if len(wall) > 1 else slice(None)
            records.append(
                {
                    "method": name,
                    "wall_s": statistics.median(wall[timed]),
                    "cpu_s": statistics.median(cpu[timed]),
                    "first_wall_s": wall[0],
                    "steps": len(wall),
                    "wall_per_step_s": wall,
                    "cpu_per_step_s": cpu,
                }
            )
        error = None
    except BaseException as exc:  # a capped run reports what stopped it
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    memory = {"process_peak_rss_mb": _peak_rss_mb()}
    if client is not None:
        try:
            peaks = client.run(_peak_rss_mb)
            memory["worker_peak_rss_mb"] = sorted(peaks.values())
        except Exception as exc:
            memory["worker_peak_rss_mb"] = f"unavailable ({type(exc).__name__})"
        client.close()
        cluster.close()
    print(json.dumps({"way": way, "n": n, "r": r, "records": records, "error": error, **memory}))


# --- driver ---------------------------------------------------------------------------------


def run_one(way, n, r, steps, methods, memory_gb, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, str(n), str(r)]
    cmd += ["--steps", str(steps), "--memory-gb", str(memory_gb), "--methods", *methods]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"way": way, "n": n, "r": r, "records": [], "error": f"timeout after {timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (out.stderr or "").strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
    return {"way": way, "n": n, "r": r, "records": [], "error": tail[0][:300]}


def steps_for(n):
    return 5 if n <= 1 << 20 else (3 if n <= 1 << 22 else 2)


def print_table(results, methods):
    print(
        f"{'n':>10} {'r':>3} {'method':>13} {'way':>8} {'wall s':>8} {'cpu s':>8} "
        f"{'first s':>8} {'vs numpy':>8}  peak RSS MB (process; workers)"
    )
    numpy_wall = {
        (res["n"], rec["method"]): rec["wall_s"]
        for res in results
        if res["way"] == "numpy"
        for rec in res["records"]
    }
    for res in results:
        workers = res.get("worker_peak_rss_mb")
        mem = f"{res['process_peak_rss_mb']:.0f}"
        if isinstance(workers, list):
            mem += "; " + ", ".join(f"{w:.0f}" for w in workers)
        if res["error"] and not res["records"]:
            print(f"{res['n']:>10} {res['r']:>3} {'-':>13} {res['way']:>8}  FAILED: {res['error']}")
            continue
        for rec in res["records"]:
            ref = numpy_wall.get((res["n"], rec["method"]))
            ratio = f"{rec['wall_s'] / ref:8.2f}" if ref else f"{'-':>8}"
            print(
                f"{res['n']:>10} {res['r']:>3} {rec['method']:>13} {res['way']:>8} "
                f"{rec['wall_s']:8.2f} {rec['cpu_s']:8.2f} {rec['first_wall_s']:8.2f} "
                f"{ratio}  {mem}"
            )
        if res["error"]:
            print(f"{'':>10} {'':>3} {'':>13} {res['way']:>8}  then FAILED: {res['error']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 2^16, r = 8, BUG, 3 steps")
    parser.add_argument("--n", type=int, nargs="+", default=[1 << 20, 1 << 22, 1 << 24])
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--ways", nargs="+", default=WAYS, choices=WAYS)
    parser.add_argument("--steps", type=int, help="steps per run (default: 5, 3, 2 by size)")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="memory cap of a run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        way, n, r = args.worker
        worker(way, int(n), int(r), args.steps, args.methods, args.memory_gb)
        return 0
    if args.quick:
        args.n, args.r, args.methods, args.steps = [1 << 16], 8, ["BUG"], 3

    results = []
    for n in args.n:
        for way in args.ways:
            steps = args.steps or steps_for(n)
            res = run_one(way, n, args.r, steps, args.methods, args.memory_gb, args.timeout)
            res["memory_cap_gb"] = args.memory_gb
            results.append(res)
            print(f"# done: n = {n}, {way}", file=sys.stderr, flush=True)
    print(
        f"# r = {args.r}, h = {H}, RK4 substeps; medians over steps 2.. of each run; "
        f"memory cap {args.memory_gb} GB per run (cluster: 2 workers of {args.memory_gb / 2} GB)"
    )
    print_table(results, args.methods)
    if args.json:
        meta = {"cpu_count": os.cpu_count(), "argv": sys.argv[1:], "results": results}
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
