"""LeNet5 on Fashion-MNIST: dense training against DLRT and TDLRT (PyTorch).

In the style of the LeNet5 table of Schotthöfer et al. (2022, arXiv:2205.13571): LeNet5
(conv 20, conv 50, fc 500, fc 10) trained dense, by DLRT (the model converted by
``lowrank_integrators.torch.convert``, rank-adaptive augmented BUG with Euler substeps and
relative tolerance tau, for each tau), and by TDLRT (Tucker convolutions, Zangrando et al.
2023, arXiv:2305.19059). The classifier ``fc2`` stays dense. Reported per run: test
accuracy, evaluation and training compression (``1 - params / dense params``), ranks per layer,
time per epoch (wall and CPU), and per epoch the loss, accuracy and ranks (for the figures of
``paper_figures/lenet5_fashion_mnist.py``). All runs take the same batches in the same order;
they alternate epoch by epoch (dense, DLRT per tau, TDLRT, then the next epoch), so that the
CPU times per epoch compare runs under the same load of the machine.

Needs the Debian package ``dataset-fashion-mnist`` (or a copy of its IDX files, given by
``--data-dir``) and the ``torch`` extra. The committed run (the whole training set, 10
epochs; ``--quick`` for a smoke test)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/lenet5_fashion_mnist.py --threads 1 \\
        --n-train 60000 --n-test 10000 --epochs 10 --batch-size 64 --lr 0.1 \\
        --out benchmarks/results/lenet5_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowrank_integrators import AugmentedBUG, Euler, Tolerance, TuckerBUG
from lowrank_integrators.torch import DLRTOptimizer, convert, lenet5
from lowrank_integrators.torch.command import layer_ranks, train_model
from lowrank_integrators.training.data import load_dataset
from lowrank_integrators.truncation import tail_norms


def runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "dense", "kind": "dense"}]
    out += [{"name": f"DLRT tau={t:g}", "kind": "matrix", "tau": t} for t in args.taus]
    if not args.no_tdlrt:
        out.append(
            {"name": f"TDLRT tau={args.tucker_tau:g}", "kind": "tucker", "tau": args.tucker_tau}
        )
    return out


def build(run: dict[str, Any], args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(args.seed)
    model = lenet5()
    if run["kind"] == "dense":
        return model, DLRTOptimizer(model.parameters(), lr=args.lr)  # plain SGD
    conv = "tucker" if run["kind"] == "tucker" else "matrix"
    model = convert(model, args.rank0, conv=conv, exclude=("fc2",))
    rule = Tolerance(run["tau"], relative=True, rmin=2, rmax=args.rmax)
    opt = DLRTOptimizer(
        model.parameters(),
        lr=args.lr,
        method=AugmentedBUG(rule, substep=Euler()),
        tucker_method=TuckerBUG(Tolerance(run["tau"], relative=True, rmin=1), substep=Euler()),
    )
    return model, opt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    p.add_argument("--tucker-tau", type=float, default=0.1)
    p.add_argument("--no-tdlrt", action="store_true", help="leave out the TDLRT run")
    p.add_argument("--rank0", type=int, default=32, help="initial rank, clipped per layer")
    p.add_argument("--rmax", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the Fashion-MNIST IDX files (default: the Debian package's)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (all runs alike)"
    )
    p.add_argument("--quick", action="store_true", help="600 / 200 examples, 1 epoch")
    p.add_argument(
        "--step-ranks",
        nargs="+",
        default=None,
        metavar="R1,R2,R3",
        help="instead of training: the CPU time of one training step, dense against DLRT "
        "with conv1, conv2, fc1 held at these ranks",
    )
    p.add_argument("--step-reps", type=int, default=15, help="rounds of --step-ranks")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no CUDA device here")
    if args.quick:
        args.n_train, args.n_test, args.epochs = 600, 200, 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist", dtype=np.float32, path=args.data_dir).subset(
        args.n_train, args.n_test
    )

    def tensor(a: np.ndarray, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.reshape(shape) if shape else t).to(args.device)

    data = (
        tensor(ds.X_train, (-1, 1, 28, 28)),
        tensor(ds.y_train.astype(np.int64)),
        tensor(ds.X_test, (-1, 1, 28, 28)),
        tensor(ds.y_test.astype(np.int64)),
    )
    results: dict[str, Any] = {
        "command": "python benchmarks/lenet5_fashion_mnist.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "config": {k: v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": [],
    }
    if args.step_ranks:
        results["steps"] = step_costs(args, data[0], data[1])
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
        return 0
    # The runs alternate epoch by epoch, so that every run's epochs meet the same load of the
    # machine; each epoch of every run takes the same batches (shuffled by seed and epoch).
    setups = []
    for run in runs(args):
        model, opt = build(run, args)
        model.to(args.device)
        setups.append((run, model, opt, layer_ranks(model), []))
    for epoch in range(1, args.epochs + 1):
        for run, model, opt, _, parts in setups:
            summary = train_model(
                model,
                opt,
                data,
                epochs=1,
                batch_size=args.batch_size,
                seed=1000 * args.seed + epoch,
                log=lambda s, name=run["name"], e=epoch: print(
                    f"  {name}: " + s.replace("epoch 1:", f"epoch {e}:"), flush=True
                ),
            )
            summary["history"][0]["epoch"] = epoch
            parts.append(summary)
    for run, _, _, initial, parts in setups:
        summary = dict(parts[-1])
        summary["history"] = [p["history"][0] for p in parts]
        summary["seconds_per_epoch"] = float(np.mean([h["seconds"] for h in summary["history"]]))
        cpu = [h["cpu_seconds"] for h in summary["history"]]
        summary["cpu_seconds_per_epoch"] = float(np.mean(cpu))
        # the cost at the ranks the run settled at
        summary["cpu_seconds_last_epoch"] = float(cpu[-1])
        results["runs"].append({**run, "initial_ranks": initial, **summary})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def step_costs(args: argparse.Namespace, X: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """CPU milliseconds of a training step, dense against DLRT at fixed ranks.

    One batch of ``args.batch_size`` training images; per round, five steps of each model in
    turn (``zero_grad``, forward, ``backward``, ``step``), the median over ``args.step_reps``
    rounds. The DLRT model is converted at the largest requested rank and truncated per layer
    to ``(conv1, conv2, fc1)``; it steps by the study's method (tau = 0.1 of the taus) and is
    truncated back to those ranks after each step, outside the timing.
    """
    xb, yb = X[: args.batch_size], y[: args.batch_size]
    names = ("conv1", "conv2", "fc1")
    tau = 0.1 if 0.1 in args.taus else args.taus[0]
    ranks = [tuple(int(v) for v in spec.split(",")) for spec in args.step_ranks]
    if any(len(r) != len(names) for r in ranks):
        raise SystemExit(f"error: --step-ranks takes R1,R2,R3 (conv1, conv2, fc1), got {ranks}")

    def hold(model: torch.nn.Module, target: tuple[int, ...]) -> None:
        for name, r in zip(names, target, strict=True):
            layer = getattr(model, name)
            if layer.rank != r:
                U, S, V = layer.U.detach(), layer.S.detach(), layer.V.detach()
                P, sigma, Qh = torch.linalg.svd(S)
                layer.set_factors(U @ P[:, :r], torch.diag(sigma[:r]), V @ Qh[:r].mT)

    setups: list[tuple[str, torch.nn.Module, Any, tuple[int, ...] | None]] = []
    torch.manual_seed(args.seed)
    dense = lenet5().to(args.device)
    setups.append(("dense", dense, DLRTOptimizer(dense.parameters(), lr=args.lr), None))
    for target in ranks:
        torch.manual_seed(args.seed)
        model = convert(lenet5(), max(target), exclude=("fc2",)).to(args.device)
        hold(model, target)
        rule = Tolerance(tau, relative=True, rmin=2, rmax=args.rmax)
        opt = DLRTOptimizer(
            model.parameters(), lr=args.lr, method=AugmentedBUG(rule, substep=Euler())
        )
        setups.append((f"DLRT {target}", model, opt, target))
        torch.manual_seed(args.seed)
        twin = convert(lenet5(), max(target), exclude=("fc2",)).to(args.device)
        hold(twin, target)
        careful = CarefulDLRT(twin, args.lr, tau, rmin=2, rmax=args.rmax, layers=names)
        setups.append((f"careful {target}", twin, careful, target))
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    passes: dict[str, list[float]] = {name: [] for name, *_ in setups}
    loss_fn = torch.nn.functional.cross_entropy
    for rep in range(args.step_reps + 1):
        for name, model, opt, target in setups:
            total = in_pass = 0.0
            for _ in range(5):
                t = time.process_time()
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                t_pass = time.process_time()
                opt.step()
                total += time.process_time() - t
                in_pass += t_pass - t
                if target is not None:
                    hold(model, target)
            if rep:  # the first round warms up
                times[name].append(1e3 * total / 5)
                passes[name].append(1e3 * in_pass / 5)
    med = {name: float(np.median(v)) for name, v in times.items()}
    med_pass = {name: float(np.median(v)) for name, v in passes.items()}
    out = []
    for name, model, _, target in setups[1:]:
        if not name.startswith("DLRT"):
            continue
        essential = essential_step_work(model, xb, args.step_reps)
        floor = med_pass[name] + essential
        careful = f"careful {target}"
        out.append(
            {
                "ranks": dict(zip(names, target or (), strict=True)),
                "dense_ms": med["dense"],
                "dlrt_ms": med[name],
                "dense_over_dlrt": med["dense"] / med[name],
                "dense_pass_ms": med_pass["dense"],
                "dlrt_pass_ms": med_pass[name],
                "dlrt_essential_step_work_ms": essential,
                "dense_over_dlrt_ceiling": med["dense"] / floor,
                "careful_ms": med[careful],
                "careful_pass_ms": med_pass[careful],
                "dense_over_careful": med["dense"] / med[careful],
            }
        )
        print(
            f"ranks {target}: dense {med['dense']:.2f} ms, DLRT {med[name]:.2f} ms per step "
            f"(batch {args.batch_size}), dense / DLRT {med['dense'] / med[name]:.2f}\n"
            f"  forward and backward: dense {med_pass['dense']:.2f} ms, DLRT "
            f"{med_pass[name]:.2f} ms; the integrator's essential work, each operation alone: "
            f"{essential:.2f} ms; dense / (DLRT pass + that) = {med['dense'] / floor:.2f}, the "
            "most any implementation of this step with these PyTorch calls could reach here\n"
            f"  the same step written directly in torch (CarefulDLRT): {med[careful]:.2f} ms "
            f"(its step {med[careful] - med_pass[careful]:.2f} ms, the library's "
            f"{med[name] - med_pass[name]:.2f} ms); dense / careful "
            f"{med['dense'] / med[careful]:.2f}",
            flush=True,
        )
    return out


class CarefulDLRT:
    """The DLRT step of ``DLRTOptimizer`` written directly in torch, for the timing only.

    The augmented BUG with Euler substeps and a relative truncation tolerance ``tau``
    (Schotthöfer et al. 2022, arXiv:2205.13571), per low-rank layer of ``layers``, from the
    products the backward pass left (``U.grad = grad(W) V0``, ``V.grad = grad(W)^T U0``):
    ``K = U0 S0 - lr grad(W) V0`` and ``L = V0 S0^T - lr grad(W)^T U0``; the new columns by a
    Householder QR of ``K`` projected twice out of ``span(U0)`` and one check of their
    orthogonality read back, projected and factored once more where it fails (where ``2r``
    exceeds the rows, a QR of ``[U0, K]``); the core
    ``[S0 0; 0 0] - lr U_hat^T grad(W) V_hat`` from the layer's recorded passes; its SVD,
    truncated to the smallest rank whose discarded singular values have a norm of at most
    ``tau`` times theirs (within ``[rmin, rmax]``). Other parameters: SGD. No finiteness
    checks, fallbacks, sign conventions or optimizer state: what the step costs with these
    PyTorch calls and little else. It gives the library's step up to round-off (a test).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        tau: float,
        *,
        rmin: int = 1,
        rmax: int | None = None,
        layers: tuple[str, ...] = ("conv1", "conv2", "fc1"),
    ) -> None:
        self.model, self.lr, self.tau = model, lr, tau
        self.rmin, self.rmax = rmin, rmax
        self.layers = [getattr(model, name) for name in layers]

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None
        for layer in self.layers:
            layer.clear_records()

    @staticmethod
    def _augmented(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        m, r = U.shape
        if m < 2 * r:  # the leading columns of the QR are those of U0 up to signs and rounding
            return torch.cat([U, torch.linalg.qr(torch.cat([U, K], dim=1))[0][:, r:]], dim=1)
        Z = K - U @ (U.mT @ K)
        Z = Z - U @ (U.mT @ Z)
        Q = torch.linalg.qr(Z)[0]
        C = U.mT @ Q
        if float(C.abs().amax()) > 32 * torch.finfo(Q.dtype).eps:
            # numerically rank-deficient new columns: once more, as the library does
            Q = torch.linalg.qr(Q - U @ C)[0]
        return torch.cat([U, Q], dim=1)

    @torch.no_grad()
    def step(self) -> None:
        lr = self.lr
        for layer in self.layers:
            U, S, V = layer.U.detach(), layer.S.detach(), layer.V.detach()
            r = int(S.shape[0])
            U_hat = self._augmented(U, U @ S - lr * layer.U.grad)
            V_hat = self._augmented(V, V @ S.mT - lr * layer.V.grad)
            core = torch.zeros(U_hat.shape[1], V_hat.shape[1], dtype=S.dtype, device=S.device)
            core[:r, :r] = S
            core -= lr * layer.grad_project(U_hat, V_hat)
            P, sigma, Qh = torch.linalg.svd(core, full_matrices=False)
            s = sigma.cpu().numpy()
            tails = tail_norms(s)  # tails[k] = |s[k:]|, tails[s.size] = 0
            r1 = int(np.argmax(tails[1:] <= self.tau * tails[0])) + 1
            r1 = max(min(r1, self.rmax or s.size), min(self.rmin, s.size))
            layer.set_factors(U_hat @ P[:, :r1], torch.diag(sigma[:r1]), V_hat @ Qh[:r1].mT)
            for p in (layer.U, layer.S, layer.V):
                p.grad = None
            layer.clear_records()
        for p in self.model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def essential_step_work(model: torch.nn.Module, xb: torch.Tensor, reps: int) -> float:
    """CPU milliseconds of the work a DLRT step adds to the forward/backward pass, each
    operation timed alone on random tensors of its shape (median of ``reps`` calls).

    For each low-rank layer at its rank ``r`` (``m`` outputs, ``n`` inputs after
    matricisation) and the default method (augmented BUG, Euler substeps), what no
    implementation can skip: the K- and L-steps ``U0 S0 - h G V0`` and ``V0 S0^T - h G^T U0``
    (``m x r`` and ``n x r`` by ``r x r``; the products with the gradient come from the
    backward pass); the QRs of the new columns (``m x r`` and ``n x r``) and their checks
    against the start bases; the one block of the Galerkin core the pass did not form,
    ``(G U1)^T (x V1)`` with the new columns (for a convolution: the input convolved with
    ``r`` new filters, the output gradient mapped to ``r`` channels and their contraction;
    where the layer's backward forms ``grad(W)``, whose cost is in the pass, two products
    with it, as the layer does); the SVD of the augmented core; and the truncated bases
    ``U_hat P`` and ``V_hat Q``. The dense parameters' SGD update is left out (a few
    microseconds).
    """
    names = ("conv1", "conv2", "fc1")
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [
        getattr(model, n).register_forward_hook(
            lambda mod, inp, out, n=n: shapes.__setitem__(n, (inp[0].shape, out.shape))
        )
        for n in names
    ]
    with torch.no_grad():
        model(xb)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=xb.dtype).to(xb.device)

    def timed(fn: Any) -> float:
        fn()
        ts = []
        for _ in range(max(reps, 5)):
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
        return 1e3 * float(np.median(ts))

    total = 0.0
    for n in names:
        for op in _essential_ops(getattr(model, n), *shapes[n], rand):
            total += timed(op)
    return total


