"""Per-step time of the matrix integrators on a CUDA device (CuPy), against the device's floor.

The problem of ``benchmarks/step_cost.py`` on the device: ``F(Y) = A Y + Y A^T + C`` with
``A = tridiag(1, -2, 1)`` as a ``cupyx.scipy.sparse`` CSR matrix, ``C`` of rank 4 kept
factored, RK4 substeps, and a start of rank ``r`` whose singular values fall to the
precision's limit (``step_cost.core_singular_values``). The integrators are the library's,
unchanged: the same code that runs on NumPy runs here on CuPy arrays.

For each size, rank and dtype, and each method: one warm-up step (kernels compiled and cached,
memory pool filled), then ``--repeats`` steps from the same state, each timed from a
synchronised device to a synchronised device (wall clock). Printed are the median, the floor
and their ratio. Between methods the memory pool is emptied.

Floor: the phases that ``step_cost.floor_model`` counts for the method (the bytes each tall
array must move, the flops of the thin products; QRs as CholeskyQR2), each taking
``max(flops / GEMM rate, bytes / bandwidth)``, at rates measured on the device at start: a
square GEMM of order 4096 in the dtype, and the bandwidth of ``add(u, v, out=w)`` on arrays
of 2^27 entries (bytes read and written). Kernel launches and host reads are not in the floor:
a step launches some hundreds of kernels and reads a few numbers back for its QR and rank
decisions, so that at small ``n`` it is bound by them, not by the device's memory.

Agreement: at ``--check-n`` rows (default 4096), each method takes one step on the device
and one on NumPy from the same start; printed is ``|Y_device - Y_numpy|_F / |Y_numpy|_F``,
computed factored (from the triangular factors of the stacked bases, never n x n). Expect
round-off, except for MidpointBUG (about 1e-9 at h = 1e-3): on this problem the new columns
of its ``4r`` bases are nearly dependent, round-off chooses some of their directions, and its
steps differ by as much between NumPy runs with a sparse and a dense ``A``; the difference
stays below the method's local error, O(h^3).

``--backend numpy`` runs the same driver on the host arrays (a smoke test of this script on a
machine without a device; its timings are wall clock with every BLAS thread).

Usage (on a machine with a CUDA device and CuPy)::

    python benchmarks/gpu_step_cost.py --n 65536 1048576 4194304 --r 16 32 \\
        --dtype float64 float32 --out gpu_step_cost.json
    python benchmarks/gpu_step_cost.py --quick --backend numpy
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_cost  # the problem, the methods and the floor model are shared

import lowrank_integrators as lri


class Backend:
    """The array library a run uses: moving the problem there, synchronising, the pool."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "cupy":
            import cupy
            import cupyx.scipy.sparse

            self.xp = cupy
            self.sparse = cupyx.scipy.sparse
            self.device_name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        elif name == "numpy":
            self.xp = np
            self.sparse = None
            self.device_name = platform.processor() or platform.machine()
        else:
            raise ValueError(f"backend must be 'cupy' or 'numpy', got {name!r}")

    def synchronize(self) -> None:
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def host(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x) if self.name == "cupy" else np.asarray(x)

    def free(self) -> None:
        gc.collect()
        if self.name == "cupy":
            self.xp.get_default_memory_pool().free_all_blocks()

    def move(self, problem: Any, Y0: Any) -> tuple[Any, Any]:
        """The host problem and start on this backend."""
        if self.name == "numpy":
            return problem, Y0
        xp = self.xp
        A = self.sparse.csr_matrix(problem.A)
        Uc, Sc, Vc = (xp.asarray(f) for f in problem.C)
        C = lri.LowRankMatrix(Uc, Sc, Vc, check=False)
        Y = lri.LowRankMatrix(*(xp.asarray(f) for f in Y0), check=False)
        return lri.SylvesterODE(A, A, C), Y

    def rates(self, dtype: np.dtype) -> dict[str, float]:
        """GEMM rate (flop/s) and bandwidth (bytes/s) of this backend, best of 5."""
        xp = self.xp

        def best(fn, repeats=5):
            fn()
            times = []
            for _ in range(repeats):
                self.synchronize()
                t0 = time.perf_counter()
                fn()
                self.synchronize()
                times.append(time.perf_counter() - t0)
            return max(min(times), 1e-9)

        def gemm_rate(k):
            a = xp.ones((k, k), dtype=dtype)
            return 2 * k**3 / best(lambda: a @ a)

        def bandwidth(size):
            u = xp.ones(size, dtype=dtype)
            v = xp.ones(size, dtype=dtype)
            w = xp.empty(size, dtype=dtype)
            return 3 * u.nbytes / best(lambda: xp.add(u, v, out=w))

        on_device = self.name == "cupy"
        rates = {
            "dgemm": gemm_rate(4096 if on_device else 1024),
            "bandwidth": bandwidth(1 << (27 if on_device else 24)),
        }
        self.free()
        return rates


