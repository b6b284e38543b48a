"""The core import pulls no optional package."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("torch", "cupy", "matplotlib", "sklearn", "dask", "hypothesis", "array_api_strict")


def test_core_import_does_not_import_optional_packages():
    code = (
        "import sys, lowrank_integrators\n"
        f"print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_is_light():
    code = (
        "import sys\n"
        "from lowrank_integrators.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
