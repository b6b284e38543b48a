"""Every subpackage is listed for installation (the package list is explicit, see pyproject)."""

from __future__ import annotations

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    pkg = ROOT / "lowrank_integrators"
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in pkg.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    found.add("lowrank_integrators.validation")
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


def test_validation_directory_is_installed_as_a_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["package-dir"] == {
        "lowrank_integrators.validation": "validation"
    }
    import lowrank_integrators.validation as validation

    for name in validation.MODULES:
        assert (ROOT / "validation" / f"{name}.py").exists()
