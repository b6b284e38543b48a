"""Norm and energy drift along runs of the discrete Schrödinger equation V3.

After the conservation figures of Ceruti, Kusch, Lubich (2022), arXiv:2104.05247: projector
splitting and the rank-adaptive BUG keep the norm of the wave function up to the discarded
tails, while the fixed-rank BUG drifts, at first order in ``h``. Reads the ``conservation`` and
``drift`` studies of a validation report::

    lowrank-integrators validate --only "V3*" --out validation_report
    python paper_figures/schrodinger_drift.py --report validation_report \\
        --out schrodinger_drift.png
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

PROBLEM = "V3-schrodinger"
ONLY = "V3*"


def _time_panel(ax: Any, results: list[dict[str, Any]], key: str, what: str) -> None:
    """Relative drift of one quantity against time, one line per method."""
    drawn = False
    for r in results:
        if key not in r["series"]:
            continue
        kw = style(r["method"])
        kw.pop("marker")
        # the drift is zero at t = 0, which a log axis leaves out
        t, d = floats(r["series"]["t"]), positive(np.abs(floats(r["series"][key])))
        ax.semilogy(t, d, lw=1.5, **kw)
        drawn = True
    if not drawn:
        no_data(ax, f"no {what} drift in the report")
        return
    ax.set_xlabel("time t")
    ax.set_ylabel(f"relative {what} drift")
    ax.set_title(f"{what} drift along a run (h = {_step(results):.3g})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def _step(results: list[dict[str, Any]]) -> float:
    """The step size of a run, from its time grid."""
    t = floats(results[0]["series"]["t"])
    return float(t[1] - t[0]) if t.size > 1 else float("nan")


def _order_panel(ax: Any, results: list[dict[str, Any]]) -> None:
    """Norm drift at the final time against ``h`` with a slope-1 line."""
    if not results:
        no_data(ax, "no drift study in the report")
        return
    hs, tops = [], []
    for r in results:
        h, d = positive(r["series"]["h"]), positive(r["series"]["drift_norm"])
        kw = style(r["method"])
        order = r["summary"].get("observed_order")
        if order is not None:
            kw["label"] += f" (order {float(order):.2f})"
        ax.loglog(h, d, ls="-", ms=5, **kw)
        hs.append(h)
        if np.any(np.isfinite(d)):
            tops.append(float(d[np.nanargmax(h)]))
    if tops:
        reference_slopes(ax, np.concatenate(hs), {1: 0.5 * min(tops)})
    ax.set_xlabel("step size h")
    ax.set_ylabel("relative norm drift at T")
    ax.set_title("fixed-rank BUG: norm drift against h")
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
    args = parse_report_args(argv, __doc__.splitlines()[0], "schrodinger_drift.png")
    report = load_report(args.report, ONLY)
    conservation = select(report, problem=PROBLEM, study="conservation", series=("t",))
    drift = select(report, problem=PROBLEM, study="drift", series=("h", "drift_norm"))
    if not (conservation or drift):
        raise missing_study(args.report, f"conservation study of {PROBLEM}", ONLY)
    fig, axes = new_figure(3, width=5.0, height=4.2)
    if conservation:
        _time_panel(axes[0], conservation, "drift_norm", "norm")
        _time_panel(axes[1], conservation, "drift_energy", "energy")
    else:
        no_data(axes[0], "no conservation study in the report")
        no_data(axes[1], "no conservation study in the report")
    _order_panel(axes[2], drift)
    note = mode_note(report)
    fig.suptitle(
        f"{PROBLEM}: discrete Schrödinger equation, norm and energy"
        + (f" ({note})" if note else "")
    )
    return save(fig, args.out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
