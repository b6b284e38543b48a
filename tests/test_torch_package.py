"""The torch subpackage: the core never imports it, and its docstring examples hold."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest


def test_importing_the_core_and_the_cli_does_not_import_torch():
    code = (
        "import sys, lowrank_integrators, lowrank_integrators.cli, lowrank_integrators.training; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name", ["layers", "tucker_layers", "convert", "optimizer", "models", "command"]
)
def test_docstring_examples_run(name):
    pytest.importorskip("torch")
    module = importlib.import_module(f"lowrank_integrators.torch.{name}")
    result = doctest.testmod(module, verbose=False)
    assert result.failed == 0


def test_every_public_name_has_a_docstring():
    pytest.importorskip("torch")
    package = importlib.import_module("lowrank_integrators.torch")
    for name in package.__all__:
        assert getattr(package, name).__doc__, name
