"""One DLRT step: the PyTorch optimizer against the NumPy client and dense torch training.

Side by side in one process, alternating, CPU time (``time.process_time``), one thread for
BLAS and for torch: the network 784-W-W-10 (dense last layer) of Schotthöfer et al. (2022,
arXiv:2205.13571), float32, batch 256 of Fashion-MNIST, the augmented BUG with Euler substeps
truncated to a fixed rank ``r``:

* ``numpy``: ``LowRankTraining.step`` of the NumPy MLP;
* ``torch``: ``opt.zero_grad(); loss.backward(); opt.step()`` with ``DLRTOptimizer`` on the
  same network as ``LowRankLinear`` layers (the integrator's step driven through the step
  protocol, its requests answered from the backward pass);
* ``dense``: the same torch loop with the unconverted model (``torch.optim.SGD``).

Printed: the median CPU time of a step of each and the ratios torch / numpy and dense / torch.
Example::

    python benchmarks/torch_dlrt_step.py --width 2048 --rank 32 \\
        --out benchmarks/results/torch_dlrt_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.linalg  # noqa: F401 - SciPy's own BLAS, loaded before the limit reaches the pools
import torch
from threadpoolctl import threadpool_limits

from lowrank_integrators import AugmentedBUG, Euler, FixedRank
from lowrank_integrators.torch import DLRTOptimizer, LowRankLinear, mlp
from lowrank_integrators.training import MLP, LowRankTraining
from lowrank_integrators.training.data import load_dataset


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist", dtype=np.float32)
    rng = np.random.default_rng(0)
    idx = [rng.choice(ds.X_train.shape[0], args.batch_size, replace=False) for _ in range(4)]
    batches = [(ds.X_train[i], ds.y_train[i].astype(np.int64)) for i in idx]
    arch = f"784-{args.width}-{args.width}-10"
    method = AugmentedBUG(FixedRank(args.rank), substep=Euler())

    net = MLP.from_arch(arch, kind="lowrank", rank=args.rank, last_dense=True)
    W, P = net.init(rng, dtype=np.float32)
    client = LowRankTraining(method, net.gradient)
    state = client.init(W, P)

    dense = mlp([784, args.width, args.width, 10])
    dense_opt = torch.optim.SGD(dense.parameters(), lr=args.lr)

    def converted() -> torch.nn.Module:
        model = mlp([784, args.width, args.width, 10])
        for name, Y in zip(("fc1", "fc2"), W, strict=True):
            setattr(
                model,
                name,
                LowRankLinear(
                    int(Y.shape[1]), int(Y.shape[0]), args.rank,
                    factors=tuple(torch.from_numpy(a.copy()) for a in Y),
                ),
            )  # fmt: skip
        return model

    model = converted()
    opt = DLRTOptimizer(model.parameters(), lr=args.lr, method=method)
    tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def numpy_step(k: int) -> None:
        nonlocal state
        state, _ = client.step(state, batches[k % len(batches)], args.lr)

    def torch_step(k: int, m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        x, y = tb[k % len(tb)]
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()

    runs = {
        "numpy": numpy_step,
        "torch": lambda k: torch_step(k, model, opt),
        "dense": lambda k: torch_step(k, dense, dense_opt),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with threadpool_limits(1):
        for k in range(2):  # warm up
            for f in runs.values():
                f(k)
        for k in range(args.reps):
            for name, f in runs.items():
                t = time.process_time()
                f(k)
                times[name].append(time.process_time() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python benchmarks/torch_dlrt_step.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "arch": arch,
        "rank": args.rank,
        "batch_size": args.batch_size,
        "median_cpu_seconds": med,
        "torch_over_numpy": med["torch"] / med["numpy"],
        "dense_over_torch": med["dense"] / med["torch"],
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    print(
        f"{arch}, rank {args.rank}, batch {args.batch_size}: numpy DLRT {1e3 * med['numpy']:.1f} "
        f"ms, torch DLRT {1e3 * med['torch']:.1f} ms, torch dense {1e3 * med['dense']:.1f} ms; "
        f"torch / numpy {result['torch_over_numpy']:.2f}, dense / torch "
        f"{result['dense_over_torch']:.2f}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
