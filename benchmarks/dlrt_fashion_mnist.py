"""Dynamical low-rank training on Fashion-MNIST: compression study and initialization test.

Two studies of Schotthöfer et al. (NeurIPS 2022, arXiv:2205.13571), on the seed's 5-layer
network 784-500-500-500-500-10 with a dense last layer:

* ``compression``: DLRT (augmented BUG, Euler substeps, relative tolerance tau) for each tau
  against dense training: test accuracy, ranks, evaluation and training compression, time per
  epoch.
* ``init``: initial singular values decaying like ``base^-k`` (base 2 and 10): DLRT (at the same
  fixed rank, and rank-adaptive) against the vanilla factorisation ``W = U V^T`` trained by SGD
  on ``U`` and ``V``, same learning rate and epochs.

Results go to a JSON file, rewritten after every run, and a table is printed. Needs the Debian
package ``dataset-fashion-mnist``. Example::

    python benchmarks/dlrt_fashion_mnist.py --study compression \
        --epochs 5 --out benchmarks/results/dlrt_fashion_mnist_compression.json
    python benchmarks/dlrt_fashion_mnist.py --study init \
        --epochs 5 --lr 0.2 --out benchmarks/results/dlrt_fashion_mnist_init.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

from lowrank_integrators.training.data import load_dataset
from lowrank_integrators.training.experiment import RunConfig, run_training

ARCH = "784-500-500-500-500-10"


def compression_configs(args: argparse.Namespace) -> list[RunConfig]:
    base = RunConfig(
        dataset="fashion-mnist",
        arch=ARCH,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        rank=args.rank0,
        rmax=args.rmax,
        n_train=args.n_train,
    )
    runs = [dataclasses.replace(base, integrator="augmented-bug", tau=t) for t in args.taus]
    runs.append(dataclasses.replace(base, integrator="dense"))
    return runs


def init_configs(args: argparse.Namespace) -> list[RunConfig]:
    base = RunConfig(
        dataset="fashion-mnist",
        arch=ARCH,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        rank=args.init_rank,
        n_train=args.n_train,
        dtype="float64",  # 10^-k stays representable for k up to the rank
    )
    runs = []
    for decay in (2.0, 10.0):
        # DLRT at the vanilla factorisation's fixed rank, and rank-adaptive with tau
        for tau in (None, args.init_tau):
            runs.append(
                dataclasses.replace(base, integrator="augmented-bug", tau=tau, init_decay=decay)
            )
        runs.append(dataclasses.replace(base, integrator="vanilla", init_decay=decay))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--study", choices=("compression", "init"), required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    p.add_argument("--rank0", type=int, default=100, help="initial rank of the DLRT layers")
    p.add_argument("--rmax", type=int, default=None)
    p.add_argument("--init-rank", type=int, default=20)
    p.add_argument("--init-tau", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    data = load_dataset("fashion-mnist", dtype=np.float32)
    if args.n_train is not None:
        data = data.subset(args.n_train)
    configs = compression_configs(args) if args.study == "compression" else init_configs(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "study": args.study,
        "arguments": vars(args),
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
        "runs": [],
    }
    for cfg in configs:
        d = data
        if cfg.dtype == "float64":
            d = dataclasses.replace(
                data, X_train=data.X_train.astype(np.float64), X_test=data.X_test.astype(np.float64)
            )
        t0 = time.perf_counter()
        summary = run_training(cfg, data=d, progress=False, log=lambda s: print(s, flush=True))
        summary["wall_seconds"] = time.perf_counter() - t0
        report["runs"].append(summary)
        out.write_text(json.dumps(report, indent=1))
        print(_row(summary), flush=True)
    print()
    for s in report["runs"]:
        print(_row(s))


def _row(s: dict) -> str:
    c = s["config"]
    name = c["integrator"]
    if name == "augmented-bug":
        name = f"DLRT tau={c['tau']}" if c["tau"] is not None else f"DLRT rank {c['rank']}"
    if c.get("init_decay"):
        name += f" init {c['init_decay']:g}^-k"
    acc = s["test_accuracy"]
    acc_s = f"{100 * acc:.2f}%" if acc is not None else "n/a"
    return (
        f"{name:28s} acc {acc_s:>7s}  ranks {s['ranks']}  "
        f"eval c.r. {100 * s['compression_evaluation']:.1f}%  "
        f"train c.r. {100 * s['compression_training']:.1f}%  "
        f"{s['seconds_per_epoch'] or float('nan'):.1f} s/epoch  status {s['status']}"
    )


if __name__ == "__main__":
    main()
