"""Dynamical low-rank training from ill-conditioned initial weights: DLRT against ``W = U V^T``.

After the initialization study of Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco (2022),
arXiv:2205.13571: the weights of the 5-layer network 784-500-500-500-500-10 start with singular
values decaying like ``2^-k`` or ``10^-k``. DLRT (augmented BUG at the same fixed rank, and
rank-adaptive) is compared with the vanilla factorisation ``W = U V^T`` trained by SGD on ``U``
and ``V``, with the same learning rate and epochs. The panels show the test accuracy per epoch;
a table of the final numbers is drawn beside them and printed. Reads the JSON file of
``benchmarks/dlrt_fashion_mnist.py``::

    python benchmarks/dlrt_fashion_mnist.py --study init \\
        --epochs 5 --lr 0.2 --out benchmarks/results/dlrt_fashion_mnist_init.json
    python paper_figures/dlrt_init.py --report benchmarks/results --out dlrt_init.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_RESULTS, load_json, new_figure, parse_args, save

FILE = "dlrt_fashion_mnist_init.json"
COMMAND = "python benchmarks/dlrt_fashion_mnist.py --study init --epochs 5 --lr 0.2 --out {out}"


def run_name(run: dict[str, Any]) -> str:
    """``DLRT, fixed rank 20``, ``DLRT, tau = 0.1`` or ``vanilla U V^T, rank 20``."""
    c = run["config"]
    if c["integrator"] == "vanilla":
        return f"vanilla U V^T, rank {c['rank']}"
    if c["tau"] is None:
        return f"DLRT, fixed rank {c['rank']}"
    return f"DLRT, tau = {c['tau']:g} (from rank {c['rank']})"


def _style(run: dict[str, Any]) -> dict[str, Any]:
    """Line style of a run: DLRT at fixed rank, rank-adaptive DLRT, vanilla factorisation."""
    c = run["config"]
    if c["integrator"] == "vanilla":
        return {"color": "k", "marker": "x", "ls": "--"}
    if c["tau"] is None:
        return {"color": "tab:blue", "marker": "o", "ls": "-"}
    return {"color": "tab:orange", "marker": "s", "ls": "-"}


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of the initialization study at ``path`` (the JSON file or its folder)."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / FILE
    data = load_json(file, COMMAND.format(out=file))
    if data.get("study") != "init":
        raise SystemExit(f"error: {file} is not an init study (study={data.get('study')!r})")
    runs = [r for r in data.get("runs", []) if r.get("config", {}).get("init_decay")]
    if not runs:
        raise SystemExit(f"error: {file} holds no run")
    return runs


def _acc(run: dict[str, Any]) -> str:
    """The final test accuracy in percent."""
    a = run.get("test_accuracy")
    return f"{100 * a:.2f}%" if a is not None else "n/a"


def _ranks(run: dict[str, Any]) -> str:
    """The final ranks per layer, or the fixed rank of the vanilla factorisation."""
    ranks = run.get("ranks") or []
    if ranks:
        return ", ".join(str(k) for k in ranks)
    return str(run["config"]["rank"]) + " (fixed)"


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows: initial decay, run, final accuracy, best accuracy, final ranks, eval. c.r."""
    out = []
    for r in runs:
        best = max(
            (h["test_accuracy"] for h in r.get("history", []) if h.get("test_accuracy")),
            default=None,
        )
        out.append(
            [
                f"{r['config']['init_decay']:g}^-k",
                run_name(r),
                _acc(r),
                f"{100 * best:.2f}%" if best is not None else "n/a",
                _ranks(r),
                f"{100 * r['compression_evaluation']:.1f}%",
            ]
        )
    return out


HEADER = ["initial σ_k", "run", "final test acc.", "best test acc.", "ranks", "eval. c.r."]


def table(runs: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`rows`."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(runs)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    """Draw the figure and print the table; return the path of the PNG.

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
        default_out="dlrt_init.png",
        report_help=f"{FILE} or the folder holding it",
    )
    runs = load_runs(args.report)
    decays = sorted({float(r["config"]["init_decay"]) for r in runs})
    fig, axes = new_figure(len(decays), 2, width=5.6, height=3.4)
    for ax, decay in zip(axes, decays, strict=False):
        for r in runs:
            if float(r["config"]["init_decay"]) != decay:
                continue
            hist = r.get("history", [])
            ep = np.array([h["epoch"] for h in hist], dtype=float)
            acc = np.array([100 * (h["test_accuracy"] or np.nan) for h in hist], dtype=float)
            label = run_name(r).replace("U V^T", "$UV^T$")
            ax.plot(ep, acc, label=label, ms=6, lw=1.5, **_style(r))
        ax.set_title(rf"initial singular values $\sigma_k \propto {decay:g}^{{-k}}$")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy [%]")
        ax.set_ylim(0, 100)
        ax.axhline(10.0, color="gray", lw=0.6, ls=":")
        ax.annotate(
            "chance (10 classes)",
            (0.5, 10.0),
            xycoords=("axes fraction", "data"),
            ha="center",
            va="bottom",
            fontsize=7,
            color="gray",
        )
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    # the bottom row holds the table
    for ax in axes[len(decays) :]:
        ax.remove()
    tab_ax = fig.add_subplot(2, 1, 2)
    tab_ax.axis("off")
    tab = tab_ax.table(cellText=rows(runs), colLabels=HEADER, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.auto_set_column_width(list(range(len(HEADER))))
    tab.scale(1.0, 1.3)
    cfg = runs[0]["config"]
    fig.suptitle(
        f"DLRT vs vanilla factorisation on Fashion-MNIST, {cfg['arch']}, {cfg['epochs']} "
        f"epochs, SGD lr {cfg['lr']:g}, {cfg['dtype']}"
    )
    print(table(runs))
    return save(fig, args.out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
