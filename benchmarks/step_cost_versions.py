"""CPU time per step of the integrators, this checkout against another, side by side in one process.

The problem is that of ``step_cost.py`` (``F = A Y + Y A^T + C``, tridiagonal CSR ``A``, rank-4
``C``, RK4 substeps, ``sigma_i = eps^(i / 52)``: ``2^-i`` in float64, the default dtype). The
other checkout's package is imported under another module name, so that both versions step
the same arrays in one process, one step after the other in turn (old, new, old, new, ...):
they meet the same load, which on a shared machine moves more than the difference being
measured. Times are CPU time (``time.process_time``) with one BLAS thread; the script prints
medians and their ratio. Numba's compiled kernels go to a temporary cache directory for the
run (unless ``NUMBA_CACHE_DIR`` is set), so that nothing compiled under the other checkout's
alias is left in its sources' cache.

Usage::

    python benchmarks/step_cost_versions.py --other <checkout> --n 65536 --r 32 --reps 7
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def load_package(name: str, checkout: Path):
    """The ``lowrank_integrators`` package of ``checkout``, imported as module ``name``."""
    root = checkout / "lowrank_integrators"
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise ValueError(f"no lowrank_integrators package in {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: The methods this script can compare, by the names of ``step_cost.py``.
METHODS = ("KSL", "Strang", "BUG", "AugmentedBUG", "ParallelBUG", "MidpointBUG", "abc-PSI")


def steppers(lri, n, r, rng_seed=0, methods=("BUG", "KSL"), dtype="float64"):
    """One step of each of ``methods`` on the benchmark problem, as callables, for ``lri``."""
    # the benchmark's problem and integrators, for either package
    from step_cost import benchmark_problem, build_methods

    problem, Y0 = benchmark_problem(lri, n, r, dtype, seed=rng_seed)
    built = build_methods(lri, r)
    out = {}
    for name in methods:
        method = built[name]
        state = method.init(problem, Y0, 0.0)
        out[name] = lambda m=method, s=state: m.step(problem, s, 0.0, 1e-3)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="checkout of the version to compare")
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7, help="timed steps per method and version")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["BUG", "KSL"])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = parser.parse_args(argv)
    other = Path(args.other)
    if not (other / "lowrank_integrators" / "__init__.py").is_file():
        parser.error(f"--other: {other} holds no lowrank_integrators package")

    if "numba" in sys.modules or "NUMBA_CACHE_DIR" in os.environ:
        return _compare(args, other)
    # numba's cache of a compiled kernel names the module it was compiled in: kernels of the
    # other checkout, cached beside its sources under the alias, would fail to load when that
    # checkout is used as itself later. This run compiles into a directory of its own.
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache
        try:
            return _compare(args, other)
        finally:
            del os.environ["NUMBA_CACHE_DIR"]


def _compare(args: argparse.Namespace, other: Path) -> int:
    import scipy.linalg  # noqa: F401 - every BLAS library is loaded before the limit
    from threadpoolctl import threadpool_limits

    import lowrank_integrators as this

    old = load_package("lowrank_integrators_other", other)
    threadpool_limits(1)
    print(
        f"# this: {Path(this.__file__).parents[1]}; other: {other}; {args.dtype}, CPU time, "
        "1 BLAS thread"
    )
    for n in args.n:
        runs = {}
        for tag, lri in (("other", old), ("this", this)):
            built = steppers(lri, n, args.r, methods=args.methods, dtype=args.dtype)
            for name, step in built.items():
                runs[name, tag] = step
        for step in runs.values():  # warm-up: compilation, work arrays
            step()
        times = {key: [] for key in runs}
        for _ in range(args.reps):
            for key, step in runs.items():
                t0 = time.process_time()
                step()
                times[key].append(time.process_time() - t0)
        for name in args.methods:
            before = statistics.median(times[name, "other"])
            after = statistics.median(times[name, "this"])
            print(
                f"{args.dtype} n={n} r={args.r} {name}: other {1e3 * before:.2f} ms, "
                f"this {1e3 * after:.2f} ms, this/other {after / before:.3f} "
                f"(medians of {args.reps})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