def relative_difference(Y: Any, Z: Any) -> float:
    """``|Y - Z|_F / |Z|_F`` for low-rank matrices on the host, without forming either."""
    U = np.hstack([Y.U, Z.U])
    V = np.hstack([Y.V, Z.V])
    core = np.zeros((U.shape[1], V.shape[1]), dtype=np.result_type(Y.S, Z.S))
    ry, rz = Y.S.shape
    core[:ry, :rz] = Y.S
    core[ry:, rz:] = -Z.S
    Ru = np.linalg.qr(U, mode="r")
    Rv = np.linalg.qr(V, mode="r")
    diff = np.linalg.norm(Ru @ core @ Rv.conj().T)
    Rz = np.linalg.qr(Z.U, mode="r") @ Z.S @ np.linalg.qr(Z.V, mode="r").conj().T
    return float(diff / np.linalg.norm(Rz))


def agreement(backend: Backend, n: int, r: int, dtype: str, h: float) -> dict[str, float]:
    """Per method: one step on ``backend`` against one on NumPy from the same start."""
    host_problem, host_Y0 = step_cost.benchmark_problem(lri, n, r, dtype)
    problem, Y0 = backend.move(host_problem, host_Y0)
    out = {}
    on_host, on_backend = step_cost.build_methods(lri, r), step_cost.build_methods(lri, r)
    for name, expected in on_host.items():
        method = on_backend[name]
        ref, _ = expected.step(host_problem, expected.init(host_problem, host_Y0, 0.0), 0.0, h)
        try:
            got, _ = method.step(problem, method.init(problem, Y0, 0.0), 0.0, h)
        except Exception:  # reported, and the other methods still checked
            print(f"{name} failed on {backend.name}:\n{traceback.format_exc()}", flush=True)
            out[name] = float("nan")
            continue
        Y = lri.LowRankMatrix(*(backend.host(f) for f in got.Y), check=False)
        out[name] = relative_difference(Y, ref.Y)
    return out


def time_methods(
    backend: Backend, n: int, r: int, dtype: str, repeats: int, h: float, wanted: list[str]
) -> list[dict[str, Any]]:
    """Median seconds per step of each method at one size, with the floor beside it."""
    host_problem, host_Y0 = step_cost.benchmark_problem(lri, n, r, dtype)
    problem, Y0 = backend.move(host_problem, host_Y0)
    del host_problem, host_Y0
    rates = backend.rates(np.dtype(dtype))
    itemsize = np.dtype(dtype).itemsize
    rows = []
    for name, method in step_cost.build_methods(lri, r).items():
        if name not in wanted:
            continue
        state = method.init(problem, Y0, 0.0)
        times = []
        try:
            method.step(problem, state, 0.0, h)  # warm-up
            for _ in range(repeats):
                backend.synchronize()
                t0 = time.perf_counter()
                method.step(problem, state, 0.0, h)
                backend.synchronize()
                times.append(time.perf_counter() - t0)
        except Exception:  # reported, and the other methods still timed
            print(f"{name} failed at n={n} r={r} {dtype}:\n{traceback.format_exc()}", flush=True)
            del state
            backend.free()
            continue
        floor = step_cost.floor_model(name, n, r, itemsize).seconds(rates)
        median = statistics.median(times)
        rows.append(
            {
                "n": n,
                "r": r,
                "dtype": dtype,
                "method": name,
                "median_s": median,
                "min_s": min(times),
                "repeats": repeats,
                "floor_s": floor,
                "ratio_to_floor": median / floor,
                "rates": rates,
            }
        )
        print(
            f"{dtype:>8} n={n:>8} r={r:>3} {name:>13}: {1e3 * median:9.3f} ms "
            f"(min {1e3 * min(times):8.3f}), floor {1e3 * floor:8.3f} ms, "
            f"x floor {median / floor:7.2f}",
            flush=True,
        )
        del state
        backend.free()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="cupy", choices=["cupy", "numpy"])
    p.add_argument("--n", type=int, nargs="+", default=[65536, 1 << 20, 1 << 22])
    p.add_argument("--r", type=int, nargs="+", default=[16, 32])
    p.add_argument(
        "--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"]
    )
    p.add_argument("--methods", nargs="+", default=list(step_cost.build_methods(lri, 4)))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--check-n", type=int, default=4096, help="rows of the agreement check")
    p.add_argument("--quick", action="store_true", help="n = 4096, r = 8, float64, 3 repeats")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(step_cost.build_methods(lri, 4)))
    if unknown:
        p.error(f"--methods: unknown {unknown}; expected names of {list(step_cost.METHOD_NAMES)}")
    if args.quick:
        args.n, args.r, args.dtype, args.repeats, args.check_n = [4096], [8], ["float64"], 3, 1024
    backend = Backend(args.backend)
    h = 1e-3
    print(f"{backend.name} on {backend.device_name}", flush=True)

    checks = {}
    for dtype in args.dtype:
        diffs = agreement(backend, args.check_n, min(args.r), dtype, h)
        checks[dtype] = diffs
        worst = max(diffs, key=diffs.get)
        print(
            f"agreement with NumPy, n={args.check_n} r={min(args.r)} {dtype}: largest relative "
            f"difference {diffs[worst]:.1e} ({worst}); "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()),
            flush=True,
        )

    rows = []
    for dtype in args.dtype:
        for n in args.n:
            for r in args.r:
                rows += time_methods(backend, n, r, dtype, args.repeats, h, args.methods)
    result = {
        "command": "python benchmarks/gpu_step_cost.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": backend.name,
        "device_name": backend.device_name,
        "agreement_with_numpy": checks,
        "rows": rows,
        "platform": platform.platform(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
