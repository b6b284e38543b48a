"""``lowrank-integrators validate``: run the validation suite and write a report.

Exit status: 0 when every required check passed, 1 when a check failed, 2 for a usage error
(for instance a pattern that selects nothing).

The factor operations of the integrators are small; on machines with few cores several BLAS
threads make them several times slower, not faster. The ``lowrank-integrators`` script
therefore runs this command with one BLAS thread unless ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set (see
:func:`lowrank_integrators.cli.console_main`); ``threadpoolctl``, when installed, applies the
same limit to in-process calls of :func:`run`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run the validation suite (reference problems x integrators) and write a report"

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short sweeps (a few minutes at most); the default is the full suite",
    )
    parser.add_argument(
        "--out",
        default="validation_report",
        metavar="DIR",
        help="directory for report.json and the PNG figures (default: ./validation_report)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="PATTERN",
        help="run the cases whose id problem/method/study matches: a glob "
        "(e.g. 'V1*/BUG/*') or a substring; comma-separated for several",
    )
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    parser.add_argument("--no-figures", action="store_true", help="write report.json only")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def _thread_limit() -> Any:
    if any(v in os.environ for v in _THREAD_VARS):
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional; the console script pins the threads itself
        return contextlib.nullcontext()

    return threadpool_limits(limits=1, user_api="blas")


def run(args: argparse.Namespace) -> int:
    from .report import format_table, write_report
    from .suite import collect_cases, run_cases

    cases = collect_cases(quick=args.quick, only=args.only)
    if args.list:
        for case in cases:
            print(case.id)
        return 0
    if not cases:
        print(f"validate: no case matches --only {args.only!r} (see --list)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with _thread_limit():
        results = run_cases(cases, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    print(format_table(results))
    report = write_report(
        results,
        args.out,
        figures=not args.no_figures,
        meta={
            "mode": "quick" if args.quick else "full",
            "only": args.only,
            "seconds": round(elapsed, 2),
        },
    )
    summary = report["summary"]
    failed = [r for r in results if not r.passed]
    for r in failed:
        for c in r.failures:
            print(f"FAILED {r.problem}/{r.method}/{r.study}: {c.describe()}")
    print(
        f"\n{summary['passed']}/{summary['studies']} studies passed, "
        f"{summary['informational']} informational (nothing asserted beyond the runs), "
        f"{summary['failed']} failed ({summary['failed_checks']} failed of "
        f"{summary['required_checks']} required checks) in {elapsed:.1f} s; report: "
        f"{os.path.join(args.out, 'report.json')}; figures: {report['figures_note']}"
    )
    return 1 if failed else 0
