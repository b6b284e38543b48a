"""Dynamical low-rank training on Fashion-MNIST: test accuracy against compression, ranks.

After the compression study of Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022),
arXiv:2205.13571: the 5-layer network 784-500-500-500-500-10 trained by DLRT (rank-adaptive
augmented BUG with relative truncation tolerance tau) for tau in {0.05, 0.1, 0.15}, against
dense training. Left: test accuracy against the compression rate ``1 - params / dense params``
of the network evaluated (filled) and trained (open); right: the ranks of the low-rank layers at
the end of training. Reads the JSON files of ``benchmarks/dlrt_fashion_mnist.py``::

    python benchmarks/dlrt_fashion_mnist.py --study compression \\
        --epochs 5 --rank0 100 --out benchmarks/results/dlrt_fashion_mnist_compression_rank100.json
    python paper_figures/dlrt_compression.py --report benchmarks/results \\
        --out dlrt_compression.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_RESULTS, MissingInputError, load_json, new_figure, parse_args, save

PATTERN = "dlrt_fashion_mnist_compression*.json"
COMMAND = (
    "python benchmarks/dlrt_fashion_mnist.py --study compression --epochs 5 --rank0 100 --out {out}"
)
TAU_COLORS = {0.05: "tab:blue", 0.1: "tab:orange", 0.15: "tab:green"}
RANK_MARKERS = ("o", "s", "^", "D")


def input_files(path: Path) -> list[Path]:
    """The compression results named by ``--report``: a JSON file, or every match in a folder.

    Parameters
    ----------
    path : Path
        A JSON file, or a folder searched for ``dlrt_fashion_mnist_compression*.json``.

    Returns
    -------
    list of Path
        The files to read.

    Raises
    ------
    MissingInputError
        When the file, or any match in the folder, is missing.
    """
    path = Path(path)
    if path.suffix == ".json":
        load_json(path, COMMAND.format(out=path))  # raises with the command when missing
        return [path]
    files = sorted(path.glob(PATTERN))
    if not files:
        raise MissingInputError(
            path / PATTERN,
            COMMAND.format(out=path / "dlrt_fashion_mnist_compression_rank100.json"),
        )
    return files


def load_runs(files: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The DLRT runs of all files, and one dense run (the same in every file of a study).

    Returns
    -------
    runs : list of dict
        The low-rank runs that succeeded, each with the initial rank under ``"rank0"``.
    dense : dict or None
        A dense reference run.
    """
    runs, dense = [], None
    for f in files:
        data = load_json(f, COMMAND.format(out=f))
        if data.get("study") != "compression":
            raise SystemExit(f"error: {f} is not a compression study (study={data.get('study')!r})")
        rank0 = data.get("arguments", {}).get("rank0")
        for run in data.get("runs", []):
            if run.get("status") != "success" or run.get("test_accuracy") is None:
                continue
            if run["config"]["integrator"] == "dense":
                dense = dense or run
            else:
                runs.append({**run, "rank0": rank0 if rank0 is not None else run["config"]["rank"]})
    return runs, dense


def _tau_color(tau: float | None) -> str:
    """One colour per truncation tolerance."""
    return TAU_COLORS.get(round(float(tau), 4), "tab:gray") if tau is not None else "tab:gray"


def _accuracy_panel(ax: Any, runs: list[dict[str, Any]], dense: dict[str, Any] | None) -> None:
    """Test accuracy against the evaluation and training compression rates."""
    rank0s = sorted({r["rank0"] for r in runs})
    for run in runs:
        tau = run["config"]["tau"]
        color = _tau_color(tau)
        marker = RANK_MARKERS[rank0s.index(run["rank0"]) % len(RANK_MARKERS)]
        acc = 100 * run["test_accuracy"]
        c_eval = 100 * run["compression_evaluation"]
        c_train = 100 * run["compression_training"]
        ax.plot([c_train, c_eval], [acc, acc], color=color, lw=0.8, alpha=0.6)
        ax.plot(c_eval, acc, marker=marker, ms=9, color=color, ls="none")
        ax.plot(c_train, acc, marker=marker, ms=9, color=color, mfc="white", ls="none")
    if dense is not None:
        ax.axhline(100 * dense["test_accuracy"], color="k", ls="--", lw=1.0)
    ax.axvline(0.0, color="k", lw=0.5)
    # legend entries: colour = tau, marker = initial rank, fill = what is counted
    handles = []
    for tau in sorted({r["config"]["tau"] for r in runs}, key=lambda x: float(x)):
        handles.append(
            ax.plot([], [], color=_tau_color(tau), marker="o", ls="none", label=f"tau = {tau:g}")[0]
        )
    for k, r0 in enumerate(rank0s):
        m = RANK_MARKERS[k % len(RANK_MARKERS)]
        handles.append(
            ax.plot([], [], color="k", marker=m, ls="none", label=f"initial rank {r0}")[0]
        )
    handles.append(ax.plot([], [], color="k", marker="o", ls="none", label="evaluation c.r.")[0])
    handles.append(
        ax.plot([], [], color="k", marker="o", mfc="white", ls="none", label="training c.r.")[0]
    )
    if dense is not None:
        handles.append(
            ax.plot(
                [],
                [],
                color="k",
                ls="--",
                label=f"dense: {100 * dense['test_accuracy']:.2f}%",
            )[0]
        )
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.set_xlabel("compression rate [%] (1 - parameters / dense parameters)")
    ax.set_ylabel("test accuracy [%]")
    ax.set_title("test accuracy against compression")
    ax.grid(True, alpha=0.3)


