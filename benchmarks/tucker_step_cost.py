"""Per-step time and peak memory of the Tucker integrators on a factored tensor Sylvester ODE.

``F(Y) = sum_k Y x_k A_k + C`` with ``A_k = tridiag(1, -2, 1) + W_k`` (``W_k`` skew-symmetric,
dense ``n x n``) and a source ``C`` of multilinear rank 2, started from a random Tucker tensor
of ranks ``(r, ..., r)``. For each integrator the script reports

* the median wall time of one step over ``--repeats`` steps (after one warm-up step),
* the mean CPU time (``time.process_time``) of those steps: at small sizes (``--n 12
  --rank 4``) nearly all of it is Python overhead, so take many repeats there,
* the peak of NumPy/Python allocations during one step (``tracemalloc``),
* the process's maximum resident set size (``ru_maxrss``) after all steps,
* the CPU time per step of the *kernel floor*: the same NumPy kernels the step needs (mode
  products, small products, QRs through LAPACK ``geqrf``/``orgqr``, SVDs through ``gesdd``,
  the RK4 updates) on the same shapes, called by a plain Python function with nothing else
  (no requests, no checks, no bookkeeping), and the library's **Python overhead**, defined as
  its CPU time per step minus the floor's, also printed as a multiple of the floor (both
  move with the machine's speed from run to run, their ratio much less). Library and floor
  are timed side by side in blocks of steps from the same state, interleaved, and the
  medians over the blocks are reported. The floor's result is checked against the library's
  step (their Tucker tensors must agree to round-off), so that the floor computes the same
  step. The rank-adaptive ``Tolerance`` variant has no floor (its ranks follow the data); it
  reports step times only.

and compares the peak with the size of one dense ``n^d`` array. As a control it measures the
``tracemalloc`` peak of densifying the state once (``Y.to_dense()``), which must reach that
size. The exit status is 1 if any integrator step allocated as much as a dense tensor (checked
when the dense tensor has at least 1 MiB).

Run with one BLAS thread, e.g.::

    OPENBLAS_NUM_THREADS=1 python benchmarks/tucker_step_cost.py --n 200 --d 3 --rank 10
    OPENBLAS_NUM_THREADS=1 python benchmarks/tucker_step_cost.py --n 12 --rank 4 --repeats 3000

The Python overhead target is measured against the side-by-side figure at ``--n 12 --rank 4``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np
import scipy.linalg

import lowrank_integrators as lri
from lowrank_integrators.tucker import multi_mode_product

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


# --- the kernel floor ------------------------------------------------------------------------
#
# The essential NumPy kernels of one step, called one after the other by plain Python: the
# same mode products, small products, QRs (LAPACK geqrf/orgqr called directly) and RK4
# updates that the library step needs on the same shapes, with nothing else (no requests,
# no checks, no bookkeeping). The library's Python overhead is its step time minus this.


def _lapack_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    geqrf, orgqr = _QR_FUNCS
    qr, tau, _, _ = geqrf(a, overwrite_a=0)
    p = min(a.shape)
    r = np.triu(qr[:p, :])
    return orgqr(qr[:, :p], tau, overwrite_a=1)[0], r


_QR_FUNCS = scipy.linalg.lapack.get_lapack_funcs(("geqrf", "orgqr"), (np.empty(0),))


def _mode(X: np.ndarray, A: np.ndarray, k: int) -> np.ndarray:
    """``X x_k A`` as one GEMM (batched for inner modes), C-ordered."""
    shape = X.shape
    before = math.prod(shape[:k])
    after = math.prod(shape[k + 1 :])
    out = np.matmul(A, X.reshape(before, shape[k], after))
    return out.reshape(*shape[:k], A.shape[0], *shape[k + 1 :])


def _unfold(X: np.ndarray, k: int) -> np.ndarray:
    d = X.ndim
    return X.transpose((k, *range(k), *range(k + 1, d))).reshape(X.shape[k], -1)


def _fold(M: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    rest = (*shape[:k], *shape[k + 1 :])
    return M.reshape(M.shape[0], *rest).transpose((*range(1, k + 1), 0, *range(k + 1, len(shape))))


def _rk4(f, X: np.ndarray, h: float) -> np.ndarray:
    k1 = f(X)
    k2 = f(X + (0.5 * h) * k1)
    k3 = f(X + (0.5 * h) * k2)
    k4 = f(X + h * k3)
    return X + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _stacked_rk4(fields, K0: list[np.ndarray], h: float) -> list[np.ndarray]:
    """RK4 for the independent mode K-steps of BUG at once, on their stacked entries."""
    shapes = [K.shape for K in K0]
    ends = np.cumsum([K.size for K in K0]).tolist()
    spans = list(zip([0, *ends[:-1]], ends, strict=True))

    parts = list(zip(fields, spans, shapes, strict=True))

    def field(X):
        return np.concatenate([f(X[a:b].reshape(s)).reshape(-1) for f, (a, b), s in parts])

    X1 = _rk4(field, np.concatenate([K.reshape(-1) for K in K0]), h)
    return [X1[a:b].reshape(s) for (a, b), s in zip(spans, shapes, strict=True)]


def _mode_field_data(ops, Gc, Uc, factors, B, Q, i, ranks):
    """``D = sum_{k != i} Mat_i(Ten_i(Q^T) x_k B_k) Q`` and the source ``E`` of the mode-i field."""
    d = len(ops)
    G = _fold(Q.T, i, ranks)
    D = sum(_unfold(_mode(G, B[k], k), i) @ Q for k in range(d) if k != i)
    Gs = Gc
    for j in range(d):
        if j != i:
            Gs = _mode(Gs, factors[j].T @ Uc[j], j)
    E = Uc[i] @ (_unfold(Gs, i) @ Q)
    return D, E


def _mode_k_field(A, D, E):
    """``K -> A K + K D + E``: the mode K-step field of the Sylvester problem."""
    return lambda K: A @ K + K @ D + E


def _mode_s_field(B, D, E):
    """``S -> -(B S + S D + E)``: the backward mode S-step field in reduced coordinates."""
    return lambda S: -(B @ S + S @ D + E)


def _core_rk4(ops, Gc, Uc, factors, B, C, h):
    d = len(ops)
    Cp = Gc
    for j in range(d):
        Cp = _mode(Cp, factors[j].T @ Uc[j], j)

    def field(X):
        out = Cp
        for k in range(d):
            out = out + _mode(X, B[k], k)
        return out

    return _rk4(field, C, h)


def _bug_k_steps(ops, Gc, Uc, core, U):
    """The mode K-step fields of a BUG step and their starts ``U_i R_i^T``."""
    ranks = core.shape
    B0 = [u.T @ (A @ u) for A, u in zip(ops, U, strict=True)]
    fields, K0 = [], []
    for i in range(core.ndim):
        Q, R = _lapack_qr(_unfold(core, i).T)
        D, E = _mode_field_data(ops, Gc, Uc, U, B0, Q, i, ranks)
        fields.append(_mode_k_field(ops[i], D, E))
        K0.append(U[i] @ R.T)
    return fields, K0


def _bug_core_step(ops, Gc, Uc, core, U, h, augment):
    """The K-steps, the new bases (of ``[K1, U0]`` with ``augment``) and the core step."""
    fields, K0 = _bug_k_steps(ops, Gc, Uc, core, U)
    bases, M = [], []
    for i, K1 in enumerate(_stacked_rk4(fields, K0, h)):
        U1 = _lapack_qr(np.concatenate([K1, U[i]], axis=1) if augment else K1)[0]
        bases.append(U1)
        M.append(U1.T @ U[i])
    C = core
    for j in range(core.ndim):
        C = _mode(C, M[j], j)
    B1 = [u.T @ (A @ u) for A, u in zip(ops, bases, strict=True)]
    return _core_rk4(ops, Gc, Uc, bases, B1, C, h), bases


def floor_bug_step(ops, Gc, Uc, core, U, h):
    """The kernels of one fixed-rank Tucker BUG step with RK4 substeps."""
    return _bug_core_step(ops, Gc, Uc, core, U, h, augment=False)


def floor_projector_splitting_step(ops, Gc, Uc, core, U, h):
    """The kernels of one Tucker projector-splitting step with RK4 substeps."""
    d = core.ndim
    ranks = core.shape
    factors = list(U)
    B = [u.T @ (A @ u) for A, u in zip(ops, factors, strict=True)]
    C = core
    for i in range(d):
        Q, R = _lapack_qr(_unfold(C, i).T)
        D, E = _mode_field_data(ops, Gc, Uc, factors, B, Q, i, ranks)
        A = ops[i]
        K1 = _rk4(_mode_k_field(A, D, E), factors[i] @ R.T, h)
        U1, S_hat = _lapack_qr(K1)
        factors[i] = U1
        B[i] = U1.T @ (A @ U1)
        E1 = U1.T @ E
        S = _rk4(_mode_s_field(B[i], D, E1), S_hat, h)
        C = _fold(S @ Q.T, i, ranks)
    return _core_rk4(ops, Gc, Uc, factors, B, C, h), factors


def floor_augmented_bug_step(ops, Gc, Uc, core, U, h, rank):
    """The kernels of one rank-adaptive Tucker BUG step truncated back to ``rank`` per mode."""
    d = core.ndim
    C_hat, bases = _bug_core_step(ops, Gc, Uc, core, U, h, augment=True)
    kept = [_SVD(_unfold(C_hat, i), full_matrices=0)[0][:, :rank] for i in range(d)]
    for j in range(d):
        C_hat = _mode(C_hat, kept[j].T, j)
    return C_hat, [b @ p for b, p in zip(bases, kept, strict=True)]


_SVD = scipy.linalg.lapack.get_lapack_funcs("gesdd", (np.empty(0),))


def floor_step(method, problem):
    """The kernel floor of ``method``'s step as ``Y -> (core, factors)``, or ``None``."""
    ops = list(problem.operators)
    Gc, Uc = problem.C
    rule = getattr(method, "truncation", None)
    if isinstance(method, lri.TuckerProjectorSplitting):
        return lambda Y, h: floor_projector_splitting_step(ops, Gc, Uc, Y.core, Y.factors, h)
    if isinstance(method, lri.TuckerBUG) and rule is None:
        return lambda Y, h: floor_bug_step(ops, Gc, Uc, Y.core, Y.factors, h)
    if isinstance(method, lri.TuckerBUG) and isinstance(rule, lri.FixedRank):
        rank = rule.rank

        def step(Y, h):
            return floor_augmented_bug_step(ops, Gc, Uc, Y.core, Y.factors, h, rank)

        return step
    return None


