"""The source tree is the installed package: no remapped directories, every subpackage found."""

from __future__ import annotations

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_package_dir_remapping():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert "package-dir" not in setuptools
    assert setuptools["packages"]["find"]["include"] == ["lowrank_integrators*"]


def test_reference_problems_live_inside_the_package():
    import lowrank_integrators.validation as validation

    pkg = ROOT / "lowrank_integrators" / "validation"
    assert pathlib.Path(validation.__file__).resolve().parent == pkg
    for module in validation.PROBLEM_MODULES:
        assert pathlib.Path(module.__file__).resolve().parent == pkg
