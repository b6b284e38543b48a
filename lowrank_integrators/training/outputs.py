"""The output folder of a training run: per-epoch history as CSV and PNG curves.

``history.csv`` (always) has one row per epoch: ``epoch, train_loss, test_loss,
test_accuracy, passes_per_step, seconds`` and one ``rank_layerK`` column per low-rank layer.
``curves.png`` (when matplotlib, the ``plot`` extra, is installed) shows the losses, the test
accuracy and the ranks against the epoch. Both are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_write, write_text

__all__ = ["HISTORY_COLUMNS", "history_csv", "plot_curves", "write_history"]

#: Columns of ``history.csv`` before the rank columns.
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "passes_per_step",
    "seconds",
)


def history_csv(history: Sequence[dict[str, Any]]) -> str:
    """The per-epoch records as CSV text (one ``rank_layerK`` column per low-rank layer)."""
    n_ranks = max((len(h.get("ranks", [])) for h in history), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*HISTORY_COLUMNS, *(f"rank_layer{k + 1}" for k in range(n_ranks))])
    for h in history:
        ranks = list(h.get("ranks", []))
        writer.writerow([h.get(c, "") for c in HISTORY_COLUMNS] + ranks)
    return buf.getvalue()


def write_history(folder: str | os.PathLike, history: Sequence[dict[str, Any]]) -> Path:
    """Write ``history.csv`` into ``folder``; return its path."""
    path = Path(folder) / "history.csv"
    write_text(path, history_csv(history))
    return path


def plot_curves(folder: str | os.PathLike, history: Sequence[dict[str, Any]]) -> Path | None:
    """Draw ``curves.png`` into ``folder``; ``None`` when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_rank = (fig.add_subplot(1, 3, k) for k in (1, 2, 3))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s--", label="test")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=9)
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "o-")
    ax_acc.set_ylabel("test accuracy")
    n_ranks = max((len(h["ranks"]) for h in history), default=0)
    markers = "os^vD<>p"
    for k in range(n_ranks):
        ax_rank.plot(
            epochs,
            [h["ranks"][k] if k < len(h["ranks"]) else None for h in history],
            marker=markers[k % len(markers)],
            linestyle=("-", "--", ":", "-.")[k % 4],
            label=f"layer {k + 1}",
        )
    ax_rank.set_ylabel("rank")
    ax_rank.yaxis.set_major_locator(MaxNLocator(integer=True))
    if n_ranks:
        ax_rank.legend(fontsize=9)
    for ax in (ax_loss, ax_acc, ax_rank):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
    path = Path(folder) / "curves.png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path
