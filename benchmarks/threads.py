"""Default thread settings against one BLAS thread: the README example and one training epoch.

Runs, side by side and interleaved, each workload in a fresh subprocess

* with no thread variable set (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ... and ``LOWRANK_INTEGRATORS_THREADS`` removed from the environment): what a new user gets,
* with ``OPENBLAS_NUM_THREADS=1``,

and prints the median wall time and CPU time (user + system of the child) of both rows and
their ratio. The library limits its thread pools itself, so the ratio should be close to 1.
``--no-limit`` adds a third row with ``LOWRANK_INTEGRATORS_THREADS=off`` (the library's limit
turned off), to show what the limit saves.

Workloads:

* ``readme``: the example of ``README.md`` (n = 4096, augmented BUG, 100 steps), read from the
  README at run time;
* ``train``: ``lowrank-integrators train --dataset digits --epochs 1`` (needs the ``train``
  extra for scikit-learn's digits).

Usage::

    python benchmarks/threads.py            # 5 repeats of each
    python benchmarks/threads.py --quick    # 3 repeats of each
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "LOWRANK_INTEGRATORS_THREADS",
)


def readme_example() -> str:
    """The Python block under ``## Example`` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Example\s*\n+```python\n(.*?)^```", text, re.S | re.M)
    if match is None:
        raise SystemExit("README.md has no ```python block under '## Example'")
    return match.group(1)


def console_script() -> list[str]:
    """The installed ``lowrank-integrators`` next to this interpreter (or on PATH)."""
    here = Path(sys.executable).parent / "lowrank-integrators"
    found = str(here) if here.exists() else shutil.which("lowrank-integrators")
    if found is None:
        raise SystemExit("lowrank-integrators is not installed: pip install '.[train]'")
    return [found]


def environments(no_limit: bool) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    envs = {
        "no thread variables": dict(base),
        "OPENBLAS_NUM_THREADS=1": {**base, "OPENBLAS_NUM_THREADS": "1"},
    }
    if no_limit:
        envs["LOWRANK_INTEGRATORS_THREADS=off"] = {**base, "LOWRANK_INTEGRATORS_THREADS": "off"}
    return envs


def measure(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()}{out.decode()}"
        )
    return wall, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 5")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of each row")
    parser.add_argument(
        "--workload", choices=("readme", "train", "both"), default="both", help="what to run"
    )
    parser.add_argument(
        "--no-limit", action="store_true", help="add a row with the library's limit turned off"
    )
    parser.add_argument("--json", default=None, help="also write the medians to this file")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")

    work = tempfile.mkdtemp(prefix="threads-bench-")
    workloads: dict[str, list[str]] = {}
    if args.workload in ("readme", "both"):
        workloads["README example"] = [sys.executable, "-c", readme_example()]
    if args.workload in ("train", "both"):
        workloads["train --dataset digits --epochs 1"] = [
            *console_script(),
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            os.path.join(work, "train"),
        ]
    envs = environments(args.no_limit)
    print(f"{os.cpu_count()} CPUs, {repeats} interleaved repeats per row, medians\n")
    header = f"{'workload':36s} {'setting':34s} {'wall s':>8s} {'CPU s':>8s}"
    print(header)
    print("-" * len(header))
    results = []
    try:
        for name, cmd in workloads.items():
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in envs}
            for _ in range(repeats):
                for setting, env in envs.items():
                    samples[setting].append(measure(cmd, env, work))
            rows = {}
            for setting, runs in samples.items():
                wall = statistics.median(w for w, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                rows[setting] = (wall, cpu)
                print(f"{name:36s} {setting:34s} {wall:8.2f} {cpu:8.2f}")
            (w0, c0), (w1, c1) = rows["no thread variables"], rows["OPENBLAS_NUM_THREADS=1"]
            print(
                f"{name:36s} {'ratio none / OPENBLAS_NUM_THREADS=1':34s} {w0 / w1:8.2f} "
                f"{c0 / c1:8.2f}\n"
            )
            results.append(
                {
                    "workload": name,
                    "repeats": repeats,
                    "median_seconds": {k: {"wall": w, "cpu": c} for k, (w, c) in rows.items()},
                    "ratio_wall": w0 / w1,
                    "ratio_cpu": c0 / c1,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cpus": os.cpu_count(), "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
