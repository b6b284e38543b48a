"""Reports of the validation suite: a JSON file, PNG figures and a text table.

Figures need matplotlib (the optional extra ``plot``); it is imported only when figures are
written, through its object-oriented API (no global backend is switched). Without matplotlib
the JSON report is written all the same and says that figures were skipped.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checks import StudyResult

__all__ = ["SCHEMA", "format_table", "report_dict", "write_report"]

#: Identifier of the JSON layout; bump when fields change meaning.
SCHEMA = "lowrank-integrators/validation-report/2"


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
            "python": platform.python_version(),
            "numpy": np.__version__,
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
    with open(out / "report.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, allow_nan=False)
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


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, max(1, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(5 * cols, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


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
            for r in group:
                key = (
                    "error"
                    if "error" in r.series
                    else next(k for k in r.series if k.startswith("drift_"))
                )
                h, e = _positive(r.series["h"]), _positive(r.series[key])
                ax.loglog(h, e, "o-", label=f"{r.method} ({r.label})", ms=3)
                hmin, hmax = min(hmin, np.nanmin(h)), max(hmax, np.nanmax(h))
                if r.study != "exactness" and np.any(np.isfinite(e)):
                    emax = max(emax, float(np.nanmax(e)))
            if emax > 0 and hmax > hmin:
                hh = np.array([hmin, hmax])
                for p, style in ((1, "k--"), (2, "k:")):
                    ax.loglog(hh, emax * (hh / hmax) ** p, style, lw=0.8, label=f"slope {p}")
            ax.set_title(problem)
            ax.set_xlabel("h")
            ax.set_ylabel("error (drift) at T")
            ax.legend(fontsize=6)
        fig.savefig(out / "convergence.png", dpi=110)
        files.append("convergence.png")
    ranks = _by_problem(results, lambda r: "rank" in r.series and "t" in r.series)
    if ranks:
        fig, axes = _figure(len(ranks))
        for ax, (problem, group) in zip(axes, ranks.items(), strict=True):
            for r in group:
                ax.step(
                    r.series["t"], r.series["rank"], where="post", label=f"{r.method} ({r.label})"
                )
            ax.set_title(problem)
            ax.set_xlabel("t")
            ax.set_ylabel("rank")
            ax.legend(fontsize=6)
        fig.savefig(out / "ranks.png", dpi=110)
        files.append("ranks.png")
    drift = _by_problem(results, lambda r: r.study == "conservation")
    if drift:
        fig, axes = _figure(len(drift))
        for ax, (problem, group) in zip(axes, drift.items(), strict=True):
            for r in group:
                for key, values in r.series.items():
                    if key.startswith("drift_"):
                        d = np.asarray(values, dtype=float)
                        ax.semilogy(
                            r.series["t"], np.maximum(d, 1e-17), label=f"{r.method}: {key[6:]}"
                        )
            ax.set_title(problem)
            ax.set_xlabel("t")
            ax.set_ylabel("relative drift")
            ax.legend(fontsize=6)
        fig.savefig(out / "drift.png", dpi=110)
        files.append("drift.png")
    return files
