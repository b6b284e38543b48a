"""``lowrank-integrators evaluate``: accuracy, ranks and compression of a saved model.

Reads a model (a checkpoint written by ``lowrank-integrators train``), rebuilds its network from
the stored configuration, checks every array against it and evaluates it on the test split of
its data set (or of ``--dataset``). Exit status 2 for a missing, corrupt or mismatched model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["HELP", "add_arguments", "evaluate_model", "run"]

HELP = "evaluate a saved model: test accuracy, ranks and compression"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model file (model.npz of a train run)")
    parser.add_argument(
        "--dataset",
        default=None,
        choices=("digits", "fashion-mnist", "mnist1d"),
        help="data set to evaluate on (None: the one the model was trained on)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of the Fashion-MNIST IDX files (None: /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--n-test", type=int, default=None, help="use the first N test examples (None: all)"
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also write the results to this file"
    )


def evaluate_model(
    path: Any, dataset: str | None = None, data_dir: Any = None, n_test: int | None = None
) -> dict[str, Any]:
    """Evaluate the model saved at ``path`` on a test split.

    Returns
    -------
    dict
        ``dataset``, ``n_test``, ``test_loss``, ``test_accuracy``, ``ranks``, ``parameters``
        (dense, evaluation, training counts), ``compression_evaluation`` and
        ``compression_training``, ``epochs`` (completed when saved) and ``config``.

    Raises
    ------
    FileNotFoundError, CheckpointError, ValueError
        A missing or corrupt file, arrays that do not fit the stored configuration, a data set
        that does not fit the network, ``n_test < 1``.
    """
    import dataclasses

    import numpy as np

    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .experiment import RunConfig, build, state_mismatches

    if n_test is not None and n_test < 1:
        raise ValueError(f"n_test must be >= 1 (or None for all), got {n_test}")
    state, meta = load_checkpoint(path)
    try:
        cfg = RunConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the stored configuration is not usable ({exc})") from None
    net, _ = build(cfg)
    problems = state_mismatches(net, state, np.dtype(cfg.dtype))
    if problems:
        raise ValueError(f"{path} does not fit its configuration: " + "; ".join(problems))
    name = dataset or cfg.dataset
    data = load_dataset(name, dtype=np.dtype(cfg.dtype), path=data_dir).subset(None, n_test)
    widths = [net.layers[0].n_in, net.layers[-1].n_out]
    if widths[0] != data.n_features or widths[1] < data.n_classes:
        raise ValueError(
            f"the model ({cfg.arch}) does not fit {data.name}: {data.n_features} features and "
            f"{data.n_classes} classes"
        )
    loss, acc = net.loss_and_accuracy(state.weights, state.params, data.X_test, data.y_test)
    counts = net.parameter_counts(state.ranks)
    return {
        "model": str(path),
        "dataset": data.name,
        "n_test": int(data.X_test.shape[0]),
        "test_loss": float(loss),
        "test_accuracy": float(acc),
        "ranks": list(state.ranks),
        "parameters": counts,
        "compression_evaluation": 1.0 - counts["evaluation"] / counts["dense"],
        "compression_training": 1.0 - counts["training"] / counts["dense"],
        "epochs": len(meta.get("history", [])),
        "config": dataclasses.asdict(cfg),
    }


def run(args: argparse.Namespace) -> int:
    from .._files import check_output_file, write_json
    from .checkpoint import CheckpointError

    try:
        if args.json:
            check_output_file(args.json, "--json")
        result = evaluate_model(args.model, args.dataset, args.data_dir, args.n_test)
    except (ValueError, TypeError, ImportError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    p = result["parameters"]
    print(f"model: {result['model']} ({result['epochs']} epochs, {result['config']['arch']})")
    print(f"test accuracy: {result['test_accuracy']:.4f} on {result['n_test']} examples "
          f"of {result['dataset']} (loss {result['test_loss']:.4f})")  # fmt: skip
    print(f"ranks per low-rank layer: {result['ranks']}")
    print(
        f"parameters: dense {p['dense']}, evaluation {p['evaluation']} "
        f"(compression {100 * result['compression_evaluation']:.1f}%), training "
        f"{p['training']} (compression {100 * result['compression_training']:.1f}%)"
    )
    if args.json:
        write_json(args.json, result)
    return 0
