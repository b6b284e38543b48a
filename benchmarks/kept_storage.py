"""MidpointBUG steps with and without the arrays it keeps between steps, in alternating processes.

``MidpointBUG`` on NumPy keeps two ``n x 4r`` arrays between its steps and writes ``U_hat``
and ``V_hat`` into them; in the half step they hold its registers and its bases
(``KeptStorage`` in ``lowrank_integrators.integrators.augmentation``), all of which would
otherwise be fresh arrays whose pages the kernel must supply and zero. Whether that saves time
depends on the machine's handling of fresh pages, so it is measured here: each worker process
builds the problem of ``step_cost.py`` (``F = A Y + Y A^T + C``, tridiagonal CSR ``A``, rank-4
``C``, RK4 substeps), runs ``--warm`` steps, then times ``--steps`` steps from the same state,
and reports the median CPU time of a step (``user + sys``), the median kernel time (``sys``)
and its peak resident set. Workers ``kept`` (the library as it is) and ``fresh`` (the same
step with the kept storage switched off) alternate ``--pairs`` times, each in a new process,
so that both meet the same drift of a shared machine; the script prints every pair, the
medians over the pairs and the median of the per-pair differences. One BLAS thread.

Usage::

    python benchmarks/kept_storage.py                    # n = 2^20, r = 16, five pairs
    python benchmarks/kept_storage.py --quick            # n = 2^14, one pair (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(mode: str, n: int, r: int, warm: int, steps: int) -> dict:
    """Time ``steps`` MidpointBUG steps in this process (``mode``: "kept" or "fresh")."""
    from threadpoolctl import threadpool_limits

    import lowrank_integrators as lri
    from lowrank_integrators.integrators import augmentation

    sys.path.insert(0, str(HERE))
    import step_cost

    if mode == "fresh":
        augmentation.KeptStorage.take = classmethod(lambda cls, *args, **kwargs: None)
    threadpool_limits(1)
    problem, Y0 = step_cost.benchmark_problem(lri, n, r)
    method = lri.MidpointBUG(lri.FixedRank(r))
    state = method.init(problem, Y0, 0.0)

    def cpu() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    for _ in range(warm):
        method.step(problem, state, 0.0, 1e-3)
    totals, kernel = [], []
    for _ in range(steps):
        u0, s0 = cpu()
        method.step(problem, state, 0.0, 1e-3)
        u1, s1 = cpu()
        totals.append((u1 - u0) + (s1 - s0))
        kernel.append(s1 - s0)
    kept = method.__dict__.get("_kept_storage")
    return {
        "mode": mode,
        "median_s": statistics.median(totals),
        "median_sys_s": statistics.median(kernel),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "kept_mb": kept.nbytes / 2**20 if kept is not None else 0.0,
    }


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--n",
        str(args.n),
        "--r",
        str(args.r),
        "--warm",
        str(args.warm),
        "--steps",
        str(args.steps),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2**20)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per worker")
    parser.add_argument("--warm", type=int, default=2, help="steps before the timed ones")
    parser.add_argument("--quick", action="store_true", help="n = 2^14, one pair")
    parser.add_argument("--json", help="write the pairs to this file")
    parser.add_argument("--worker", choices=["kept", "fresh"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.pairs, args.steps, args.warm = 2**14, 1, 2, 1
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.r, args.warm, args.steps)))
        return 0

    print(
        f"# MidpointBUG, n = {args.n}, r = {args.r}: median CPU time of {args.steps} steps per "
        f"process (after {args.warm}), 1 BLAS thread"
    )
    print(
        f"{'pair':>4} {'kept s':>8} {'sys s':>7} {'fresh s':>8} {'sys s':>7} {'kept - fresh':>13}"
    )
    pairs = []
    for i in range(args.pairs):
        kept = run_worker("kept", args)
        fresh = run_worker("fresh", args)
        pairs.append((kept, fresh))
        print(
            f"{i + 1:>4} {kept['median_s']:>8.3f} {kept['median_sys_s']:>7.3f} "
            f"{fresh['median_s']:>8.3f} {fresh['median_sys_s']:>7.3f} "
            f"{kept['median_s'] - fresh['median_s']:>+13.3f}"
        )
    med = statistics.median
    print(
        f"median over pairs: kept {med(k['median_s'] for k, _ in pairs):.3f} s "
        f"(sys {med(k['median_sys_s'] for k, _ in pairs):.3f}), fresh "
        f"{med(f['median_s'] for _, f in pairs):.3f} s "
        f"(sys {med(f['median_sys_s'] for _, f in pairs):.3f}); median difference "
        f"{med(k['median_s'] - f['median_s'] for k, f in pairs):+.3f} s"
    )
    print(
        f"peak RSS MB: kept {max(k['peak_rss_mb'] for k, _ in pairs):.0f}, fresh "
        f"{max(f['peak_rss_mb'] for _, f in pairs):.0f}; kept between steps "
        f"{pairs[0][0]['kept_mb']:.0f} MB"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "r": args.r, "steps": args.steps, "pairs": pairs}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