def _essential_ops(layer: Any, x_shape: torch.Size, g_shape: torch.Size, rand: Any) -> list[Any]:
    """The operations of :func:`essential_step_work` for one layer, on random operands."""
    r = int(layer.rank)
    m, k = int(layer.U.shape[0]), int(layer.V.shape[0])
    ku, kv = min(r, m - r), min(r, k - r)  # new columns (none beyond m or n)
    x, G = rand(*x_shape), rand(*g_shape)
    U0, V0, S0, gK, gL = rand(m, r), rand(k, r), rand(r, r), rand(m, r), rand(k, r)
    U1, V1 = rand(m, max(ku, 1)), rand(k, max(kv, 1))
    core, P, Q = rand(r + ku, r + kv), rand(r + ku, r), rand(r + kv, r)
    U_hat, V_hat = rand(m, r + ku), rand(k, r + kv)
    ops = [
        lambda: torch.addmm(gK, U0, S0, beta=-0.1),  # K1 = U0 S0 - h grad(W) V0
        lambda: torch.addmm(gL, V0, S0.mT, beta=-0.1),
        lambda: torch.linalg.qr(U1),
        lambda: torch.linalg.qr(V1),
        lambda: U0.mT @ U1,
        lambda: V0.mT @ V1,
        lambda: torch.linalg.svd(core, full_matrices=False),
        lambda: U_hat @ P,
        lambda: V_hat @ Q,
    ]
    if layer.forms_gradient(r):  # the pass formed grad(W) (its cost is in the pass)
        gW = rand(m, k)
        return [*ops, lambda: U1.mT @ (gW @ V1)]
    if not hasattr(layer, "kernel_size"):  # a linear layer
        return [*ops, lambda: x @ V1, lambda: G @ U1, lambda: (G @ U1).mT @ (x @ V1)]
    filters = V1.mT.reshape(V1.shape[1], layer.in_channels, *layer.kernel_size).contiguous()
    a1 = torch.nn.functional.conv2d(x, filters, None, layer.stride, layer.padding, layer.dilation)
    gu1 = torch.einsum("bchw,cr->brhw", G, U1)
    return [
        *ops,
        lambda: torch.nn.functional.conv2d(
            x, filters, None, layer.stride, layer.padding, layer.dilation
        ),
        lambda: torch.einsum("bchw,cr->brhw", G, U1),
        lambda: torch.einsum("brhw,bshw->rs", gu1, a1),
    ]


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| run | test acc. | eval. compr. | train. compr. | ranks (conv1, conv2, fc1) "
        "| s / epoch (wall) | CPU s / epoch | CPU s, last epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        ranks = ", ".join(str(v) for v in r["ranks"].values()) or "-"
        lines.append(
            f"| {r['name']} | {r['test_accuracy']:.4f} | "
            f"{100 * r['compression_evaluation']:.1f}% | {100 * r['compression_training']:.1f}% | "
            f"{ranks} | {r['seconds_per_epoch']:.1f} | {r['cpu_seconds_per_epoch']:.2f} | "
            f"{r['cpu_seconds_last_epoch']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
