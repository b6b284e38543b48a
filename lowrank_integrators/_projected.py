r"""Projected operators ``W^H op W`` formed once per step.

The substep fields of a Sylvester problem need the small matrices ``W^H A W`` and
``W^H B^T W`` of their bases. Within one step several fields share a basis: the backward
S-step of projector splitting uses the K-step's ``V0`` and the L-step's ``U1``; the parallel
BUG's S-step uses the bases of its K- and L-steps; the products ``F V`` and ``F^H U`` of the
midpoint BUG use the bases of the Galerkin step before them.

:class:`ProjectedOperators` keeps these products while a step runs: a problem driver enters
:meth:`ProjectedOperators.scope` for one step (see
:func:`~lowrank_integrators.protocol.answer_from_problem`), and everything is released when
it ends. Bases are recognised by identity (weak references: a basis the step releases is
released); within a step no basis is modified in place, so a product found for the same
array object is the product of the same matrix. Outside a scope nothing is kept.

The augmented bases ``[W0 D, Q]`` of the rank-adaptive integrators begin with an old basis,
and ``W^H op W`` could be assembled from ``W0^H op W0`` and the blocks of the new columns
(three quarters of the products). Measured on the Sylvester benchmark this was slower than
the whole product: the exact check of the leading block and the two products over a block
of columns cost more than the quarter they save.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from . import _backend as bk

__all__ = ["ProjectedOperators"]


class ProjectedOperators:
    """``W^H op W`` of the bases of one step, each formed once (see the module docstring).

    One instance belongs to one problem. The products kept are those of the current thread's
    scope; copies and pickles of the instance start empty.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Keep the products formed until the outermost scope of this thread ends."""
        if getattr(self._local, "kept", None) is not None:
            yield
            return
        self._local.kept = {}
        try:
            yield
        finally:
            self._local.kept = None

    def get(self, W: Any, op: Any, key: str) -> Any:
        """``W^H op W``, formed once per scope for each basis and ``key`` (the operator)."""
        kept = getattr(self._local, "kept", None)
        if kept is None:
            return bk.sandwich(W, op, W)
        found = kept.get((key, id(W)))
        if found is not None and found[0]() is W:
            return found[1]
        value = bk.sandwich(W, op, W)
        try:
            # a weak reference: a basis the step releases is not kept alive by its product
            kept[(key, id(W))] = (weakref.ref(W), value)
        except TypeError:  # arrays without weak references are not kept
            pass
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> ProjectedOperators:
        return ProjectedOperators()
