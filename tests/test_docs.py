"""Every Python example in the README and in docs/ runs."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def python_blocks():
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for i, match in enumerate(re.finditer(r"```python\n(.*?)```", text, flags=re.S)):
            yield pytest.param(match.group(1), id=f"{path.relative_to(ROOT)}#{i}")


@pytest.mark.parametrize("code", list(python_blocks()))
def test_example_runs(code, tmp_path, monkeypatch):
    if re.search(r"^(import torch|from lowrank_integrators\.torch)", code, flags=re.M):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})


def test_readme_has_the_two_quick_start_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert marker in text
        block = text.split(marker, 1)[1].split("```", 2)[1]
        assert len(block.strip().splitlines()) == 2  # "bash" and one command line
