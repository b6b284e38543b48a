"""Helpers shared by the figure scripts: reading results, selecting studies, drawing.

Nothing here integrates anything. The scripts read the ``report.json`` written by
``lowrank-integrators validate --out DIR`` or the training measurements in
``benchmarks/results/``, and draw them with matplotlib's object-oriented API on an Agg canvas
(no global backend is switched). matplotlib is the optional extra ``plot`` and is imported only
when a figure is made.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_integrators.methods import METHODS

#: Prefix of the ``schema`` field of a validation report.
REPORT_SCHEMA = "lowrank-integrators/validation-report/"

#: Where ``lowrank-integrators validate`` writes its report when ``--out`` is not given.
DEFAULT_REPORT = "validation_report"

#: The directory holding the training measurements.
DEFAULT_RESULTS = "benchmarks/results"

#: One colour and marker per method, so that a method looks the same in every figure.
_STYLES: dict[str, tuple[str, str]] = {
    "KSL": ("tab:gray", "v"),
    "Strang": ("tab:brown", "^"),
    "BUG": ("tab:blue", "o"),
    "AugmentedBUG": ("tab:orange", "s"),
    "ParallelBUG": ("tab:green", "D"),
    "ParallelBUG2": ("tab:olive", "d"),
    "MidpointBUG": ("tab:red", "P"),
    "abcPSI": ("tab:purple", "X"),
    "FactorODERK4-control": ("black", "x"),
}

#: Longer names for the legends, from the method registry.
_NAMES: dict[str, str] = {m.name: m.label for m in METHODS}
_NAMES["FactorODERK4-control"] = "factor ODEs + RK4 (control)"


class MissingInputError(SystemExit):
    """Raised when an input file is absent; the message names the command that makes it."""

    def __init__(self, path: Path, command: str) -> None:
        super().__init__(f"error: {path} not found.\nProduce it with:\n    {command}")


def parse_args(
    argv: Sequence[str] | None,
    description: str,
    *,
    default_report: str,
    default_out: str,
    report_help: str,
) -> argparse.Namespace:
    """The command line shared by all scripts: ``--report`` and ``--out``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``None`` reads ``sys.argv``.
    description : str
        Shown by ``--help``.
    default_report, default_out : str
        Defaults of ``--report`` and ``--out``.
    report_help : str
        Help text of ``--report``.

    Returns
    -------
    argparse.Namespace
        With ``report`` and ``out`` as :class:`pathlib.Path`.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--report", type=Path, default=Path(default_report), help=report_help)
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help=f"PNG to write (default {default_out})"
    )
    return parser.parse_args(None if argv is None else list(argv))


def parse_report_args(
    argv: Sequence[str] | None, description: str, default_out: str
) -> argparse.Namespace:
    """:func:`parse_args` for the scripts that read a validation report."""
    return parse_args(
        argv,
        description,
        default_report=DEFAULT_REPORT,
        default_out=default_out,
        report_help="validation report.json or its directory (lowrank-integrators validate)",
    )


def missing_study(report: Path, what: str, only: str) -> SystemExit:
    """The error for a report that lacks the studies a figure needs, naming the command."""
    return SystemExit(
        f"error: {report} holds no {what}; run "
        f'lowrank-integrators validate --only "{only}" --out DIR'
    )


def validate_command(only: str | None, out: Path) -> str:
    """The command that writes a validation report into ``out``."""
    selection = f' --only "{only}"' if only else ""
    return f"lowrank-integrators validate{selection} --out {out}"


def load_report(path: Path, only: str | None = None) -> dict[str, Any]:
    """Read a validation report.

    Parameters
    ----------
    path : Path
        ``report.json`` itself or the directory holding it.
    only : str, optional
        The ``--only`` selection that suffices for the figure; used in the error message.

    Returns
    -------
    dict
        The parsed report.

    Raises
    ------
    MissingInputError
        When the file does not exist.
    SystemExit
        When the file is not a validation report.
    """
    path = Path(path)
    file = path / "report.json" if path.suffix != ".json" else path
    if not file.is_file():
        raise MissingInputError(file, validate_command(only, file.parent))
    report = json.loads(file.read_text(encoding="utf-8"))
    schema = str(report.get("schema", ""))
    if not schema.startswith(REPORT_SCHEMA):
        raise SystemExit(f"error: {file} is not a validation report (schema {schema!r})")
    return report


