"""The ``lowrank-integrators validate`` command: listing, selection, report, exit status."""

from __future__ import annotations

import json

import pytest

from lowrank_integrators.cli import main
from lowrank_integrators.verify import suite
from lowrank_integrators.verify.methods import available_methods

from .test_validation_mutation import FLIPPED


def test_list_prints_case_ids_and_only_filters_them(capsys):
    assert main(["validate", "--quick", "--list"]) == 0
    ids = capsys.readouterr().out.split()
    assert "V1-sylvester/BUG/convergence" in ids
    assert "V1-sylvester/KSL/exactness" in ids
    assert {i.split("/")[0] for i in ids} >= {
        "V1-sylvester",
        "V3-schrodinger",
        "V4-explicit-data",
        "V5-stiff-heat",
        "V7-lyapunov",
        "V7-lyapunov-complex",
        "V9-gradient-flow",
        "N1-nonlinear",
    }
    assert main(["validate", "--quick", "--list", "--only", "V5*/BUG/*"]) == 0
    assert capsys.readouterr().out.split() == ["V5-stiff-heat/BUG/convergence"]


def test_every_method_of_the_build_is_covered(capsys):
    main(["validate", "--quick", "--list"])
    methods = {i.split("/")[1] for i in capsys.readouterr().out.split()}
    assert {s.name for s in available_methods()} <= methods


def test_a_passing_selection_exits_zero_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "validate",
            "--quick",
            "--only",
            "V5-stiff-heat/KSL",
            "--out",
            str(out),
            "--no-progress",
            "--no-figures",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "V5-stiff-heat" in text and "pass" in text and "1/1 studies passed" in text
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ok"] and report["meta"]["mode"] == "quick"
    assert report["results"][0]["method"] == "KSL"


def test_a_failing_check_gives_a_non_zero_exit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suite, "available_methods", lambda: [FLIPPED])
    code = main(
        [
            "validate",
            "--quick",
            "--only",
            "V5*/exactness",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-figures",
        ]
    )
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED V5-stiff-heat/KSL-flipped/exactness" in text
    assert not json.loads((tmp_path / "report.json").read_text())["summary"]["ok"]


def test_a_pattern_selecting_nothing_is_a_usage_error(tmp_path, capsys):
    assert main(["validate", "--only", "no-such-problem", "--out", str(tmp_path)]) == 2
    assert "no case matches" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module", __import__("lowrank_integrators.validation", fromlist=["MODULES"]).MODULES
)
def test_every_reference_problem_module_cites_a_source_and_builds_cases(module):
    import importlib

    mod = importlib.import_module(f"lowrank_integrators.validation.{module}")
    doc = mod.__doc__ or ""
    assert "Source" in doc and "Reference" in doc and "Theory" in doc
    cases = mod.cases(available_methods(), True)
    assert all(c.problem and c.method and c.study for c in cases)
