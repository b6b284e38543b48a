"""Reports of the validation suite: a JSON file, PNG figures and a text table.

Figures need matplotlib (the optional extra ``plot``); it is imported only when figures are
written, through its object-oriented API (no global backend is switched). Without matplotlib
the JSON report is written all the same and says that figures were skipped.

Every file is written to a temporary file in the report folder and renamed into place, so an
interrupted run leaves the previous report or the new one. Each study records the integrator
as constructor text and the problem with its parameters; the report records the versions of
the library, NumPy and SciPy, so a study can be repeated.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from .._files import atomic_write, write_text
from .checks import StudyResult

__all__ = ["SCHEMA", "format_table", "report_dict", "write_report"]

#: Identifier of the JSON layout; bump when fields change meaning.
SCHEMA = "lowrank-integrators/validation-report/3"

#: Font size of legends, tick labels and titles in the figures (points).
FONT_SIZE = 9


def report_dict(results: Sequence[StudyResult], meta: dict[str, Any] | None = None) -> dict:
    """The JSON-ready report: schema, environment, summary counts and every result.

    ``summary`` counts studies by verdict: ``passed`` (a substantive required check passed),
    ``informational`` (nothing asserted beyond "the runs succeeded") and ``failed``, and
    checks as ``required_checks`` and ``informational_checks``. ``ok`` depends on the
    required checks only.
    """
    from .. import __version__

    n_checks = sum(len(r.checks) for r in results)
    n_required = sum(c.required for r in results for c in r.checks)
    failed = [r for r in results if not r.passed]
    verdicts = [r.verdict for r in results]
    return {
        "schema": SCHEMA,
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "lowrank_integrators": __version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "meta": dict(meta or {}),
        "summary": {
            "studies": len(results),
            "passed": verdicts.count("pass"),
            "informational": verdicts.count("info"),
            "failed": len(failed),
            "checks": n_checks,
            "required_checks": n_required,
            "informational_checks": n_checks - n_required,
            "failed_checks": sum(len(r.failures) for r in results),
            "ok": not failed,
        },
        "results": [r.as_dict() for r in results],
    }


def write_report(
    results: Sequence[StudyResult],
    out_dir: str | Path,
    *,
    figures: bool = True,
    meta: dict[str, Any] | None = None,
) -> dict:
    """Write ``report.json`` (and PNG figures) into ``out_dir``; return the report dict.

    Parameters
    ----------
    results : sequence of StudyResult
    out_dir : path
        Created if missing.
    figures : bool, default True
        Draw ``convergence.png`` (log-log error against ``h`` with reference slopes),
        ``ranks.png`` (rank against time) and ``drift.png`` (norm and energy drift); skipped,
        with a note in the report, when matplotlib is not installed.
    meta : dict, optional
        Extra fields (mode, pattern) stored under ``"meta"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = report_dict(results, meta)
    files: list[str] = []
    note = "figures not requested"
    if figures:
        try:
            files = _draw_figures(results, out)
            note = "written" if files else "no study produced plottable data"
        except ImportError:
            note = "matplotlib is not installed (pip install lowrank-integrators[plot]): no figures"
    report["figures"] = files
    report["figures_note"] = note
    write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _fmt(x: Any, spec: str = ".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, (list, tuple)):
        return "(" + ",".join(str(v) for v in x) + ")"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "-"
    return format(v, spec)


def format_table(results: Sequence[StudyResult]) -> str:
    """A text table: problem, method, study, error, observed vs expected order, rank, result."""
    header = ("problem", "method", "study", "error", "order", "expected", "rank", "result")
    rows = [header]
    for r in results:
        s = r.summary
        verdict = r.verdict
        rows.append(
            (
                r.problem,
                r.method,
                r.label,
                _fmt(s.get("error")),
                _fmt(s.get("observed_order"), ".2f"),
                _fmt(s.get("expected_order"), "g"),
                _fmt(s.get("final_rank"), "g"),
                verdict,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [_join(row, widths) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _join(row: Sequence[Any], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


# --- figures ------------------------------------------------------------------------------

#: Markers and line styles cycled through the curves of a panel, so that curves lying on top of
#: each other (exact methods, equal ranks) stay distinguishable.
_MARKERS = ("o", "s", "^", "v", "D", "<", ">", "p", "h", "*")
_STYLES = ("-", "--", ":", "-.")


def _style(k: int) -> dict[str, Any]:
    return {
        "marker": _MARKERS[k % len(_MARKERS)],
        "linestyle": _STYLES[(k // 2) % len(_STYLES)],
        "markersize": 4,
        "markerfacecolor": "none" if k % 2 else None,
    }


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(2, max(1, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(7.5 * cols, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _finish(ax, title: str, xlabel: str, ylabel: str, *, integer_y: bool = False) -> None:
    """Titles, labels, a legend outside the data (right of the panel), integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=FONT_SIZE + 1)
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
    if integer_y:
        lo, hi = ax.get_ylim()
        lo, hi = math.floor(lo), math.ceil(hi)
        if hi - lo < 2:  # a constant rank: a range around it, so the ticks are integers
            lo, hi = lo - 1, hi + 1
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=FONT_SIZE, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0
        )


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _by_problem(results: Sequence[StudyResult], keep) -> dict[str, list[StudyResult]]:
    groups: dict[str, list[StudyResult]] = {}
    for r in results:
        if keep(r):
            groups.setdefault(r.problem, []).append(r)
    return groups


def _positive(x: Sequence[Any]) -> np.ndarray:
    a = np.asarray([float(v) if v is not None else np.nan for v in x], dtype=float)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _draw_figures(results: Sequence[StudyResult], out: Path) -> list[str]:
    import matplotlib  # noqa: F401  (raises ImportError when the extra is missing)

    files = []
    conv = _by_problem(
        results, lambda r: r.study in ("convergence", "exactness", "drift") and "h" in r.series
    )
    if conv:
        fig, axes = _figure(len(conv))
        for ax, (problem, group) in zip(axes, conv.items(), strict=True):
            hmin, hmax, emax = math.inf, 0.0, 0.0
            for k, r in enumerate(group):
                key = (
                    "error"
                    if "error" in r.series
                    else next(k for k in r.series if k.startswith("drift_"))
                )
                h, e = _positive(r.series["h"]), _positive(r.series[key])
                ax.loglog(h, e, label=f"{r.method} ({r.label})", **_style(k))
                hmin, hmax = min(hmin, np.nanmin(h)), max(hmax, np.nanmax(h))
                if r.study != "exactness" and np.any(np.isfinite(e)):
                    emax = max(emax, float(np.nanmax(e)))
            if emax > 0 and hmax > hmin:
                hh = np.array([hmin, hmax])
                for p, style in ((1, "k--"), (2, "k:")):
                    ax.loglog(hh, emax * (hh / hmax) ** p, style, lw=0.8, label=f"slope {p}")
            _finish(ax, problem, "h", "error (drift) at T")
        _save(fig, out / "convergence.png")
        files.append("convergence.png")
    ranks = _by_problem(results, lambda r: "rank" in r.series and "t" in r.series)
    if ranks:
        fig, axes = _figure(len(ranks))
        for ax, (problem, group) in zip(axes, ranks.items(), strict=True):
            for k, r in enumerate(group):
                t = r.series["t"]
                ax.step(
                    t,
                    r.series["rank"],
                    where="post",
                    label=f"{r.method} ({r.label})",
                    markevery=max(1, len(t) // 12),
                    **_style(k),
                )
            _finish(ax, problem, "t", "rank", integer_y=True)
        _save(fig, out / "ranks.png")
        files.append("ranks.png")
    drift = _by_problem(results, lambda r: r.study == "conservation")
    if drift:
        fig, axes = _figure(len(drift))
        for ax, (problem, group) in zip(axes, drift.items(), strict=True):
            k = 0
            for r in group:
                for key, values in r.series.items():
                    if key.startswith("drift_"):
                        d = np.asarray(values, dtype=float)
                        t = r.series["t"]
                        ax.semilogy(
                            t,
                            np.maximum(d, 1e-17),
                            label=f"{r.method}: {key[6:]}",
                            markevery=max(1, len(t) // 12),
                            **_style(k),
                        )
                        k += 1
            _finish(ax, problem, "t", "relative drift")
        _save(fig, out / "drift.png")
        files.append("drift.png")
    return files
