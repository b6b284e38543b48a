"""LeNet5 on Fashion-MNIST (PyTorch): accuracy and rank evolution, dense against DLRT and TDLRT.

After the LeNet5 experiment of Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022,
arXiv:2205.13571) and the Tucker convolutions of Zangrando et al. (2023, arXiv:2305.19059).
Left: test accuracy after each epoch, per run. Right: the rank of each low-rank layer after each
epoch (for a Tucker convolution, the rank of its output-channel mode), the epoch-0 point being
the rank the model was converted at. Reads the JSON file of
``benchmarks/lenet5_fashion_mnist.py``::

    OPENBLAS_NUM_THREADS=1 python benchmarks/lenet5_fashion_mnist.py --threads 1 \\
        --n-train 60000 --n-test 10000 --epochs 10 --batch-size 64 --lr 0.1 \\
        --out benchmarks/results/lenet5_fashion_mnist.json
    python paper_figures/lenet5_fashion_mnist.py \\
        --report benchmarks/results/lenet5_fashion_mnist.json --out lenet5_fashion_mnist.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import DEFAULT_RESULTS, load_json, new_figure, parse_args, save

COMMAND = (
    "OPENBLAS_NUM_THREADS=1 python benchmarks/lenet5_fashion_mnist.py --threads 1 "
    "--n-train 60000 --n-test 10000 --epochs 10 --batch-size 64 --lr 0.1 --out {out}"
)
LAYER_STYLES = {"conv1": "o", "conv2": "s", "fc1": "^"}
#: The largest rank of each layer of LeNet5 (of the output-channel mode for Tucker): the
#: conversion clips the initial rank to it.
LAYER_LIMITS = {"conv1": 20, "conv2": 50, "fc1": 500}


def _first_rank(value: Any) -> int:
    return int(value[0]) if isinstance(value, list) else int(value)


def main(argv: Sequence[str] | None = None) -> Path:
    """Draw the figure and print the table; return the path of the PNG.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--report FILE.json --out OUT.png``; ``None`` reads ``sys.argv``.

    Returns
    -------
    Path
        The PNG written.
    """
    args = parse_args(
        argv,
        __doc__.splitlines()[0],
        default_report=DEFAULT_RESULTS,
        default_out="lenet5_fashion_mnist.png",
        report_help="the JSON file of benchmarks/lenet5_fashion_mnist.py, or its folder",
    )
    path = Path(args.report)
    if path.is_dir():
        path = path / "lenet5_fashion_mnist.json"
    results = load_json(path, COMMAND.format(out=path))
    runs = results["runs"]
    if not runs:
        raise SystemExit(f"error: {path} holds no run")
    fig, (ax_acc, ax_rank) = new_figure(2, width=6.0, height=4.4)
    colors = [f"C{i}" for i in range(len(runs))]
    for run, color in zip(runs, colors, strict=True):
        epochs = [h["epoch"] for h in run["history"]]
        accuracy = [100 * h["test_accuracy"] for h in run["history"]]
        ax_acc.plot(epochs, accuracy, marker="o", color=color, label=run["name"])
        if not run["ranks"]:
            continue
        initial = run.get("initial_ranks") or {
            k: min(int(results["config"]["rank0"]), n) for k, n in LAYER_LIMITS.items()
        }
        for layer, marker in LAYER_STYLES.items():
            if layer not in run["ranks"]:
                continue
            start = _first_rank(initial[layer])
            series = [_first_rank(h["ranks"][layer]) for h in run["history"]]
            ax_rank.plot(
                [0, *epochs],
                [start, *series],
                marker=marker,
                color=color,
                label=f"{run['name']}: {layer}",
            )
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy [%]")
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    ax_rank.set_xlabel("epoch")
    ax_rank.set_ylabel("rank (Tucker: output-channel mode)")
    ax_rank.legend(fontsize=6, ncol=2)
    ax_rank.grid(alpha=0.3)
    cfg = results["config"]
    fig.suptitle(
        f"LeNet5 on Fashion-MNIST ({cfg['n_train']} training / {cfg['n_test']} test images), "
        f"SGD lr {cfg['lr']:g}, batch {cfg['batch_size']}"
    )
    print(table(runs))
    return save(fig, args.out)


def table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table of the runs: accuracy, compression, ranks, time per epoch."""
    lines = [
        "| run | test accuracy | eval. c.r. | train. c.r. | ranks | CPU s, last epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        ranks = ", ".join(f"{k} {v}" for k, v in r["ranks"].items()) or "full"
        lines.append(
            f"| {r['name']} | {100 * r['test_accuracy']:.2f}% "
            f"| {100 * r['compression_evaluation']:.1f}% | {100 * r['compression_training']:.1f}% "
            f"| {ranks} | {r.get('cpu_seconds_last_epoch', r['cpu_seconds_per_epoch']):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
