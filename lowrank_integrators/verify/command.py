"""``lowrank-integrators validate``: run the validation suite and write a report.

Exit status: 0 when every required check passed, 1 when a check failed, 2 for a usage error
(a pattern that selects nothing, an output folder that cannot be written).

The suite runs with the BLAS/OpenMP thread pools limited as described in
:mod:`lowrank_integrators.threads`: the factor operations of the integrators are small, and
on machines with few cores several threads make them slower, not faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run the validation suite (reference problems x integrators) and write a report"


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
        help="folder for report.json and the PNG figures",
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


def run(args: argparse.Namespace) -> int:
    from .._files import check_output_dir
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
    try:
        check_output_dir(args.out, "--out")
    except ValueError as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
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
        f"{summary['required_checks']} required checks) in {elapsed:.1f} s"
    )
    print(f"report: {os.path.join(args.out, 'report.json')}")
    if report["figures"]:
        names = ", ".join(os.path.join(args.out, f) for f in report["figures"])
        print(f"figures: {names}")
    else:
        print(f"figures: none ({report['figures_note']})")
    return 1 if failed else 0
