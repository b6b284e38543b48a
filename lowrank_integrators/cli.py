"""The ``lowrank-integrators`` command.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status). Modules keep their heavy imports inside ``run`` so
that ``lowrank-integrators --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["console_main", "main"]

#: Commands whose work is many small factorisations, which several BLAS threads slow down.
_SINGLE_THREADED = {"validate"}
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_REEXEC_MARK = "LOWRANK_INTEGRATORS_BLAS_PINNED"

_COMMANDS = {
    "validate": "lowrank_integrators.verify.command",
    "train": "lowrank_integrators.training.command",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lowrank-integrators",
        description="Robust dynamical low-rank integrators: validation and low-rank training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # the subcommand's module is not part of this build
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


def console_main() -> int:
    """Entry point of the ``lowrank-integrators`` script.

    ``validate`` runs with one BLAS thread unless the user set ``OPENBLAS_NUM_THREADS``,
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``: BLAS libraries read these only when they are
    loaded, which happened when this package imported NumPy, so the process restarts itself
    once with the variables set (its small factorisations run several times faster so on
    machines with few cores).
    """
    argv = sys.argv[1:]
    wants_pin = bool(argv) and argv[0] in _SINGLE_THREADED
    user_set = any(v in os.environ for v in _THREAD_VARS)
    if wants_pin and not user_set and _REEXEC_MARK not in os.environ:
        env = dict(os.environ)
        env.update({v: "1" for v in _THREAD_VARS})
        env[_REEXEC_MARK] = "1"
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "lowrank_integrators.cli", *argv], env)
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
