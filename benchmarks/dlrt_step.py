"""One training step, dense against DLRT, side by side in one process (CPU time, 1 BLAS thread).

Networks of Schotthöfer et al. (NeurIPS 2022, arXiv:2205.13571) on Fashion-MNIST, float32,
batch 256, dense last layer:

* width 2048: 784-2048-2048-10; width 500: 784-500-500-500-500-10. DLRT is the augmented BUG
  with Euler substeps truncated to a fixed rank (32 by default); dense is the same network
  with dense layers, trained by the same client; "careful" is the same DLRT step written
  directly in NumPy on the pass's activations (:class:`CarefulDLRT`, the reference for what
  the library's step costs beyond the algorithm). Printed: the median CPU time of a step of
  each and the ratios dense / DLRT and dense / careful. Below them, the step's essential
  products and factorisations (:func:`essential_operations`) each timed alone on operands of
  their shapes: their sum is a floor for any implementation of the step on this machine, and
  dense / floor the highest dense / DLRT one could reach here.
* The fixed cost of a step at width 16, rank 4 (784-16-16-10): the DLRT step, the
  forward/backward pass alone, and their difference (what the integrator adds), beside the
  careful step.
* The rank a relative tolerance ``tau`` (0.1) settles at after a number of steps, and the
  ratio dense / DLRT at that rank.
* The break-even rank per width: the smallest rank of a sweep at which a DLRT step is no
  faster than a dense one (interpolated between the sweep's ranks).

Every timing is CPU time (``time.process_time``) of whole steps, the median over repeats,
measured with one BLAS thread (threadpoolctl), dense and DLRT in alternating blocks of steps in
one process.
Needs the Debian package ``dataset-fashion-mnist``. Example::

    python benchmarks/dlrt_step.py --quick
    python benchmarks/dlrt_step.py --out benchmarks/results/dlrt_step.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_info, threadpool_limits

from lowrank_integrators import AugmentedBUG, Euler, FixedRank, LowRankMatrix, Tolerance
from lowrank_integrators.training import MLP, LowRankTraining
from lowrank_integrators.training.data import load_dataset

ARCHS = {2048: "784-2048-2048-10", 500: "784-500-500-500-500-10"}
SMALL_ARCH = "784-16-16-10"
WARMUP = 3  # steps before timing (first allocations, caches)


def batches(X: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator):
    """An endless stream of minibatches drawn without replacement, epoch by epoch."""
    while True:
        order = rng.permutation(X.shape[0])
        for s in range(0, X.shape[0] - size + 1, size):
            idx = order[s : s + size]
            yield X[idx], y[idx]


def trainer(arch: str, kind: str, rule: Any, seed: int) -> tuple[LowRankTraining, Any, MLP]:
    """A client and its initial state: ``kind`` "dense" or "lowrank" (rank from ``rule``)."""
    rank = rule.rank if isinstance(rule, FixedRank) else 32
    net = MLP.from_arch(arch, kind=kind, rank=rank, last_dense=True)
    weights, params = net.init(np.random.default_rng(seed), dtype=np.float32)
    client = LowRankTraining(AugmentedBUG(rule, substep=Euler()), net.gradient)
    return client, client.init(weights, params), net


class CarefulDLRT:
    """The DLRT step (augmented BUG, Euler substeps, fixed rank) written directly in NumPy.

    One pass of the same network; per low-rank layer with input activations ``X`` and output
    gradients ``G`` (``grad W = G^T X``), with ``X V0`` and ``G U0`` from the pass:
    ``K = U0 S0 - lr G^T (X V0)``, ``L = V0 S0^T - lr X^T (G U0)``; ``U_hat = [U0, Q]`` with
    ``Q`` the Householder QR of ``K - U0 U0^T K`` (projected twice), likewise ``V_hat``;
    ``S_hat = [S0 0; 0 0] - lr (G U_hat)^T (X V_hat)`` with only the new columns of ``G U_hat``
    and ``X V_hat`` formed; SVD (``gesdd``) and truncation to ``rank``. Other parameters: SGD.
    """

    def __init__(self, net: MLP, rank: int) -> None:
        self.net = net
        self.rank = rank

    def init(self, weights: list[LowRankMatrix], params: list[np.ndarray]) -> Any:
        return [tuple(W) for W in weights], list(params)

    @staticmethod
    def _new_columns(U: np.ndarray, K: np.ndarray) -> np.ndarray:
        Z = K - U @ (U.T @ K)
        Z -= U @ (U.T @ Z)
        return scipy.linalg.qr(Z, mode="economic", check_finite=False)[0]

    def step(self, state: Any, batch: Any, lr: float) -> tuple[Any, None]:
        layers, params = state
        weights = [LowRankMatrix(U, S, V, check=False) for U, S, V in layers]
        gp = self.net.gradient(weights, params, batch)
        new = []
        for i, (U, S, V) in enumerate(layers):
            X, G = gp._acts[i]
            XV, GU = gp._formed[i]["XV"], gp._formed[i]["GU"]
            r = S.shape[0]
            Qu = self._new_columns(U, U @ S - lr * (G.T @ XV))
            Qv = self._new_columns(V, V @ S.T - lr * (X.T @ GU))
            S_hat = (np.hstack([GU, G @ Qu]).T @ np.hstack([XV, X @ Qv])) * np.float32(-lr)
            S_hat[:r, :r] += S
            P, sigma, Qh = scipy.linalg.svd(
                S_hat, full_matrices=False, lapack_driver="gesdd", check_finite=False
            )
            k = min(self.rank, sigma.shape[0])
            U1 = U @ P[:r, :k] + Qu @ P[r:, :k]
            V1 = V @ Qh[:k, :r].T + Qv @ Qh[:k, r:].T
            new.append((U1, np.diag(sigma[:k]), V1))
        params = [p - lr * g for p, g in zip(params, gp.param_grads, strict=True)]
        return (new, params), None


def step_times(client: LowRankTraining, state: Any, data, lr: float, reps: int) -> list[float]:
    """CPU seconds of ``reps`` steps (after warm-up steps); the state is carried along."""
    for _ in range(WARMUP):
        state, _ = client.step(state, next(data), lr)
    out = []
    for _ in range(reps):
        b = next(data)
        t = time.process_time()
        state, _ = client.step(state, b, lr)
        out.append(time.process_time() - t)
    return out


def side_by_side(
    make: dict[str, Callable[[], tuple[Any, Any]]], data, lr, reps, rounds: int = 2
) -> dict:
    """Median step times of several clients, in ``rounds`` alternating blocks of ``reps``
    consecutive steps each.

    Blocks rather than single steps: a step right after another client's step pays for memory
    the allocator returned to the system in between, which is not the cost of the method.
    """
    runs = {name: m() for name, m in make.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (client, state) in runs.items():
            for _ in range(WARMUP):
                state = client.step(state, next(data), lr)[0]
            for _ in range(reps):
                b = next(data)
                t = time.process_time()
                state, _ = client.step(state, b, lr)
                times[name].append(time.process_time() - t)
            runs[name] = (client, state)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compare(arch: str, rank: int, data, lr: float, reps: int, seed: int) -> dict[str, float]:
    def dense():
        client, state, _ = trainer(arch, "dense", FixedRank(rank), seed)
        return client, state

    def dlrt():
        client, state, _ = trainer(arch, "lowrank", FixedRank(rank), seed)
        return client, state

    def careful():
        _, state, net = trainer(arch, "lowrank", FixedRank(rank), seed)
        client = CarefulDLRT(net, rank)
        return client, client.init(list(state.weights), list(state.params))

    med = side_by_side({"dense": dense, "dlrt": dlrt, "careful": careful}, data, lr, reps)
    return {
        "dense_ms": 1e3 * med["dense"],
        "dlrt_ms": 1e3 * med["dlrt"],
        "careful_ms": 1e3 * med["careful"],
        "ratio": med["dense"] / med["dlrt"],
        "careful_ratio": med["dense"] / med["careful"],
    }


class PassOnly:
    """The forward/backward pass of a DLRT step alone (what the integrator adds is the rest)."""

    def __init__(self, net: MLP) -> None:
        self.net = net

    def step(self, state: Any, batch: Any, lr: float) -> tuple[Any, None]:
        self.net.gradient(state.weights, state.params, batch)
        return state, None


def fixed_cost(data, lr: float, reps: int, seed: int) -> dict[str, float]:
    """Step, pass and careful step at width 16, rank 4, side by side (``2 reps`` steps each).

    In eight rounds of blocks of ``reps / 4`` steps: the shared machine's speed drifts by tens
    of percent within a minute, and two rounds of long blocks left a client's median at the
    speed of one stretch (a careful step of 1.0 ms in one run, 0.6 ms in the others).
    """

    def dlrt():
        client, state, _ = trainer(SMALL_ARCH, "lowrank", FixedRank(4), seed)
        return client, state

    def pass_only():
        _, state, net = trainer(SMALL_ARCH, "lowrank", FixedRank(4), seed)
        return PassOnly(net), state

    def careful():
        _, state, net = trainer(SMALL_ARCH, "lowrank", FixedRank(4), seed)
        client = CarefulDLRT(net, 4)
        return client, client.init(list(state.weights), list(state.params))

    clients = {"dlrt": dlrt, "pass": pass_only, "careful": careful}
    med = side_by_side(clients, data, lr, max(1, reps // 4), rounds=8)
    return {
        "step_ms": 1e3 * med["dlrt"],
        "pass_ms": 1e3 * med["pass"],
        "integrator_ms": 1e3 * (med["dlrt"] - med["pass"]),
        "careful_step_ms": 1e3 * med["careful"],
    }


def essential_operations(arch: str, rank: int, batch: int) -> list[tuple[str, tuple[int, ...]]]:
    """The products and factorisations one DLRT step must do, with their shapes.

    ``("mm", (a, b, c))`` is an ``a x b`` times ``b x c`` product, ``("qr", (m, k))`` a
    CholeskyQR2 of an ``m x k`` block (two Gram matrices and two triangular products, counted
    as products of the same shapes), ``("svd", (k, k))`` the SVD of the augmented core. Per
    low-rank layer (``n`` inputs, ``m`` outputs, rank ``r``, batch ``B``), for the augmented BUG
    with Euler substeps: the pass (``X V0``, ``(X V0) S^T``, the product with ``U^T``, ``G U0``,
    ``(G U0) S``, and the input gradient except for the first layer); the K- and L-steps
    ``G^T (X V0)`` and ``X^T (G U0)``; per side the two projections out of ``span(U0)``, the QR of
    the new columns and the check ``U0^T Q``; the new Galerkin blocks ``X V1``, ``G U1``,
    ``(G U1)^T (X V1)``, ``(X^T G U0)^T V1``, ``U1^T (G^T X V0)``; the core's SVD; ``U_hat P`` and
    ``V_hat Q``. The dense last layer: its forward product and its two gradient products. Bias,
    activation and loss (elementwise) are left out.
    """
    widths = [int(w) for w in arch.split("-")]
    B, r = batch, rank
    ops: list[tuple[str, tuple[int, ...]]] = []
    last = len(widths) - 2
    for i, (n, m) in enumerate(itertools.pairwise(widths)):
        if i == last:
            ops += [("mm", (B, n, m)), ("mm", (m, B, n)), ("mm", (B, m, n))]
            continue
        ops += [("mm", (B, n, r)), ("mm", (B, r, r)), ("mm", (B, r, m))]
        ops += [("mm", (B, m, r)), ("mm", (B, r, r))]
        if i > 0:
            ops.append(("mm", (B, r, n)))
        ops += [("mm", (m, B, r)), ("mm", (n, B, r))]
        for rows in (m, n):
            ops += [("mm", (r, rows, r)), ("mm", (rows, r, r))] * 2  # projected twice
            ops += [("qr", (rows, r)), ("mm", (r, rows, r))]
        ops += [("mm", (B, n, r)), ("mm", (B, m, r)), ("mm", (r, B, r))]
        ops += [("mm", (r, n, r)), ("mm", (r, m, r))]
        ops += [("svd", (2 * r, 2 * r)), ("mm", (m, 2 * r, r)), ("mm", (n, 2 * r, r))]
    return ops


def products_alone(arch: str, rank: int, batch: int, reps: int, seed: int) -> dict[str, Any]:
    """The time of :func:`essential_operations`, each done alone on random float32 operands.

    Each operation is timed by itself (median of ``reps`` after a warm-up, operands in cache):
    their sum is what a DLRT step costs at the least on this machine with these BLAS and LAPACK
    calls, whatever else an implementation does; dense / this sum bounds dense / DLRT.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    cache: dict[tuple[str, tuple[int, ...]], float] = {}
    total = 0.0
    ops = essential_operations(arch, rank, batch)
    for kind, shape in ops:
        key = (kind, shape)
        if key not in cache:
            if kind == "mm":
                a, b, c = shape
                A, Bm = (
                    rng.standard_normal((a, b)).astype(f32),
                    rng.standard_normal((b, c)).astype(f32),
                )

                def op(A=A, Bm=Bm):
                    return A @ Bm
            elif kind == "qr":
                m, k = shape
                Z = rng.standard_normal((m, k)).astype(f32)
                Zt = np.ascontiguousarray(Z.T)
                R = np.triu(rng.standard_normal((k, k))).astype(f32) + 4 * np.eye(k, dtype=f32)

                def op(Z=Z, Zt=Zt, R=R):
                    # CholeskyQR2: twice a Gram matrix, its Cholesky factor and the product
                    # of Z with a k x k triangular matrix (R^-1 costs what R does)
                    for _ in range(2):
                        np.linalg.cholesky(Zt @ Z + np.eye(Z.shape[1], dtype=Z.dtype) * 1e3)
                        Z @ R
            else:
                C = rng.standard_normal(shape).astype(f32)
                # LAPACK gesdd called directly with its work size queried once, as the
                # library's SVD of a core does: SciPy's wrapper adds its own checks per call
                gesdd, gesdd_lwork = scipy.linalg.lapack.get_lapack_funcs(
                    ("gesdd", "gesdd_lwork"), (C,)
                )
                work = gesdd_lwork(*C.shape, compute_uv=1, full_matrices=0)[0]
                lwork = int(float(np.real(work)) * (1 + 1e-6)) + 1  # rounded up

                def op(C=C, gesdd=gesdd, lwork=lwork):
                    return gesdd(C, compute_uv=1, full_matrices=0, lwork=lwork)

            op()
            ts = []
            for _ in range(reps):
                t = time.process_time()
                op()
                ts.append(time.process_time() - t)
            cache[key] = statistics.median(ts)
        total += cache[key]
    return {"products_alone_ms": 1e3 * total, "operations": len(ops)}


