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


def test_each_study_records_its_method_as_constructor_text_and_its_problem(tmp_path):
    import lowrank_integrators as lri

    out = tmp_path / "report"
    args = ["validate", "--quick", "--only", "V1-sylvester/KSL/exactness,V1-sylvester/BUG/conv*"]
    assert main([*args, "--out", str(out), "--no-progress", "--no-figures"]) == 0
    report = json.loads((out / "report.json").read_text())
    env = report["environment"]
    assert {"lowrank_integrators", "numpy", "scipy"} <= env.keys()
    assert env["lowrank_integrators"] == lri.__version__
    assert len(report["results"]) == 2
    for study in report["results"]:
        text = study["method_constructor"]
        assert text.startswith(("ProjectorSplitting(order=1, substep=RK4(steps=", "BUG("))
        for each in study["method_constructors"]:
            rebuilt = eval(each, vars(lri))  # constructor text builds the same integrator
            assert repr(rebuilt) == each
        setup = study["problem_setup"]
        assert setup["name"] == "V1-sylvester" and setup["shape"] == [100, 100]
        assert setup["class"] == "SylvesterODE"
        assert setup["parameters"]["module"] == "lowrank_integrators.validation.sylvester_rotation"
        assert setup["parameters"]["T"] == 1.0
        assert study["runs"] and all(r["h"] > 0 for r in study["runs"])


def test_no_study_of_the_suite_records_an_object_address(tmp_path):
    out = tmp_path / "report"
    args = ["validate", "--quick", "--only", "V5-stiff-heat/*/exactness"]
    assert main([*args, "--out", str(out), "--no-progress", "--no-figures"]) == 0
    for study in json.loads((out / "report.json").read_text())["results"]:
        assert study["method_constructors"]
        assert not any(" object at 0x" in m for m in study["method_constructors"])


def test_an_unwritable_out_is_refused_before_any_study_runs(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ran = []
    monkeypatch.setattr(suite, "run_cases", lambda *a, **k: ran.append(1) or [])
    assert main(["validate", "--quick", "--only", "V5-stiff-heat/KSL", "--out", str(blocker)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert not ran


def test_the_closing_summary_names_the_figure_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    assert main(["validate", "--quick", "--only", "V5-stiff-heat/KSL", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["figures"]
    for name in report["figures"]:
        assert str(out / name) in text
        assert (out / name).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_an_interrupted_report_leaves_the_previous_one(tmp_path, monkeypatch):
    from lowrank_integrators.verify import report as report_module

    out = tmp_path / "report"
    args = ["validate", "--quick", "--only", "V5-stiff-heat/KSL", "--out", str(out)]
    assert main([*args, "--no-progress", "--no-figures"]) == 0
    before = (out / "report.json").read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module.json, "dumps", crash)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--no-progress", "--no-figures"])
    assert (out / "report.json").read_bytes() == before


def test_the_tucker_studies_run_and_pass(tmp_path, capsys):
    """Tucker integrators are siblings of the matrix ones: the suite runs them as methods."""
    args = ["validate", "--quick", "--only", "V8*", "--out", str(tmp_path / "r")]
    code = main([*args, "--no-progress", "--no-figures"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "0 failed" in text and "raised" not in text