def load_json(path: Path, command: str) -> dict[str, Any]:
    """Read a JSON file, or stop with a message naming the ``command`` that produces it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path, command)
    return json.loads(path.read_text(encoding="utf-8"))


def select(
    report: dict[str, Any],
    *,
    problem: str | None = None,
    study: str | Iterable[str] | None = None,
    method: str | None = None,
    series: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The results of ``report`` matching the given fields and holding the given series.

    Parameters
    ----------
    report : dict
        A validation report.
    problem : str, optional
        Problem id, e.g. ``"V1-sylvester"``.
    study : str or iterable of str, optional
        Study kind(s), e.g. ``"convergence"``.
    method : str, optional
        Method name, e.g. ``"BUG"``.
    series : iterable of str
        Keys that must be present in the result's ``series``.

    Returns
    -------
    list of dict
        In report order.
    """
    studies = {study} if isinstance(study, str) else (set(study) if study else None)
    keys = tuple(series)
    out = []
    for r in report.get("results", []):
        if problem is not None and r.get("problem") != problem:
            continue
        if studies is not None and r.get("study") not in studies:
            continue
        if method is not None and r.get("method") != method:
            continue
        if not all(k in r.get("series", {}) for k in keys):
            continue
        out.append(r)
    return out


def floats(values: Iterable[Any]) -> np.ndarray:
    """A float array from JSON values; ``"inf"``, ``"nan"`` and ``None`` become inf/nan."""
    out = []
    for v in values:
        try:
            out.append(float(v) if v is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def positive(values: Iterable[Any]) -> np.ndarray:
    """Like :func:`floats`, with values that cannot be drawn on a log axis set to nan."""
    a = floats(values)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def style(method: str) -> dict[str, Any]:
    """Colour, marker and label of ``method`` for ``Axes.plot``."""
    color, marker = _STYLES.get(method, (None, "o"))
    kw: dict[str, Any] = {"marker": marker, "label": _NAMES.get(method, method)}
    if color is not None:
        kw["color"] = color
    return kw


def method_name(method: str) -> str:
    """The legend name of ``method``."""
    return _NAMES.get(method, method)


def new_figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 5.2, height: float = 4.0
) -> tuple[Any, list[Any]]:
    """A figure on an Agg canvas with a grid of axes.

    Parameters
    ----------
    ncols, nrows : int
        Grid of panels.
    width, height : float
        Size of one panel in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : list of matplotlib.axes.Axes
        Row by row.

    Raises
    ------
    SystemExit
        When matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise SystemExit(
            "error: the figures need matplotlib: pip install 'lowrank-integrators[plot]'"
        ) from exc
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(ncols * nrows)]
    return fig, axes


def reference_slopes(ax: Any, x: np.ndarray, anchors: dict[int, float]) -> None:
    """Draw reference lines ``c_p x^p`` across the range of ``x``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    x : ndarray
        The abscissae of the data (nan ignored).
    anchors : dict of int to float
        For each order ``p``, the value of its line at the largest ``x``.
    """
    x = x[np.isfinite(x)]
    if x.size < 2:
        return
    xx = np.geomspace(float(x.min()), float(x.max()), 2)
    styles = ("--", ":", "-.")
    for i, (p, y0) in enumerate(sorted(anchors.items())):
        if not (np.isfinite(y0) and y0 > 0):
            continue
        ax.plot(
            xx, y0 * (xx / xx[-1]) ** p, ls=styles[i % 3], color="k", lw=0.9, label=f"slope {p}"
        )


def no_data(ax: Any, text: str) -> None:
    """Mark a panel whose data the input does not hold."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig: Any, out: Path, *, dpi: int = 130) -> Path:
    """Write ``fig`` to ``out`` (parents created) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def mode_note(report: dict[str, Any]) -> str:
    """``"quick mode"`` or ``"full mode"``, from the report's meta data."""
    mode = report.get("meta", {}).get("mode")
    return f"{mode} mode" if mode else ""
