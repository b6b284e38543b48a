"""Per-step time and peak memory of the Tucker integrators on a factored tensor Sylvester ODE.

``F(Y) = sum_k Y x_k A_k + C`` with ``A_k = tridiag(1, -2, 1) + W_k`` (``W_k`` skew-symmetric,
dense ``n x n``) and a source ``C`` of multilinear rank 2, started from a random Tucker tensor
of ranks ``(r, ..., r)``. For each integrator the script reports

* the median wall time of one step over ``--repeats`` steps (after one warm-up step),
* the mean CPU time (``time.process_time``) of those steps: at small sizes (``--n 12
  --rank 4``) nearly all of it is Python overhead, so take many repeats there,
* the peak of NumPy/Python allocations during one step (``tracemalloc``),
* the process's maximum resident set size (``ru_maxrss``) after all steps,

and compares the peak with the size of one dense ``n^d`` array. As a control it measures the
``tracemalloc`` peak of densifying the state once (``Y.to_dense()``), which must reach that
size. The exit status is 1 if any integrator step allocated as much as a dense tensor (checked
when the dense tensor has at least 1 MiB).

Run with one BLAS thread, e.g.::

    OPENBLAS_NUM_THREADS=1 python benchmarks/tucker_step_cost.py --n 200 --d 3 --rank 10
    OPENBLAS_NUM_THREADS=1 python benchmarks/tucker_step_cost.py --n 12 --rank 4 --repeats 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

import lowrank_integrators as lri

#: Below this size of a dense tensor the memory comparison says nothing.
_MEMORY_CHECK_MIN_BYTES = 2**20


def build_problem(n: int, d: int, rank: int, seed: int):
    rng = np.random.default_rng(seed)
    lap = np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    operators = []
    for _ in range(d):
        R = rng.standard_normal((n, n)) / np.sqrt(n)
        operators.append(lap + (R - R.T) / 2)
    C = lri.TuckerTensor(
        rng.standard_normal((2,) * d),
        [np.linalg.qr(rng.standard_normal((n, 2)))[0] for _ in range(d)],
    )
    Y0 = lri.TuckerTensor(
        rng.standard_normal((rank,) * d) / rank ** (d / 2),
        [np.linalg.qr(rng.standard_normal((n, rank)))[0] for _ in range(d)],
    )
    return lri.TensorSylvesterODE(operators, C=C), Y0


def measure(method, problem, Y0, h: float, repeats: int) -> dict:
    state = method.init(problem, Y0, 0.0)
    state, _ = method.step(problem, state, 0.0, h)  # warm-up
    times = []
    cpu_start = time.process_time()
    for k in range(repeats):
        t = (k + 1) * h
        start = time.perf_counter()
        state, info = method.step(problem, state, t, h)
        times.append(time.perf_counter() - start)
    cpu_per_step = (time.process_time() - cpu_start) / repeats
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    state, info = method.step(problem, state, (repeats + 1) * h, h)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "method": repr(method),
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "cpu_per_step_s": cpu_per_step,
        "tracemalloc_peak_bytes": peak - base,
        "ranks_after": list(state.Y.ranks),
        "n_f_per_step": info.n_f,
        "n_qr_per_step": info.n_qr,
        "n_svd_per_step": info.n_svd,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="size per mode")
    parser.add_argument("--d", type=int, default=3, help="order of the tensor")
    parser.add_argument("--rank", type=int, default=10, help="multilinear rank per mode")
    parser.add_argument("--h", type=float, default=0.01, help="step size")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON to this file")
    args = parser.parse_args(argv)

    problem, Y0 = build_problem(args.n, args.d, args.rank, args.seed)
    dense_bytes = args.n**args.d * np.dtype(np.float64).itemsize
    methods = [
        lri.TuckerProjectorSplitting(),
        lri.TuckerBUG(),
        lri.TuckerBUG(lri.FixedRank(args.rank)),
        lri.TuckerBUG(lri.Tolerance(1e-6, relative=True)),
    ]
    # One step of every method first, so that the libraries' one-off buffers (BLAS, LAPACK)
    # are in place before the resident-set baseline is taken.
    for m in methods:
        m.step(problem, m.init(problem, Y0, 0.0), 0.0, args.h)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = [measure(m, problem, Y0, args.h, args.repeats) for m in methods]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Control: densifying the state once must show up at the size of a dense tensor.
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    dense = Y0.to_dense()
    _, control_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del dense

    report = {
        "problem": f"TensorSylvesterODE n={args.n} d={args.d} ranks={(args.rank,) * args.d}",
        "substep": "RK4(steps=1)",
        "h": args.h,
        "repeats": args.repeats,
        "dense_tensor_bytes": dense_bytes,
        "control_to_dense_tracemalloc_peak_bytes": control_peak - base,
        # ru_maxrss is in KiB on Linux.
        "ru_maxrss_kib_before_steps": rss_before,
        "ru_maxrss_kib_after_steps": rss_after,
        "results": results,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    print(f"{report['problem']}, one dense tensor = {dense_bytes / 2**20:.1f} MiB")
    control_mib = report["control_to_dense_tracemalloc_peak_bytes"] / 2**20
    print(f"control: Y.to_dense() peak = {control_mib:.1f} MiB")
    for r in results:
        print(
            f"{r['method']}: median step {1e3 * r['median_step_s']:.3f} ms, "
            f"CPU {1e3 * r['cpu_per_step_s']:.3f} ms/step, "
            f"tracemalloc peak {r['tracemalloc_peak_bytes'] / 2**20:.2f} MiB, "
            f"ranks {tuple(r['ranks_after'])}"
        )
    print(
        f"ru_maxrss: {rss_before / 1024:.1f} MiB before the steps, {rss_after / 1024:.1f} MiB after"
    )
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)
    worst = max(r["tracemalloc_peak_bytes"] for r in results)
    if dense_bytes < _MEMORY_CHECK_MIN_BYTES:
        # A step's small work arrays and Python objects outweigh a tiny dense tensor.
        print("memory check skipped: the dense tensor is below 1 MiB")
    elif worst >= dense_bytes:
        print("FAILED: a step allocated as much as a dense tensor")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