def tucker_distance(Y, Z) -> float:
    """``||Y - Z||_F`` of two Tucker tensors, in joint bases (no dense tensor, no cancellation)."""
    (Cy, Uy), (Cz, Uz) = Y, Z
    joint = [np.linalg.qr(np.concatenate([a, b], axis=1))[0] for a, b in zip(Uy, Uz, strict=True)]
    Gy = multi_mode_product(Cy, [W.T @ a for W, a in zip(joint, Uy, strict=True)])
    Gz = multi_mode_product(Cz, [W.T @ b for W, b in zip(joint, Uz, strict=True)])
    return float(np.linalg.norm(Gy - Gz))


def _cpu_per_step(step, steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps


def measure(method, problem, Y0, h: float, repeats: int, blocks: int) -> dict:
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
    out = {
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
    out.update(side_by_side(method, problem, Y0, h, repeats, blocks))
    return out


def side_by_side(method, problem, Y0, h: float, repeats: int, blocks: int) -> dict:
    """Median CPU time per step of the library and of its kernel floor, timed interleaved."""
    floor = floor_step(method, problem)
    if floor is None:
        return {"floor_cpu_per_step_s": None, "overhead_cpu_per_step_s": None}
    state = method.init(problem, Y0, 0.0)
    Y1 = method.step(problem, state, 0.0, h)[0].Y
    core, factors = floor(Y0, h)
    gap = tucker_distance(Y1, lri.TuckerTensor(core, factors, check=False))
    if not gap <= 1e-10 * max(1.0, Y1.norm()):
        raise RuntimeError(f"the kernel floor of {method!r} computes another step (gap {gap:.2e})")
    per_block = max(1, repeats // blocks)
    lib, flo = [], []
    for _ in range(blocks):
        lib.append(_cpu_per_step(lambda: method.step(problem, state, 0.0, h), per_block))
        flo.append(_cpu_per_step(lambda: floor(Y0, h), per_block))
    lib_s, floor_s = statistics.median(lib), statistics.median(flo)
    return {
        "library_cpu_per_step_s": lib_s,
        "floor_cpu_per_step_s": floor_s,
        "overhead_cpu_per_step_s": lib_s - floor_s,
        "floor_agreement": gap,
        "blocks": blocks,
        "steps_per_block": per_block,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="size per mode")
    parser.add_argument("--d", type=int, default=3, help="order of the tensor")
    parser.add_argument("--rank", type=int, default=10, help="multilinear rank per mode")
    parser.add_argument("--h", type=float, default=0.01, help="step size")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per method")
    parser.add_argument(
        "--blocks", type=int, default=7, help="interleaved blocks of the side-by-side timing"
    )
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
    results = [measure(m, problem, Y0, args.h, args.repeats, args.blocks) for m in methods]
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
        if r["floor_cpu_per_step_s"] is not None:
            print(
                f"    side by side (median of {r['blocks']} blocks of {r['steps_per_block']}): "
                f"library {1e3 * r['library_cpu_per_step_s']:.3f} ms/step, kernel floor "
                f"{1e3 * r['floor_cpu_per_step_s']:.3f} ms/step, Python overhead "
                f"{1e3 * r['overhead_cpu_per_step_s']:.3f} ms/step "
                f"({r['overhead_cpu_per_step_s'] / r['floor_cpu_per_step_s']:.2f} x the floor)"
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
