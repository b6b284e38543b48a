"""``lowrank-integrators train``: dynamical low-rank training of a multilayer perceptron."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "train a low-rank network with a dynamical low-rank integrator (DLRT)"

_METHODS = (
    "augmented-bug",
    "bug",
    "parallel-bug",
    "abc-psi",
    "midpoint-bug",
    "psi",
    "dense",
    "vanilla",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default="digits", choices=("digits", "fashion-mnist", "mnist1d")
    )
    parser.add_argument(
        "--arch", default="64-256-256-10", help="layer widths, e.g. 784-500-500-500-500-10"
    )
    parser.add_argument(
        "--integrator",
        default="augmented-bug",
        choices=_METHODS,
        help="integrator of the low-rank layers (Euler substeps), or a baseline: dense layers, "
        "or vanilla W = U V^T trained on U and V",
    )
    parser.add_argument(
        "--tau",
        type=float,
        default=0.1,
        help="relative truncation tolerance ||sigma_tail|| <= tau ||sigma||; a negative value "
        "truncates the rank-adaptive integrators to --rank",
    )
    parser.add_argument("--rank", type=int, default=20, help="initial (or fixed) rank")
    parser.add_argument("--rmin", type=int, default=2)
    parser.add_argument("--rmax", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate = step size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "momentum", "adam"))
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--all-lowrank", action="store_true", help="make the last layer low-rank too"
    )
    parser.add_argument(
        "--init-decay",
        type=float,
        default=None,
        help="initial singular values base^-k (the seed's initialization test uses 2 and 10)",
    )
    parser.add_argument("--n-train", type=int, default=None, help="use the first N examples")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the summary to this file")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--backend",
        default="numpy",
        choices=("numpy", "torch"),
        help="numpy: the reference MLP; torch: a converted PyTorch model (needs the torch extra)",
    )
    parser.add_argument("--model", default="mlp", choices=("mlp", "lenet5"), help="torch model")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument(
        "--conv", default="matrix", choices=("matrix", "tucker"), help="torch convolutions"
    )


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    if args.backend == "torch":
        try:
            from ..torch import command as torch_command
        except ImportError as exc:
            print(f"error: --backend torch needs PyTorch ({exc})", file=sys.stderr)
            return 2
        return torch_command.run(args)

    from .experiment import RunConfig, run_training

    try:
        cfg = RunConfig(
            dataset=args.dataset,
            arch=args.arch,
            integrator=args.integrator,
            tau=None if args.tau < 0 else args.tau,
            rank=args.rank,
            rmin=args.rmin,
            rmax=args.rmax,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            momentum=args.momentum,
            seed=args.seed,
            dtype=args.dtype,
            last_dense=not args.all_lowrank,
            init_decay=args.init_decay,
            n_train=args.n_train,
            n_test=args.n_test,
        )
        if args.resume and not args.checkpoint:
            raise ValueError("--resume needs --checkpoint DIR")
        summary = run_training(
            cfg,
            checkpoint=args.checkpoint,
            resume=args.resume,
            progress=not args.no_progress,
            log=lambda s: print(s, flush=True),
        )
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if summary["status"] != "success":
        print(summary["message"], file=sys.stderr)
        return 1
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    p = s["parameters"]
    acc = s["test_accuracy"]
    print(f"status: {s['status']}")
    if acc is not None:
        print(f"test accuracy: {acc:.4f}")
    print(f"ranks per low-rank layer: {s['ranks']}")
    print(
        f"parameters: dense {p['dense']}, evaluation {p['evaluation']} "
        f"(compression {100 * s['compression_evaluation']:.1f}%), training {p['training']} "
        f"(compression {100 * s['compression_training']:.1f}%)"
    )
    if s["seconds_per_epoch"] is not None:
        print(f"time per epoch: {s['seconds_per_epoch']:.2f} s")
