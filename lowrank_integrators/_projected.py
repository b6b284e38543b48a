r"""Projected operators ``W^H op W`` formed once per step.

The substep fields of a Sylvester problem need the small matrices ``W^H A W`` and
``W^H B^T W`` of their bases. Within one step several fields share a basis: the backward
S-step of projector splitting uses the K-step's ``V0`` and the L-step's ``U1``; the parallel
BUG's S-step uses the bases of its K- and L-steps; the products ``F V`` and ``F^H U`` of the
midpoint BUG use the bases of the Galerkin step before them. And the augmented bases of the
rank-adaptive integrators, ``W = [W0 D, Q]``, begin with an old basis ``W0`` (``D`` diagonal
signs): with ``W0^H op W0`` formed, only the blocks of the new columns are needed,

.. math::

    W^H \operatorname{op} W = \begin{bmatrix} D\,W_0^H \operatorname{op} W_0\,D &
    D\,W_0^H \operatorname{op} Q \\ Q^H \operatorname{op} W_0\,D & Q^H \operatorname{op} Q
    \end{bmatrix},

that is ``W^H (op Q)`` and ``W0^H op^T Q``: three quarters of the products of the whole
``W^H op W`` when ``Q`` has as many columns as ``W0``.

:class:`ProjectedOperators` keeps these products while a step runs: a problem driver enters
:meth:`ProjectedOperators.scope` for one step (see
:func:`~lowrank_integrators.protocol.answer_from_problem`), and everything is released when
it ends. Bases are recognised by identity (weak references: a basis the step releases is
released); within a step no basis is modified in place, so a product found for the same
array object is the product of the same matrix. Outside a scope nothing is kept.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
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

    def get(
        self,
        W: Any,
        op: Any,
        key: str,
        transposed: Callable[[], Any] | None = None,
    ) -> Any:
        """``W^H op W``, formed once per scope for each basis and ``key`` (the operator).

        ``transposed()`` returns ``op^T`` (real arrays), for the blocks of an augmented basis
        ``[W0 D, Q]`` whose ``W0^H op W0`` was formed in this scope. Without it, or for
        complex arrays, the whole product is formed.
        """
        kept = getattr(self._local, "kept", None)
        if kept is None:
            return bk.sandwich(W, op, W)
        found = kept.get((key, id(W)))
        if found is not None and found[0]() is W:
            return found[1]
        value = None
        if transposed is not None:
            value = self._from_leading_block(kept, W, op, key, transposed)
        if value is None:
            value = bk.sandwich(W, op, W)
        try:
            # a weak reference: a basis the step releases is not kept alive by its product
            kept[(key, id(W))] = (weakref.ref(W), value)
        except TypeError:  # arrays without weak references are not kept
            pass
        return value

    @staticmethod
    def _from_leading_block(
        kept: dict[tuple[str, int], tuple[weakref.ref[Any], Any]],
        W: Any,
        op: Any,
        key: str,
        transposed: Callable[[], Any],
    ) -> Any | None:
        from .integrators.augmentation import leading_signs

        width = int(W.shape[1])
        alive = [(ref(), P0) for (k, _), (ref, P0) in kept.items() if k == key]
        candidates = [(W0, P0) for W0, P0 in alive if W0 is not None and 0 < W0.shape[1] < width]
        # the widest old basis first: the fewest new columns
        for W0, P0 in sorted(candidates, key=lambda pair: -int(pair[0].shape[1])):
            d = leading_signs(W, W0)
            if d is None:
                continue
            r = int(W0.shape[1])
            Q = W[:, r:]  # a view: the fused sandwich reads it in place
            X = bk.sandwich(W, op, Q)  # [D W0^T op Q; Q^T op Q]
            lower = bk.sandwich(W0, transposed(), Q).T * d[None, :]  # Q^T op W0 D
            xp = bk.namespace(P0)
            lead = (d[:, None] * P0) * d[None, :]
            return xp.concat(
                [xp.concat([lead, X[:r, :]], axis=1), xp.concat([lower, X[r:, :]], axis=1)]
            )
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> ProjectedOperators:
        return ProjectedOperators()