def _ranks_panel(ax: Any, runs: list[dict[str, Any]], width_dense: int | None) -> None:
    """Grouped bars: the final rank of every low-rank layer, one bar per run."""
    n_layers = max((len(r["ranks"]) for r in runs), default=0)
    if n_layers == 0:
        return
    width = 0.8 / len(runs)
    rank0s = sorted({r["rank0"] for r in runs})
    hatches = ("", "//", "..", "xx")
    for i, run in enumerate(runs):
        x = np.arange(1, len(run["ranks"]) + 1) + (i - (len(runs) - 1) / 2) * width
        tau = run["config"]["tau"]
        hatch = hatches[rank0s.index(run["rank0"]) % len(hatches)]
        ax.bar(
            x,
            run["ranks"],
            width=width,
            color=_tau_color(tau),
            hatch=hatch,
            edgecolor="k",
            lw=0.5,
            label=f"tau = {tau:g}, initial rank {run['rank0']}",
        )
    if width_dense:
        ax.axhline(width_dense, color="k", ls="--", lw=0.8, label=f"full rank {width_dense}")
    ax.set_xticks(np.arange(1, n_layers + 1))
    ax.set_xticklabels([f"layer {k}" for k in range(1, n_layers + 1)])
    ax.set_ylabel("rank at the end of training")
    ax.set_title("ranks of the low-rank layers")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def main(argv: Sequence[str] | None = None) -> Path:
    """Draw the figure and print a table; return the path of the PNG.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--report DIR_or_FILE --out OUT.png``; ``None`` reads ``sys.argv``.

    Returns
    -------
    Path
        The PNG written.
    """
    args = parse_args(
        argv,
        __doc__.splitlines()[0],
        default_report=DEFAULT_RESULTS,
        default_out="dlrt_compression.png",
        report_help=f"a compression JSON file, or a folder holding {PATTERN}",
    )
    runs, dense = load_runs(input_files(args.report))
    if not runs:
        raise SystemExit(f"error: {args.report} holds no successful DLRT run")
    runs.sort(key=lambda r: (r["rank0"], float(r["config"]["tau"])))
    widths = [int(w) for w in runs[0]["config"]["arch"].split("-")[1:-1]]
    fig, (ax_acc, ax_rank) = new_figure(2, width=6.0, height=4.6)
    _accuracy_panel(ax_acc, runs, dense)
    _ranks_panel(ax_rank, runs, max(widths) if widths else None)
    cfg = runs[0]["config"]
    fig.suptitle(
        f"DLRT on Fashion-MNIST, {cfg['arch']}, {cfg['epochs']} epochs, "
        f"SGD lr {cfg['lr']:g}, batch {cfg['batch_size']}"
    )
    print(table(runs, dense))
    return save(fig, args.out)


def table(runs: list[dict[str, Any]], dense: dict[str, Any] | None) -> str:
    """A Markdown table of the runs: accuracy, ranks and compression rates."""
    lines = [
        "| run | test accuracy | ranks | eval. c.r. | train. c.r. |",
        "|---|---|---|---|---|",
    ]
    if dense is not None:
        lines.append(f"| dense | {100 * dense['test_accuracy']:.2f}% | full | 0% | 0% |")
    for r in runs:
        lines.append(
            f"| tau = {r['config']['tau']:g}, initial rank {r['rank0']} "
            f"| {100 * r['test_accuracy']:.2f}% | {', '.join(str(k) for k in r['ranks'])} "
            f"| {100 * r['compression_evaluation']:.1f}% "
            f"| {100 * r['compression_training']:.1f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
