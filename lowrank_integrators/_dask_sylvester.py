r"""The products of :class:`~lowrank_integrators.SylvesterODE` on row-chunked Dask factors.

``F(t, Y) = A Y + Y B^T + C`` with SciPy sparse ``A``, ``B`` and a state whose tall factors are
Dask arrays. Every tall product is lazy and keeps the factors' row chunks; the operators act
chunk by chunk through :class:`~lowrank_integrators.dask_operators.ChunkedOperator` (halo
exchange for banded operators, gathered rows for general CSR). Nothing is densified and no
tall array is computed on the client; the ``r x r`` coefficients are Gram-type reductions
(``W^H (A V)``), the only data that leaves the chunks.

The fields are functional (a new lazy array per stage, no in-place updates): Dask arrays do not
support item assignment into a workspace.

Imported by :mod:`lowrank_integrators.problems` only when a factor is a Dask array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend as bk
from ._dask import _inner
from .dask_operators import ChunkedOperator, is_dask_array
from .factors import LowRankMatrix
from .problems import sylvester_core_field


class DaskSylvester:
    """The field products of a SylvesterODE for Dask factors (built once per problem).

    Parameters
    ----------
    problem : SylvesterODE
        Its ``A``, ``B`` must be SciPy sparse (or :class:`ChunkedOperator`); ``C`` ``None``, a
        2-D array (NumPy or Dask) or a :class:`LowRankMatrix` (NumPy or Dask factors).
    """

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        ops: list[ChunkedOperator] = []

        def chunked(name: str, op: Any) -> ChunkedOperator:
            try:
                new = ChunkedOperator.of(op)
            except TypeError:
                raise TypeError(
                    f"{name} is a {type(op).__module__}.{type(op).__name__}, but a "
                    "SylvesterODE on Dask factors needs SciPy sparse operators (applied chunk "
                    "by chunk); write a MatrixODE with Dask operations for other operators"
                ) from None
            # A symmetric operator and its transposes share one set of row blocks.
            for known in ops:
                if known.same_as(new):
                    return known
            ops.append(new)
            return new

        self.A = chunked("A", problem.A)
        self.A_H = chunked("A", problem.A_H)
        self.B_T = self.B_conj = None
        if problem.B is not None:
            self.B_T = chunked("B", problem.B_T)
            self.B_conj = chunked("B", problem.B_conj)
        self._tall_cache: dict[tuple[str, tuple[int, ...]], Any] = {}

    # --- the source C -------------------------------------------------------------------------

    def _tall(self, key: str, x: Any, chunks: tuple[int, ...]) -> Any:
        """``x`` as a Dask array with row chunks ``chunks`` (host arrays converted once)."""
        if is_dask_array(x):
            return x if tuple(x.chunks[0]) == chunks else x.rechunk({0: chunks})
        cached = self._tall_cache.get((key, chunks))
        if cached is None:
            import dask.array as da

            cached = da.from_array(np.asarray(x), chunks=(chunks, -1))
            self._tall_cache[(key, chunks)] = cached
        return cached

    def _source(self, like: Any, right: Any = None, left: Any = None) -> Any:
        """``C V`` (``right``) or ``C^H U`` (``left``) with the row chunks of ``like``."""
        C = self.problem.C
        if C is None:
            return None
        chunks = tuple(like.chunks[0])
        if isinstance(C, LowRankMatrix):
            Uc, Sc, Vc = C
            if right is not None:
                coef = Sc @ (bk.adjoint(Vc) @ right)
                return self._tall("Uc", Uc, chunks) @ coef
            coef = bk.adjoint(Sc) @ (bk.adjoint(Uc) @ left)
            return self._tall("Vc", Vc, chunks) @ coef
        if right is not None:
            return self._tall("C", C, chunks) @ right
        return self._tall("C^H", bk.adjoint(C), chunks) @ left

    def _source_project(self, U: Any, V: Any) -> Any:
        C = self.problem.C
        if C is None:
            return None
        if isinstance(C, LowRankMatrix):
            Uc, Sc, Vc = C
            return (bk.adjoint(U) @ Uc) @ Sc @ (bk.adjoint(Vc) @ V)
        return _inner(U, self._tall("C", C, tuple(U.chunks[0])) @ V)

    # --- the products -------------------------------------------------------------------------

    def apply_right(self, t: float, Y: LowRankMatrix, V: Any) -> Any:
        """``F V = (A U_Y) (S_Y V_Y^H V) + U_Y (S_Y V_Y^H B^T V) + C V``."""
        Uy, Sy, Vy = Y
        out = (self.A @ Uy) @ (Sy @ (bk.adjoint(Vy) @ V))
        if self.B_T is not None:
            out = out + Uy @ (Sy @ _inner(Vy, self.B_T @ V))
        source = self._source(out, right=V)
        return out if source is None else out + source

    def apply_left(self, t: float, Y: LowRankMatrix, U: Any) -> Any:
        """``F^H U = conj(B) V_Y (S_Y^H U_Y^H U) + V_Y (S_Y^H U_Y^H A^H U) + C^H U``."""
        Uy, Sy, Vy = Y
        Sh = bk.adjoint(Sy)
        out = Vy @ (Sh @ _inner(Uy, self.A_H @ U))
        if self.B_conj is not None:
            out = out + (self.B_conj @ Vy) @ (Sh @ (bk.adjoint(Uy) @ U))
        source = self._source(out, left=U)
        return out if source is None else out + source

    def project(self, t: float, Y: LowRankMatrix, U: Any, V: Any) -> Any:
        """``U^H F V = U^H (A U_Y) S_Y V_Y^H V + (U^H U_Y) S_Y V_Y^H B^T V + U^H C V``."""
        Uy, Sy, Vy = Y
        out = _inner(U, self.A @ Uy) @ (Sy @ (bk.adjoint(Vy) @ V))
        if self.B_T is not None:
            out = out + (bk.adjoint(U) @ Uy) @ Sy @ _inner(Vy, self.B_T @ V)
        source = self._source_project(U, V)
        return out if source is None else out + source

    def k_field(self, V: Any) -> Callable[[float, Any], Any]:
        """``K -> A K + K (V^H B^T V) + C V``: one task per chunk and stage (and its halo)."""
        Bv = _inner(V, self.B_T @ V) if self.B_T is not None else None
        W, coef = self._source_factors(V, right=V)
        return lambda t, K: self.A.stage(K, Bv, W, coef)

    def l_field(self, U: Any) -> Callable[[float, Any], Any]:
        """``L -> conj(B) L + L (U^H A U)^H + C^H U``."""
        AhU = _inner(U, self.A_H @ U)
        if self.B_conj is not None:
            W, coef = self._source_factors(U, left=U)
            return lambda t, L: self.B_conj.stage(L, AhU, W, coef)
        source = self._source(U, left=U)

        def field(t: float, L: Any) -> Any:
            out = L @ AhU
            return out if source is None else out + source

        return field

    def _source_factors(self, like: Any, right: Any = None, left: Any = None) -> tuple[Any, Any]:
        """``(W, coef)`` with ``W @ coef`` the source of a substep; a dense ``C`` gives
        ``(C V, identity)``, no source ``(None, None)``."""
        C = self.problem.C
        if C is None:
            return None, None
        chunks = tuple(like.chunks[0])
        if isinstance(C, LowRankMatrix):
            Uc, Sc, Vc = C
            if right is not None:
                return self._tall("Uc", Uc, chunks), Sc @ (bk.adjoint(Vc) @ right)
            return self._tall("Vc", Vc, chunks), bk.adjoint(Sc) @ (bk.adjoint(Uc) @ left)
        product = self._source(like, right=right, left=left)
        return product, np.eye(int(product.shape[1]), dtype=product.dtype)

    def s_field(self, U: Any, V: Any) -> Callable[[float, Any], Any]:
        """``S -> (U^H A U) S + S (V^H B^T V) + U^H C V`` with coefficients on the host.

        The ``r x r`` coefficients are computed together in one Dask computation; the
        Galerkin substep is then small host algebra.
        """
        import dask

        terms = [_inner(U, self.A @ U)]
        if self.B_T is not None:
            terms.append(_inner(V, self.B_T @ V))
        source = self._source_project(U, V)
        if source is not None:
            terms.append(source)
        values = list(dask.compute(*terms))
        Au = values.pop(0)
        Bv = values.pop(0) if self.B_T is not None else None
        Cuv = values.pop(0) if source is not None else None
        return sylvester_core_field(Au, Bv, Cuv)
