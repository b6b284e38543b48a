"""The figure scripts of ``paper_figures/`` read their inputs and write a PNG.

The validation-report figures read a report of a small ``validate --only`` selection run here;
the training figures read the committed measurements of ``benchmarks/results/``. A missing
input stops a script with a message naming the command that produces it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "paper_figures"
RESULTS = ROOT / "benchmarks" / "results"

REPORT_SCRIPTS = ("sylvester_convergence", "robustness", "rank_adaptive", "schrodinger_drift")
RESULT_SCRIPTS = ("dlrt_compression", "dlrt_init", "lenet5_fashion_mnist")

#: The smallest selection that gives every report figure its data.
SELECTION = ",".join(
    [
        "V1*/KSL/exactness",
        "V1*/BUG/convergence",
        "V1*/MidpointBUG/convergence",
        "V1*/BUG/robustness",
        "V1*/FactorODERK4-control/robustness",
        "V3*/BUG/conservation",
        "V3*/BUG/drift",
        "V3*/AugmentedBUG/rank_adaptivity",
        "V7-lyapunov/AugmentedBUG/rank_growth",
    ]
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``paper_figures/<name>.py`` the way ``python paper_figures/<name>.py`` sees it."""
    monkeypatch.syspath_prepend(str(FIGURES))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validation report of a few studies, written by the command-line entry point."""
    from lowrank_integrators.cli import main

    out = tmp_path_factory.mktemp("report")
    argv = ["validate", "--quick", "--no-figures", "--no-progress", "--out", str(out)]
    rc = main([*argv, "--only", SELECTION])
    assert rc == 0
    return out


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("name", REPORT_SCRIPTS)
def test_report_figure(
    name: str, report_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / f"{name}.png"
    written = _script(name, monkeypatch).main(["--report", str(report_dir), "--out", str(out)])
    assert written == out
    _assert_png(out)


def test_report_file_path_is_accepted(
    report_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sub" / "fig.png"
    script = _script("sylvester_convergence", monkeypatch)
    script.main(["--report", str(report_dir / "report.json"), "--out", str(out)])
    _assert_png(out)


@pytest.mark.parametrize("name", RESULT_SCRIPTS)
def test_results_figure(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / f"{name}.png"
    _script(name, monkeypatch).main(["--report", str(RESULTS), "--out", str(out)])
    _assert_png(out)
    assert "| run |" in capsys.readouterr().out  # the Markdown table


def test_compression_reads_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = sorted(RESULTS.glob("dlrt_fashion_mnist_compression*.json"))[0]
    data = json.loads(src.read_text(encoding="utf-8"))
    data["runs"] = [r for r in data["runs"] if r["config"]["integrator"] != "dense"][:1]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "one.png"
    _script("dlrt_compression", monkeypatch).main(["--report", str(one), "--out", str(out)])
    _assert_png(out)


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("sylvester_convergence", "lowrank-integrators validate"),
        ("robustness", "lowrank-integrators validate"),
        ("rank_adaptive", "lowrank-integrators validate"),
        ("schrodinger_drift", "lowrank-integrators validate"),
        ("dlrt_compression", "benchmarks/dlrt_fashion_mnist.py --study compression"),
        ("dlrt_init", "benchmarks/dlrt_fashion_mnist.py --study init"),
    ],
)
def test_missing_input_names_the_command(
    name: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "fig.png"
    with pytest.raises(SystemExit) as info:
        _script(name, monkeypatch).main(["--report", str(tmp_path / "absent"), "--out", str(out)])
    message = str(info.value.code)
    assert "not found" in message
    assert command in message
    assert not out.exists()


def test_report_without_the_studies_says_so(
    report_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    data["results"] = [r for r in data["results"] if r["problem"] != "V1-sylvester"]
    (tmp_path / "report.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SystemExit, match="no convergence study"):
        _script("sylvester_convergence", monkeypatch).main(
            ["--report", str(tmp_path), "--out", str(tmp_path / "fig.png")]
        )


def test_scripts_run_as_programs(report_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "drift.png"
    script = FIGURES / "schrodinger_drift.py"
    cmd = [sys.executable, str(script), "--report", str(report_dir), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    _assert_png(out)


def test_every_script_is_tested() -> None:
    scripts = {p.stem for p in FIGURES.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(REPORT_SCRIPTS) | set(RESULT_SCRIPTS)
    readme = (FIGURES / "README.md").read_text(encoding="utf-8")
    for name in scripts:
        assert f"{name}.py" in readme
