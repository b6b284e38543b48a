"""Rank against time for the rank-adaptive integrators, and their error against the tolerance.

After the rank figures of Ceruti, Kusch, Lubich (2022), arXiv:2104.05247: the rank chosen by
the rank-adaptive (augmented) BUG and its successors along a run of the discrete Schrödinger
equation V3 and of the Lyapunov equation with a low-rank source V7, and the error at the final
time for two truncation tolerances. With a report of the full mode, a fourth panel shows the
error over a sweep of ``h`` with a fixed absolute tolerance (the ``n theta`` term of the error
bound). Reads the ``rank_adaptivity``, ``rank_growth`` and ``tolerance_growth`` studies::

    lowrank-integrators validate --only "V3*,V7-lyapunov/*" --out validation_report
    python paper_figures/rank_adaptive.py --report validation_report --out rank_adaptive.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    floats,
    load_report,
    missing_study,
    mode_note,
    new_figure,
    no_data,
    parse_report_args,
    positive,
    reference_slopes,
    save,
    select,
    style,
)

SCHRODINGER = "V3-schrodinger"
LYAPUNOV = "V7-lyapunov"
ONLY = "V3*,V7-lyapunov/*"


def _rank_panel(ax: Any, results: list[dict[str, Any]], title: str) -> None:
    """Step plot of rank against time, one line per method."""
    if not results:
        no_data(ax, f"no rank history in the report\n({title})")
        return
    for r in results:
        kw = style(r["method"])
        kw.pop("marker")
        t, rank = floats(r["series"]["t"]), floats(r["series"]["rank"])
        ax.step(t, rank, where="post", lw=1.6, **kw)
    t = floats(results[0]["series"]["t"])
    if t.size > 1:
        title += f", h = {float(t[1] - t[0]):.3g}"
    ax.set_xlabel("time t")
    ax.set_ylabel("rank")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _tolerance_panel(ax: Any, results: list[dict[str, Any]]) -> None:
    """Error at the final time against the truncation tolerance, final ranks annotated."""
    if not results:
        no_data(ax, "no rank_adaptivity study in the report")
        return
    thetas = []
    for r in results:
        theta, err = positive(r["series"]["theta"]), positive(r["series"]["error"])
        thetas.append(theta)
        kw = style(r["method"])
        ranks = r["series"].get("final_rank", [])
        if ranks:
            kw["label"] += " (final rank " + ", ".join(str(k) for k in ranks) + ")"
        ax.loglog(theta, err, ls="-", ms=5, **kw)
    ax.invert_xaxis()
    ax.set_xlabel(r"truncation tolerance $\vartheta$")
    ax.set_ylabel(r"error at T, $\|Y_n - Y(T)\|_F$")
    ax.set_title(f"{SCHRODINGER}: error against the tolerance")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def _growth_panel(ax: Any, results: list[dict[str, Any]]) -> None:
    """Error against ``h`` with a fixed absolute tolerance (full mode only)."""
    if not results:
        no_data(
            ax,
            "error against h with a fixed tolerance:\n"
            "tolerance_growth studies run in the full mode\n(lowrank-integrators validate)",
        )
        ax.set_title(f"{SCHRODINGER}: fixed tolerance, shrinking h")
        return
    hs, tops = [], []
    for r in results:
        h, err = positive(r["series"]["h"]), positive(r["series"]["error"])
        hs.append(h)
        ax.loglog(h, err, ls="-", ms=5, **style(r["method"]))
        if np.any(np.isfinite(err)):
            tops.append(float(err[np.nanargmax(h)]))
    if tops:
        reference_slopes(ax, np.concatenate(hs), {1: 0.4 * min(tops)})
    ax.set_xlabel("step size h")
    ax.set_ylabel(r"error at T, $\|Y_n - Y(T)\|_F$")
    ax.set_title(f"{SCHRODINGER}: fixed absolute tolerance, shrinking h")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def main(argv: Sequence[str] | None = None) -> Path:
    """Draw the figure; return the path of the PNG.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--report DIR_or_FILE --out OUT.png``; ``None`` reads ``sys.argv``.

    Returns
    -------
    Path
        The PNG written.
    """
    args = parse_report_args(argv, __doc__.splitlines()[0], "rank_adaptive.png")
    report = load_report(args.report, ONLY)
    adaptivity = select(report, problem=SCHRODINGER, study="rank_adaptivity", series=("t", "rank"))
    growth = select(report, problem=LYAPUNOV, study="rank_growth", series=("t", "rank"))
    tolerance = select(report, problem=SCHRODINGER, study="tolerance_growth", series=("h",))
    if not (adaptivity or growth):
        raise missing_study(args.report, f"rank history of {SCHRODINGER} or {LYAPUNOV}", ONLY)
    theta = min((float(np.nanmin(floats(r["series"]["theta"]))) for r in adaptivity), default=0)
    fig, axes = new_figure(2, 2, width=5.6, height=4.2)
    _rank_panel(
        axes[0],
        adaptivity,
        f"{SCHRODINGER}: rank along a run" + (rf", $\vartheta$ = {theta:.0e}" if theta else ""),
    )
    _rank_panel(axes[1], growth, f"{LYAPUNOV}: rank from a rank-1 start")
    _tolerance_panel(axes[2], adaptivity)
    _growth_panel(axes[3], tolerance)
    note = mode_note(report)
    fig.suptitle("Rank-adaptive integrators" + (f" ({note})" if note else ""))
    return save(fig, args.out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