def settled_rank(arch: str, tau: float, rmax: int, n_steps: int, data, lr, reps, seed) -> dict:
    rule = Tolerance(tau, relative=True, rmin=2, rmax=rmax)
    client, state, _ = trainer(arch, "lowrank", rule, seed)
    for _ in range(n_steps):
        state, _ = client.step(state, next(data), lr)
    ranks = list(state.ranks)
    dlrt = statistics.median(step_times(client, state, data, lr, reps))
    dense_client, dense_state, _ = trainer(arch, "dense", FixedRank(2), seed)
    dense = statistics.median(step_times(dense_client, dense_state, data, lr, reps))
    return {
        "steps": n_steps,
        "ranks": ranks,
        "dlrt_ms": 1e3 * dlrt,
        "dense_ms": 1e3 * dense,
        "ratio": dense / dlrt,
    }


def break_even(arch: str, ranks: list[int], data, lr, reps, seed) -> dict:
    rows = [dict(rank=r, **compare(arch, r, data, lr, reps, seed)) for r in ranks]
    even = None
    for a, b in itertools.pairwise(rows):
        if a["ratio"] > 1.0 >= b["ratio"]:
            # log-linear interpolation of the ratio in the rank
            la, lb = np.log(a["ratio"]), np.log(b["ratio"])
            even = float(a["rank"] + (b["rank"] - a["rank"]) * la / (la - lb))
            break
    if even is None and rows and rows[0]["ratio"] <= 1.0:
        even = float(rows[0]["rank"])
    return {"sweep": rows, "break_even_rank": even}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats, short sweeps")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    reps = 3 if args.quick else 9
    settle = 30 if args.quick else 235  # one epoch of Fashion-MNIST at batch 256
    sweeps = {
        2048: [32, 256] if args.quick else [32, 128, 256, 512, 768],
        500: [32, 128] if args.quick else [32, 64, 96, 128, 192],
    }
    data_set = load_dataset("fashion-mnist", dtype=np.float32)
    X, y = data_set.X_train, data_set.y_train
    data = batches(X, y, 256, np.random.default_rng(args.seed))
    # Load every BLAS the steps use before limiting the threads: a library loaded later (SciPy's
    # own OpenBLAS, on the first QR) would run with its default thread count.
    scipy.linalg.qr(np.eye(4, dtype=np.float32), mode="economic")
    np.linalg.svd(np.eye(4, dtype=np.float32))
    out: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "quick": args.quick,
    }
    with threadpool_limits(limits=1):
        out["blas"] = [
            {"library": d["filepath"].rsplit("/", 1)[-1], "threads": d["num_threads"]}
            for d in threadpool_info()
        ]
        assert all(b["threads"] == 1 for b in out["blas"]), out["blas"]
        for width, arch in ARCHS.items():
            res = compare(arch, args.rank, data, args.lr, reps, args.seed)
            res.update(products_alone(arch, args.rank, 256, 7 * reps, args.seed))
            res["ceiling"] = res["dense_ms"] / res["products_alone_ms"]
            out[f"width_{width}"] = res
            print(
                f"width {width:5d} ({arch}), rank {args.rank}: dense {res['dense_ms']:.1f} ms, "
                f"DLRT {res['dlrt_ms']:.1f} ms, careful NumPy DLRT {res['careful_ms']:.1f} ms; "
                f"dense/DLRT {res['ratio']:.2f}, dense/careful {res['careful_ratio']:.2f}"
            )
            print(
                f"  the step's essential products, each alone: {res['products_alone_ms']:.1f} ms "
                f"({res['operations']} operations); dense / that = {res['ceiling']:.2f}, the "
                "most any implementation of the step with these BLAS calls could reach here"
            )
        fc = fixed_cost(data, args.lr, 50 * reps, args.seed)  # steps of ~1 ms: more of them
        out["fixed_cost_width_16_rank_4"] = fc
        print(
            f"width 16, rank 4: step {fc['step_ms']:.2f} ms, pass {fc['pass_ms']:.2f} ms, "
            f"integrator {fc['integrator_ms']:.2f} ms; careful NumPy DLRT step "
            f"{fc['careful_step_ms']:.2f} ms"
        )
        for width, arch in ARCHS.items():
            st = settled_rank(arch, args.tau, width // 2, settle, data, args.lr, reps, args.seed)
            out[f"tau_{args.tau}_width_{width}"] = st
            print(
                f"width {width}: tau = {args.tau} after {settle} steps: ranks {st['ranks']}, "
                f"dense/DLRT {st['ratio']:.2f}"
            )
        for width, arch in ARCHS.items():
            be = break_even(arch, sweeps[width], data, args.lr, reps, args.seed)
            out[f"break_even_width_{width}"] = be
            table = ", ".join(f"r={r['rank']}: {r['ratio']:.2f}" for r in be["sweep"])
            even = be["break_even_rank"]
            even_text = "beyond the sweep" if even is None else f"~{even:.0f}"
            print(f"width {width}: dense/DLRT by rank {table}; break-even rank {even_text}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
