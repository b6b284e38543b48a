"""The installed ``lowrank-integrators`` script works from the repository root and elsewhere."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LOWRANK_INTEGRATORS_THREADS",
)


def script() -> str:
    here = pathlib.Path(sys.executable).parent / "lowrank-integrators"
    found = str(here) if here.exists() else shutil.which("lowrank-integrators")
    if found is None:
        pytest.skip("the lowrank-integrators script is not installed (pip install .)")
    return found


def run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return subprocess.run(
        [script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(params=["repository root", "another folder"])
def where(request, tmp_path) -> pathlib.Path:
    return ROOT if request.param == "repository root" else tmp_path


def test_help_lists_the_commands(where):
    p = run(["--help"], where)
    assert p.returncode == 0, p.stderr
    for command in ("validate", "train", "evaluate"):
        assert command in p.stdout


def test_validate_list_prints_the_cases(where):
    p = run(["validate", "--quick", "--list"], where)
    assert p.returncode == 0, p.stderr
    assert "V1-sylvester/KSL/exactness" in p.stdout.split()


def test_one_study_runs_and_writes_its_report(where, tmp_path):
    out = tmp_path / "report"
    p = run(
        [
            "validate",
            "--quick",
            "--only",
            "V5-stiff-heat/KSL",
            "--out",
            str(out),
            "--no-progress",
            "--no-figures",
        ],
        where,
    )
    assert p.returncode == 0, p.stderr + p.stdout
    assert "1/1 studies passed" in p.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ok"] and report["results"][0]["problem"] == "V5-stiff-heat"
