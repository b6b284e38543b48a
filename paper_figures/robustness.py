"""Robustness to small singular values: error against the smallest singular value kept.

After the robustness experiments of Ceruti, Lubich (2022), arXiv:2010.02022 (and of the
projector-splitting analysis of Kieri, Lubich, Walach 2016): on the Sylvester rotation V1 the
rank r grows while ``sigma_r = 2^-r`` falls, at a fixed step size. The robust integrators keep
their error; the control, the factor ODEs of Koch and Lubich integrated with RK4, blows up.
Reads the ``robustness`` studies of a validation report::

    lowrank-integrators validate --only "V1*/*/robustness" --out validation_report
    python paper_figures/robustness.py --report validation_report --out robustness.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import (
    floats,
    load_report,
    missing_study,
    mode_note,
    new_figure,
    parse_report_args,
    save,
    select,
    style,
)

PROBLEM = "V1-sylvester"
ONLY = "V1*/*/robustness"

#: The robustness check allows this growth of the error over the family.
GROWTH_ALLOWED = 10.0


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
    args = parse_report_args(argv, __doc__.splitlines()[0], "robustness.png")
    report = load_report(args.report, ONLY)
    results = select(report, problem=PROBLEM, study="robustness", series=("sigma_min", "error"))
    if not results:
        raise missing_study(args.report, f"robustness study of {PROBLEM}", ONLY)

    fig, (ax_err, ax_ratio) = new_figure(2, width=5.4, height=4.6)
    finite_max, blowups = 0.0, []
    for r in results:
        sigma, err = floats(r["series"]["sigma_min"]), floats(r["series"]["error"])
        order = np.argsort(sigma)[::-1]  # largest sigma (smallest rank) first
        sigma, err = sigma[order], err[order]
        kw = style(r["method"])
        control = r["method"].endswith("-control")
        ls = ":" if control else "-"
        good = np.isfinite(err) & (err > 0)
        ax_err.loglog(sigma[good], err[good], ls=ls, ms=5, **kw)
        if np.any(good):
            finite_max = max(finite_max, float(err[good].max()))
            ratio = err / err[good][0]
            ok = np.isfinite(ratio) & (ratio > 0)
            ax_ratio.loglog(sigma[ok], ratio[ok], ls=ls, ms=5, **kw)
        blowups += [(s, kw) for s in sigma[~np.isfinite(err)]]
    # runs that overflowed are marked above every finite error
    for ax, top in ((ax_err, finite_max), (ax_ratio, None)):
        y_top = (top if top else max(ax.get_ylim()[1], GROWTH_ALLOWED)) * 30
        for s, kw in blowups:
            ax.plot([s], [y_top], ls="none", marker="x", ms=10, mew=2.5, color=kw.get("color"))
            ax.annotate(
                "overflow (inf)",
                (s, y_top),
                textcoords="offset points",
                xytext=(-9, -4),
                ha="right",
                fontsize=8,
                color=kw.get("color"),
            )
    ax_ratio.axhline(GROWTH_ALLOWED, color="r", lw=0.8, ls="--", label="growth allowed (10x)")
    ax_ratio.axhline(1.0, color="k", lw=0.6)
    labels = results[0]["series"].get("label", [])
    sigmas = floats(results[0]["series"]["sigma_min"])
    for ax in (ax_err, ax_ratio):
        ax.invert_xaxis()  # the rank grows to the right
        ax.set_xlabel(r"smallest singular value kept $\sigma_r$ of $Y_0$")
        ax.grid(True, which="major", alpha=0.3)
        for s, lab in zip(sigmas, labels, strict=False):  # the rank of each initial value
            ax.annotate(
                str(lab),
                (s, 1.0),
                xycoords=("data", "axes fraction"),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    note = mode_note(report)
    ax_err.set_ylabel(r"error at T = 1, $\|Y_n - Y_r(T)\|_F$")
    ax_err.set_title("error at a fixed step size", pad=16)
    ax_ratio.set_ylabel("error / error at the largest $\\sigma_r$")
    ax_ratio.set_title("growth of the error as $\\sigma_r$ falls", pad=16)
    handles, names = ax_ratio.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(f"{PROBLEM}: robustness to small singular values" + (f" ({note})" if note else ""))
    return save(fig, args.out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
