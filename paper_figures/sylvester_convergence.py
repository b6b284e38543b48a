"""Error at the final time against the step size on the Sylvester rotation problem V1.

After the convergence figures of Ceruti, Lubich (2022), arXiv:2010.02022: the BUG integrator
converges at first order on ``Y' = W1 Y + Y + Y W2^T`` while projector splitting is exact on this
tangent field; the augmented and midpoint variants are drawn beside them. Reads the
``convergence`` and ``exactness`` studies of a validation report::

    lowrank-integrators validate --only "V1*" --out validation_report
    python paper_figures/sylvester_convergence.py --report validation_report \\
        --out sylvester_convergence.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import (
    load_report,
    method_name,
    missing_study,
    mode_note,
    new_figure,
    parse_report_args,
    positive,
    reference_slopes,
    save,
    select,
    style,
)

PROBLEM = "V1-sylvester"
ONLY = "V1*"


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
    args = parse_report_args(argv, __doc__.splitlines()[0], "sylvester_convergence.png")
    report = load_report(args.report, ONLY)
    results = select(
        report, problem=PROBLEM, study=("convergence", "exactness"), series=("h", "error")
    )
    if not results:
        raise missing_study(args.report, f"convergence study of {PROBLEM}", ONLY)

    fig, (ax,) = new_figure(width=7.5, height=5.0)
    all_h: list[np.ndarray] = []
    lowest: dict[int, float] = {}  # per rounded order, the lowest error at the largest h
    floored = False
    for r in results:
        h, e = positive(r["series"]["h"]), positive(r["series"]["error"])
        kw = style(r["method"])
        order = r["summary"].get("observed_order")
        if r["study"] == "exactness":
            kw["label"] = f"{method_name(r['method'])}: exact (round-off)"
            ax.loglog(h, e, ls="--", mfc="none", ms=6, lw=1.0, **kw)
            continue
        if order is not None:
            kw["label"] += f" (order {float(order):.2f})"
        line = ax.loglog(h, e, ls="-", ms=5, lw=1.4, **kw)[0]
        floor = float(r["series"].get("floor") or 0.0)
        below = e < floor
        if np.any(below):  # left out of the fitted order: drawn open
            ax.plot(
                h[below],
                e[below],
                ls="none",
                marker=kw["marker"],
                ms=5,
                mfc="white",
                color=line.get_color(),
            )
            floored = True
        all_h.append(h)
        if order is not None and np.isfinite(e[np.nanargmax(h)]):
            p = max(1, min(3, round(float(order))))
            lowest[p] = min(lowest.get(p, np.inf), float(e[np.nanargmax(h)]))
    if all_h:
        reference_slopes(ax, np.concatenate(all_h), {p: 0.4 * v for p, v in lowest.items()})
    if floored:
        ax.plot(
            [],
            [],
            ls="none",
            marker="o",
            mfc="white",
            color="k",
            label="open: below the round-off floor, not fitted",
        )
    note = mode_note(report)
    ax.set_title(f"{PROBLEM}: Sylvester rotation, error at T = 1" + (f" ({note})" if note else ""))
    ax.set_xlabel("step size h")
    ax.set_ylabel(r"error $\|Y_n - Y(T)\|_F$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, args.out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
