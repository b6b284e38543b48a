"""The ``lowrank-integrators`` command.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status). Modules keep their heavy imports inside ``run`` so
that ``lowrank-integrators --help`` stays fast.

Every command runs with the BLAS/OpenMP thread pools limited as described in
:mod:`lowrank_integrators.threads` (``LOWRANK_INTEGRATORS_THREADS=off`` or any of
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` set by the user leaves them
alone). Exit status: 0 success, 1 a failed check or a failed run, 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys

from .threads import limit_threads
from .training import command as train_command
from .training import evaluate as evaluate_command
from .verify import command as validate_command

__all__ = ["console_main", "main"]

_COMMANDS = {
    "validate": validate_command,
    "train": train_command,
    "evaluate": evaluate_command,
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lowrank-integrators",
        description="Robust dynamical low-rank integrators: validation and low-rank training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMMANDS.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lowrank-integrators`` with the arguments ``argv``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with limit_threads(torch=True):
            return int(args._run(args) or 0)
    except OSError as exc:
        # A full disk or a folder that vanished while results are written: the files written
        # so far are whole (each is replaced atomically), so a message is all the user needs.
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1


def console_main() -> int:
    """Entry point of the ``lowrank-integrators`` script."""
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
