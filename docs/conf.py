"""Sphinx configuration of the lowrank_integrators documentation.

Build from the repository root with warnings as errors::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is generated here, at configuration time, from the ``__all__`` lists of the
package and its public subpackages, grouped as the package is laid out (state and factors,
problems, truncation, substeps, integrators, solve and results, verification, training,
torch). A public name whose module is not assigned to a group stops the build, so the
reference cannot silently fall behind ``__all__``. The torch group lists the ``__all__`` of
``lowrank_integrators.torch`` when that package exists and torch is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

# The examples run in this process. Their factor operations are small, and several BLAS threads
# spinning against each other make them many times slower on small machines: one thread, as in
# the validation suite, unless the environment chooses (OPENBLAS_NUM_THREADS and friends).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if not any(v in os.environ for v in _THREAD_VARIABLES):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        # a limit reaches the libraries loaded so far: load SciPy's and scikit-learn's first
        import scipy.linalg  # noqa: F401

        try:
            import sklearn  # noqa: F401
        except ImportError:
            pass
        threadpool_limits(limits=1)

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import lowrank_integrators  # noqa: E402

# -- Project ------------------------------------------------------------------------------

project = "lowrank_integrators"
author = "The lowrank_integrators authors"
copyright = "the lowrank_integrators authors"
release = lowrank_integrators.__version__
version = release

# -- Extensions ---------------------------------------------------------------------------

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/README.md"]
templates_path = ["_templates"]

# A reference that does not resolve is an error (with -W): docstrings, pages and examples.
nitpicky = True
# Names outside this project (no network at build time, so no intersphinx inventories).
nitpick_ignore_regex = [
    ("py:.*", r"(np|numpy|scipy|sp|torch|dask|collections|typing|abc|pathlib|os|types)\..*"),
    ("py:.*", r"(Any|Callable|Sequence|Iterable|Iterator|Mapping|Path|Generator|ndarray)"),
    ("py:.*", r"(optional|array|array-like|array_like|callable|default|\.\.\.)"),
    ("py:class", r"(int|float|bool|str|complex|dict|list|tuple|object|type|None|bytes)"),
    # docstrings that torch.nn.Module subclasses inherit from torch
    ("py:class", r"Module"),
]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True}
autodoc_typehints = "none"  # the numpydoc sections state the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- HTML ---------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"lowrank_integrators {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False

# -- Gallery ------------------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "show_memory": False,
    "plot_gallery": "True",
}

# -- API reference ------------------------------------------------------------------------


@dataclass
class Group:
    """One section of the API reference: the modules whose public names it lists."""

    slug: str
    title: str
    intro: str
    modules: tuple[str, ...]
    #: Modules whose docstrings open a subsection (``automodule`` without members).
    described: tuple[str, ...] = ()
    #: Public names outside every ``__all__`` that the docstrings refer to (skipped if absent).
    extras: tuple[str, ...] = ()
    #: ``namespace -> short names`` in the order of the namespaces' ``__all__``.
    names: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    #: Modules declared as link targets only (their import needs what this build lacks).
    targets: tuple[str, ...] = ()


GROUPS = [
    Group(
        "state",
        "State and factors",
        "The factored states the integrators move: rank-r matrices ``U S V^H`` and Tucker tensors.",
        ("lowrank_integrators.factors", "lowrank_integrators.tucker"),
    ),
    Group(
        "problems",
        "Problems",
        "Right-hand sides given in factored form (``F V``, ``F^H U``, ``U^H F V``), for "
        "matrices and Tucker tensors, and sparse operators on row-chunked Dask factors. See "
        "also :doc:`../problems` and :doc:`../integrators/dask`.",
        (
            "lowrank_integrators.problems",
            "lowrank_integrators.tensor_problems",
            "lowrank_integrators.dask_operators",
        ),
        described=("lowrank_integrators.dask_operators",),
        extras=(
            "lowrank_integrators.dask_operators.ChunkedOperator",
            "lowrank_integrators.dask_operators.is_dask_array",
        ),
    ),
    Group(
        "truncation",
        "Truncation",
        "Rank decisions of the rank-adaptive integrators; every decision is recorded.",
        ("lowrank_integrators.truncation",),
    ),
    Group(
        "substeps",
        "Substeps",
        "Solvers of the small K-, L- and S-ODEs inside a step.",
        ("lowrank_integrators.substeps",),
        extras=(
            "lowrank_integrators.substeps.FactoredStart",
            "lowrank_integrators.substeps.Workspace",
        ),
    ),
    Group(
        "integrators",
        "Integrators",
        "Immutable configuration objects with ``init`` and ``step``; one module per method. "
        "The theory of each is in :doc:`../integrators/index`.",
        (
            "lowrank_integrators.integrators",
            "lowrank_integrators.protocol",
            "lowrank_integrators.methods",
        ),
    ),
    Group(
        "solve",
        "Solve and results",
        "The one-call driver, what it returns, the errors a run can end with and the thread "
        "limit of the library's entry points.",
        (
            "lowrank_integrators.solve",
            "lowrank_integrators.solution",
            "lowrank_integrators.errors",
            "lowrank_integrators.threads",
        ),
    ),
    Group(
        "verification",
        "Verification",
        "Diagnostics of a state or a step, the studies of the validation suite, which run on "
        "any problem and method, and the suite's reference problems. See :doc:`../verification`.",
        ("lowrank_integrators.diagnostics", "lowrank_integrators.verify"),
        described=(
            "lowrank_integrators.diagnostics",
            "lowrank_integrators.verify",
            "lowrank_integrators.validation",
            # the reference problems, each with its source and what theory predicts
            *(
                m.__name__
                for m in importlib.import_module("lowrank_integrators.validation").PROBLEM_MODULES
            ),
        ),
    ),
    Group(
        "training",
        "Training",
        "Dynamical low-rank training: the client that drives any matrix integrator with a "
        "gradient, the NumPy reference network, optimizers, data, checkpoints and runs. See "
        ":doc:`../training`.",
        ("lowrank_integrators.training",),
        described=("lowrank_integrators.training",),
    ),
    Group(
        "torch",
        "Torch",
        "PyTorch layers and optimizers (extra ``torch``).",
        ("lowrank_integrators.torch",),
    ),
]

#: Public namespaces whose ``__all__`` the reference covers; a module listed in an ``__all__``
#: is expanded into its own ``__all__``.
NAMESPACES = ("lowrank_integrators", "lowrank_integrators.training", "lowrank_integrators.verify")
#: Where torch names may live; every one present is documented.
TORCH_NAMESPACES = ("lowrank_integrators.torch",)


def _group_of(module: str) -> Group:
    for group in GROUPS:
        if any(module == m or module.startswith(m + ".") for m in group.modules):
            return group
    raise RuntimeError(
        f"the public module {module!r} belongs to no group of the API reference; "
        "add it to GROUPS in docs/conf.py"
    )


def _public_names(namespace: str) -> list[tuple[str, str, str]]:
    """``(namespace, name, defining module)`` for every name of ``namespace.__all__``."""
    mod = importlib.import_module(namespace)
    out = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            out += [(obj.__name__, sub, obj.__name__) for sub in obj.__all__]
        else:
            out.append((namespace, name, getattr(obj, "__module__", namespace)))
    return out


def _torch_namespaces() -> list[tuple[str, bool]]:
    """The torch namespaces of this version and whether each imports (torch installed)."""
    found = []
    for namespace in TORCH_NAMESPACES:
        if importlib.util.find_spec(namespace) is None:
            continue
        try:
            importlib.import_module(namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "torch":
                raise
            found.append((namespace, False))
        else:
            found.append((namespace, True))
    return found


def _add(group: Group, namespace: str, name: str) -> None:
    names = group.names.setdefault(namespace, [])
    if name not in names:
        names.append(name)


def _collect() -> None:
    for namespace in NAMESPACES:
        for ns, name, module in _public_names(namespace):
            _add(_group_of(module), ns, name)
    for group in GROUPS:
        for full in group.extras:
            ns, name = full.rsplit(".", 1)
            if hasattr(importlib.import_module(ns), name):
                _add(group, ns, name)
    torch_group = GROUPS[-1]
    found = _torch_namespaces()
    if not found:
        torch_group.note = "This version has no torch module."
    for namespace, importable in found:
        if importable:
            torch_group.described += (namespace,)
            for ns, name, _ in _public_names(namespace):
                _add(torch_group, ns, name)
        else:
            torch_group.targets += (namespace,)
            print(f"docs: torch is not installed; the API reference lists no names of {namespace}")
    if torch_group.targets:
        torch_group.note = (
            "Not listed here: torch was not installed where this site was built. Install the "
            'extra (``pip install ".[torch]"``) and rebuild to document these names.'
        )


def _autosummary(namespace: str, names: list[str]) -> str:
    entries = "\n".join(f"   {n}" for n in names)
    return (
        f".. currentmodule:: {namespace}\n\n"
        f".. autosummary::\n   :toctree: generated\n   :nosignatures:\n\n{entries}\n\n"
    )


def _group_page(g: Group) -> str:
    body = f"{g.title}\n{'=' * len(g.title)}\n\n{g.intro}\n\n"
    if g.note:
        body += f".. note::\n\n   {g.note}\n\n"
    for target in g.targets:
        body += f".. py:module:: {target}\n\n"
    namespaces = list(dict.fromkeys([*g.names, *g.described]))
    for ns in namespaces:
        if len(namespaces) > 1 or ns in g.described:
            body += f"``{ns}``\n{'-' * (len(ns) + 4)}\n\n"
        if ns in g.described:
            body += f".. automodule:: {ns}\n   :no-members:\n\n"
        if g.names.get(ns):
            body += _autosummary(ns, g.names[ns])
    return body


def _write_api() -> None:
    api = DOCS / "api"
    api.mkdir(exist_ok=True)
    toc = "\n".join(f"   {g.slug}" for g in GROUPS)
    index = (
        "API reference\n=============\n\n"
        "Every public name of ``lowrank_integrators`` (its ``__all__``), of "
        "``lowrank_integrators.verify``, ``lowrank_integrators.training`` and of the torch "
        "module, generated from the docstrings and grouped as the package is laid out.\n\n"
        f".. toctree::\n   :maxdepth: 2\n\n{toc}\n"
    )
    _write_if_changed(api / "index.rst", index)
    for g in GROUPS:
        _write_if_changed(api / f"{g.slug}.rst", _group_page(g))
    # pages of names no longer public (or of torch in an earlier build with it) would be
    # orphans, which -W turns into errors
    current = {f"{ns}.{name}" for g in GROUPS for ns, names in g.names.items() for name in names}
    for stale in (api / "generated").glob("*.rst"):
        if stale.stem not in current:
            stale.unlink()


def _write_if_changed(path: Path, text: str) -> None:
    # unchanged sources keep their timestamps, so incremental builds stay incremental
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


_collect()
_write_api()

# -- Optional pages -----------------------------------------------------------------------

#: Top-level pages that other parts of the project may add; each one present joins the
#: table of contents of the index at the ``optional-pages`` marker.
OPTIONAL_PAGES = ("torch", "finetuning")
OPTIONAL_MARKER = "<!-- optional-pages -->"


def _add_optional_pages(app, docname, source):
    if docname != root_doc:
        return
    present = [p for p in OPTIONAL_PAGES if (DOCS / f"{p}.md").exists()]
    source[0] = source[0].replace(OPTIONAL_MARKER, "\n".join(present))


def setup(app):
    app.connect("source-read", _add_optional_pages)
    os.environ.setdefault("MPLBACKEND", "Agg")
