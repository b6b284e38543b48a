"""``lowrank-integrators train``: dynamical low-rank training of a multilayer perceptron.

The run writes its output folder (``--out``): ``model.npz`` (the checkpoint, replaced after every
epoch; read it back with ``lowrank-integrators evaluate``), ``history.csv`` (per-epoch loss,
accuracy and ranks), ``curves.png`` (with matplotlib) and ``summary.json``. Every file is
replaced atomically. Values and output paths are checked before any work: a bad one ends the
command with a message and exit status 2. Exit status 1: the training diverged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "run"]

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
        "--dataset",
        default="digits",
        choices=("digits", "fashion-mnist", "mnist1d"),
        help="data set: scikit-learn's digits, Fashion-MNIST (IDX files) or MNIST-1D",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of the Fashion-MNIST IDX files (None: /usr/share/datasets/fashion-mnist, "
        "the Debian package dataset-fashion-mnist)",
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
    parser.add_argument(
        "--rank", type=int, default=20, help="initial (or fixed) rank of the low-rank layers"
    )
    parser.add_argument("--rmin", type=int, default=2, help="smallest rank after truncation")
    parser.add_argument(
        "--rmax", type=int, default=None, help="largest rank after truncation (None: no cap)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="number of epochs")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate = step size")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step")
    parser.add_argument(
        "--optimizer",
        default="sgd",
        choices=("sgd", "momentum", "adam"),
        help="direction of the flow: the gradient, heavy-ball momentum or Adam",
    )
    parser.add_argument(
        "--momentum", type=float, default=0.9, help="heavy-ball coefficient (--optimizer momentum)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and the shuffling"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="floating-point type"
    )
    parser.add_argument(
        "--all-lowrank", action="store_true", help="make the last layer low-rank too"
    )
    parser.add_argument(
        "--init-decay",
        type=float,
        default=None,
        help="initial singular values base^-k (the seed's initialization test uses 2 and 10; "
        "None: those of the random draw)",
    )
    parser.add_argument(
        "--n-train", type=int, default=None, help="use the first N training examples (None: all)"
    )
    parser.add_argument(
        "--n-test", type=int, default=None, help="use the first N test examples (None: all)"
    )
    parser.add_argument(
        "--out",
        default="training_run",
        metavar="DIR",
        help="output folder: model.npz, history.csv, curves.png, summary.json",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="checkpoint file, replaced after every epoch (None: model.npz in --out)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run saved in the checkpoint file"
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also write the summary to this file"
    )
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


def _config(args: argparse.Namespace) -> Any:
    from .experiment import RunConfig

    return RunConfig(
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


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Check the output folder, the checkpoint file and the JSON file before any work."""
    from .._files import check_output_dir, check_output_file

    out = check_output_dir(args.out, "--out")
    checkpoint = Path(args.checkpoint) if args.checkpoint else out / "model.npz"
    check_output_file(checkpoint, "--checkpoint")
    if args.json:
        check_output_file(args.json, "--json")
    if args.resume and not checkpoint.is_file():
        raise ValueError(f"--resume: no checkpoint at {checkpoint}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir: {args.data_dir} is not a folder")
    return out, checkpoint


def run(args: argparse.Namespace) -> int:
    if args.backend == "torch":
        try:
            from ..torch import command as torch_command
        except ImportError as exc:
            print(f"error: --backend torch needs PyTorch ({exc})", file=sys.stderr)
            return 2
        return torch_command.run(args)

    from .._files import write_json
    from .checkpoint import CheckpointError
    from .outputs import plot_curves, write_history

    try:
        cfg = _config(args)
        out, checkpoint = _paths(args)
        summary = run_training_command(cfg, args, out, checkpoint)
    except (ValueError, TypeError, ImportError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    write_history(out, summary["history"])
    curves = plot_curves(out, summary["history"]) if summary["history"] else None
    summary["files"] = {
        "model": str(checkpoint),
        "history": str(out / "history.csv"),
        "curves": str(curves) if curves else None,
    }
    write_json(out / "summary.json", summary)
    if args.json:
        write_json(args.json, summary)
    print(
        f"model: {checkpoint}; history: {out / 'history.csv'}; curves: "
        f"{curves if curves else 'none (pip install matplotlib)'}"
    )
    if summary["status"] != "success":
        print(summary["message"], file=sys.stderr)
        return 1
    return 0


def run_training_command(
    cfg: Any, args: argparse.Namespace, out: Path, checkpoint: Path
) -> dict[str, Any]:
    """Train with the command's options; the history CSV follows every epoch."""
    from .experiment import run_training
    from .outputs import write_history

    return run_training(
        cfg,
        checkpoint=checkpoint,
        resume=args.resume,
        progress=not args.no_progress,
        log=lambda s: print(s, flush=True),
        data_dir=args.data_dir,
        on_epoch=lambda history: write_history(out, history),
    )


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
