"""Every Python example in the README and in docs/ runs.

A fenced block runs when its language holds Python (``python``, ``py``, ``python3``, ``py3``,
``ipython``, or a MyST ``{code-block}``/``{code-cell}`` in one of them); ``pycon`` blocks
(``>>>`` sessions) run as doctests. Every other fence must name a language known not to be
Python, so that no example escapes the test by its label. The gallery scripts in
``examples/`` run when the site is built (``.ci/docs``).
"""

from __future__ import annotations

import doctest
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FILES = [f for f in FILES if "_build" not in f.parts]

PYTHON = {"python", "py", "python3", "py3", "ipython", "ipython3"}
SESSION = {"pycon"}
NOT_PYTHON = {"bash", "sh", "console", "shell", "text", "toml", "json", "yaml", "ini"}
# MyST directives that hold no Python
NOT_PYTHON |= {"{toctree}", "{eval-rst}", "{note}", "{admonition}"}
DIRECTIVES = {"{code-block}", "{code-cell}", "{code}"}

# An opening fence: three or more backticks, then the info string; the block ends at the
# same fence.
FENCE = re.compile(r"^(?P<fence>```+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)\s*$", re.M | re.S)


def fences():
    """``(path, index, language, body)`` for every fenced block."""
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for i, match in enumerate(FENCE.finditer(text)):
            words = match.group("info").split()
            language = words[0].lower() if words else ""
            if language in DIRECTIVES:
                language = words[1].lower() if len(words) > 1 else ""
            yield path.relative_to(ROOT), i, language, match.group("body")


def blocks(languages):
    return [
        pytest.param(body, id=f"{path}#{i}")
        for path, i, language, body in fences()
        if language in languages
    ]


def _skip_without(code):
    """Skip an example that imports an optional package which is not installed."""
    for name in ("torch", "cupy", "dask"):
        if re.search(rf"^\s*(import|from)\s+{name}\b", code, re.M):
            if importlib.util.find_spec(name) is None:
                pytest.skip(f"{name} is not installed")


@pytest.mark.parametrize("code", blocks(PYTHON))
def test_example_runs(code, tmp_path, monkeypatch):
    _skip_without(code)
    if re.search(r"^(import torch|from lowrank_integrators\.torch)", code, flags=re.M):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})


@pytest.mark.parametrize("session", blocks(SESSION))
def test_session_example_gives_the_shown_output(session, tmp_path, monkeypatch):
    _skip_without(session)
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(session, {}, "session", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_every_fence_names_a_language_known_to_hold_python_or_not():
    unknown = [
        f"{path}#{i}: {language or '(no language)'}"
        for path, i, language, _ in fences()
        if language not in PYTHON | SESSION | NOT_PYTHON
    ]
    assert not unknown, "fences with a missing or unknown language: " + ", ".join(unknown)


def test_the_fence_scanner_sees_every_language_used():
    """The scanner is not blind: the docs hold Python and shell examples and it finds both."""
    languages = {language for *_, language, _ in fences()}
    assert "python" in languages and "bash" in languages


def test_readme_has_the_two_quick_start_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert marker in text
        block = text.split(marker, 1)[1].split("```", 2)[1]
        assert len(block.strip().splitlines()) == 2  # "bash" and one command line


def _public_modules():
    import pkgutil

    import lowrank_integrators

    names = ["lowrank_integrators"]
    for info in pkgutil.walk_packages(lowrank_integrators.__path__, "lowrank_integrators."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _public_modules())
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    """The ``Examples`` sections that the API reference shows give the output they show."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("torch", "cupy", "dask"):
            pytest.skip(f"{exc.name} is not installed")
        raise
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        if test.examples and test.name.startswith(module_name):
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
