r"""Solvers for the small matrix ODEs (K-, L- and S-steps) inside one integrator step.

Every substep of a step is an ODE ``X' = f(t, X)`` on an interval ``[t0, t1]`` (the same
interval for all substeps of a step; composite methods such as Strang split it explicitly).
A solver maps ``(ode, t0, t1, X0)`` to ``X1``.

When the right-hand side does not depend on the state (explicit data ``F = A'(t)``, see
:class:`~lowrank_integrators.DataODE`), the substep ODE offers its exact increment
``int_{t0}^{t1} f dt`` and every solver uses it: the substep is then solved exactly.

The K- and L-steps start from a product of a tall basis and a small matrix (``K0 = U0 S0``).
The integrators hand it over as a :class:`FactoredStart`, so that a solver which needs the
start value at every stage (RK4) re-forms it block by block instead of keeping one more tall
array alive: with the structured fields of :class:`~lowrank_integrators.SylvesterODE`, an RK4
substep then holds three arrays of the size of ``X`` (accumulator, stage, stage derivative),
which is what sets the memory of a step at ``n ~ 1e6``. A solver that does not declare
``accepts_factored_start`` receives an ordinary array.

For a field that is affine and the same at every time (the driver says so in answer to an
``lowrank_integrators.protocol.Affine`` request) RK4 evaluates its step in nested form
(:meth:`RK4.affine_stages`): the same result up to round-off, with the start formed once and
one register update per stage.
"""

from __future__ import annotations

import numbers
import sys
import threading
import weakref
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Protocol

import numpy as np

from . import _backend as bk
from . import _fused
from ._checks import check_product
from .protocol import (
    Affine,
    FieldFunction,
    Increment,
    StageUpdate,
    SubstepCall,
    Updated,
    queries_declined,
    received,
    run_to_end,
)

__all__ = [
    "RK4",
    "CallableSubstep",
    "Euler",
    "FactoredStart",
    "SubstepODE",
    "SubstepSolver",
    "Workspace",
    "as_substep",
    "evaluate",
]


class FactoredStart:
    """The start value ``X0 = left @ right`` of a substep, kept as its two factors.

    Parameters
    ----------
    left : array, shape (m, r)
        Tall factor (a basis of the step).
    right : array, shape (r, k)
        Small factor.
    workspace : Workspace, optional
        Work arrays of the step, lent to the solver (see :class:`Workspace`).
    """

    def __init__(self, left: Any, right: Any, workspace: Workspace | None = None) -> None:
        if int(left.shape[1]) != int(right.shape[0]):
            raise ValueError(
                f"left has {left.shape[1]} columns but right has {right.shape[0]} rows"
            )
        self.left = left
        self.right = right
        self.workspace = workspace
        #: The product, when a solver has formed it for an evaluation (else ``None``).
        self.formed: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.left.shape[0]), int(self.right.shape[1]))

    @property
    def dtype(self) -> Any:
        return self.left.dtype

    def to_array(self) -> Any:
        """``left @ right``: a new array, or the solver's :attr:`formed` product if set."""
        if self.formed is not None:
            return self.formed
        return self.left @ self.right

    def rows(self, b: slice) -> Any:
        """The rows ``b`` of ``left @ right``."""
        return self.left[b, :] @ self.right

    def __repr__(self) -> str:
        return f"FactoredStart(shape={self.shape})"


def start_array(X0: Any) -> Any:
    """``X0`` as an array (the caller's own array when it is one)."""
    return X0.to_array() if isinstance(X0, FactoredStart) else X0


def owned_start(X0: Any) -> Any:
    """``X0`` as a new array that the solver may update in place."""
    return X0.to_array() if isinstance(X0, FactoredStart) else bk.copy(X0)


def assign_stage(out: Any, X0: Any, alpha: float, k: Any) -> Any:
    """``out[...] = X0 + alpha * k`` in place, block by block (``X0`` may be factored).

    Returns ``out``, or a new array where ``out`` allows no item assignment (Dask).
    """
    if not bk.allows_item_assignment(out):
        return start_array(X0) + alpha * k
    if len(out.shape) != 2:
        out[...] = start_array(X0) + alpha * k
        return out
    factored = isinstance(X0, FactoredStart)
    if bk.single_block(out):  # updated whole, without slices
        np.add(X0.left @ X0.right if factored else X0, alpha * k, out=out)
        return out
    blocks = bk.row_blocks(out)
    if len(blocks) == 1:  # other libraries: one block, updated whole
        out[...] = (X0.left @ X0.right if factored else X0) + alpha * k
        return out
    for b in blocks:
        out[b, :] = (X0.rows(b) if factored else X0[b, :]) + alpha * k[b, :]
    return out


#: Elements of one block of rows in the fused RK4 updates: the block of the start value formed
#: by BLAS is still in cache when the stage and the accumulator are updated from it.
_STAGE_BLOCK_ELEMENTS = 1 << 15


def _stage_blocks(x: Any) -> list[slice]:
    rows, cols = int(x.shape[0]), int(x.shape[1])
    step = max(1, _STAGE_BLOCK_ELEMENTS // max(1, cols))
    return [slice(i, min(i + step, rows)) for i in range(0, max(rows, 1), step)]


def _small(X: Any) -> bool:
    """Whether ``X`` (an array or a :class:`FactoredStart`) is a NumPy matrix small enough for
    whole-array RK4 updates (the size below which :func:`rk4_update` updates whole arrays):
    work arrays, spares and folded stages gain nothing there."""
    if type(X) is np.ndarray:
        return X.ndim == 2 and X.size <= _STAGE_BLOCK_ELEMENTS // 8
    if isinstance(X, FactoredStart) and _formable(X):
        rows, cols = X.shape
        return rows * cols <= _STAGE_BLOCK_ELEMENTS // 8
    return False


def _foldable(X: Any) -> bool:
    """Whether ``X`` is a C-ordered 2-D NumPy array the solver's registers may be updated
    from in place (a stage request then carries its register updates)."""
    return type(X) is np.ndarray and X.ndim == 2 and X.flags.c_contiguous and bk.allows_inplace(X)


def _formable(X: FactoredStart) -> bool:
    """Whether the solver forms this start itself (NumPy factors of matching dtype)."""
    left, right = X.left, X.right
    return type(left) is np.ndarray and type(right) is np.ndarray and left.dtype == right.dtype


def _probe_references() -> Generator[int, None, None]:
    x = np.empty(1)
    yield sys.getrefcount(x)


#: ``sys.getrefcount`` of an array held by one local name of a generator, and nothing else
#: (measured: the count includes the call's own argument, and differs between interpreters).
_SOLE_REFERENCES = next(_probe_references()) if hasattr(sys, "getrefcount") else -1


class _Carvings:
    """Arrays carved out of a tall array that a step method keeps, by id (weak references).

    A view is never owned by its holder alone in general: another view of the same storage
    may exist. A step that keeps an array between its steps and lends parts of it as work
    arrays (:meth:`~lowrank_integrators.integrators.augmentation.KeptStorage.carve`) registers
    the parts here; such a part counts as owned when, besides the one holder of the array, the
    only references to the array are the live registered parts (each holds it as its base):
    no one else holds a view of it.
    """

    def __init__(self) -> None:
        self._parts: dict[int, Any] = {}
        self._lock = threading.Lock()

    def add(self, parts: list[np.ndarray]) -> None:
        with self._lock:
            for key in [k for k, ref in self._parts.items() if ref() is None]:
                del self._parts[key]
            for x in parts:
                self._parts[id(x)] = weakref.ref(x)

    def sole(self, x: np.ndarray) -> bool:
        """Whether ``x`` is a registered part and its array is held as described above."""
        return self._others(x) == _CARVED_HOLDERS

    def _others(self, x: np.ndarray) -> int | None:
        """``sys.getrefcount`` of ``x``'s array here, less its live registered parts; ``None``
        for an unregistered ``x``."""
        with self._lock:
            ref = self._parts.get(id(x))
            if ref is None or ref() is not x:
                return None
            block = x.base
            live = 0
            for r in self._parts.values():
                part = r()
                if part is not None and part.base is block:
                    live += 1
            part = None
            return sys.getrefcount(block) - live


def _probe_carved_holders() -> int:
    """What :meth:`_Carvings._others` counts for an array that one name holds (measured
    through the same code, as :data:`_SOLE_REFERENCES` is: the counts differ between
    interpreters)."""
    probe = _Carvings()
    holder = [np.empty(4)]
    part = holder[0].reshape(-1)[:2]
    probe.add([part])
    count = probe._others(part)
    assert count is not None
    return count


#: See :func:`_probe_carved_holders`.
_CARVED_HOLDERS = _probe_carved_holders() if hasattr(sys, "getrefcount") else -1

#: The parts of kept arrays that steps lend as work arrays (see :class:`_Carvings`).
carved = _Carvings()


def owned_result(x: Any, references: int) -> bool:
    """Whether a step may overwrite the result ``x`` of a substep (its QR in place).

    ``references`` is ``sys.getrefcount(x)`` taken in the step's generator, where ``x`` is
    held by one local name, in a statement of its own (an argument list being built holds
    references too): true for a NumPy array no one else references (the solver kept none)
    that owns its C-ordered, writeable data.
    """
    return _owned(x, references)


def _owned(x: Any, references: int) -> bool:
    """Whether the solver may overwrite the NumPy array ``x``.

    ``references`` is ``sys.getrefcount(x)`` taken by the caller (a generator holding ``x``
    in one local name): no one else may hold a reference, and ``x`` must own its C-ordered,
    writeable data (not be a view into an array someone else may hold).
    """
    return (
        references <= _SOLE_REFERENCES
        and type(x) is np.ndarray
        and (x.base is None or carved.sole(x))
        and x.flags.c_contiguous
        and x.flags.writeable
    )


def rk4_update(acc: Any, stage: Any, X0: Any, k: Any, c: float, a: float, first: bool) -> None:
    """The RK4 updates after a stage derivative ``k``, in one pass over the rows.

    ``first``: ``acc = X0 + c k``, otherwise ``acc += c k``; then ``stage = X0 + a k``.
    A factored ``X0`` is formed once per block of rows for both updates; ``X0`` may be
    ``acc`` itself (the start formed there, ``first``). ``k`` is read once, and ``stage``
    may be ``k`` itself (a NumPy derivative the solver owns, updated in
    place: every entry of ``k`` is read before it is overwritten). The arrays are updated
    block by block of rows while the block is in cache, with no temporary larger than a
    block. NumPy only: other arrays take :class:`RK4`'s functional path.
    """
    if type(k) is not np.ndarray or k.ndim != 2:
        raise TypeError(
            f"rk4_update updates 2-D NumPy arrays in place, got k of type {type(k).__name__}"
        )
    factored = isinstance(X0, FactoredStart)
    if k.size <= _STAGE_BLOCK_ELEMENTS // 8:  # small: whole-array operations, no blocks
        x0 = X0.left @ X0.right if factored else X0.copy() if X0 is acc else X0
        if first:
            np.add(x0, k * c, out=acc)
        else:
            acc += k * c
        np.add(x0, k * a, out=stage)
        return
    blocks = _stage_blocks(k)
    rows = blocks[0].stop - blocks[0].start
    # numba (the extra ``fast``): one compiled pass over all rows, same entrywise operations
    if _fused.rk4_update(acc, stage, k, (X0.left, X0.right) if factored else X0, c, a, first, rows):
        return
    alias = X0 is acc  # the start formed in acc, overwritten block by block
    x0 = np.empty((rows, k.shape[1]), dtype=k.dtype) if factored else None
    tmp = None
    for b in blocks:
        kb, sb, ab = k[b], stage[b], acc[b]
        if factored:
            x0b = x0[: kb.shape[0]]
            np.matmul(X0.left[b], X0.right, out=x0b)
        else:
            x0b = X0[b]
        if tmp is None:
            tmp = np.empty((rows, k.shape[1]), dtype=k.dtype)
            if alias:
                x0 = np.empty((rows, k.shape[1]), dtype=k.dtype)
        t = tmp[: kb.shape[0]]
        if alias:
            x0b = x0[: kb.shape[0]]
            x0b[...] = ab
        np.multiply(kb, c, out=t)
        if first:
            np.add(x0b, t, out=ab)
        else:
            ab += t
        np.multiply(kb, a, out=t)
        np.add(x0b, t, out=sb)


class Workspace:
    """Tall work arrays that a step owns and lends to its RK4 substeps, kept across steps.

    An RK4 substep from a :class:`FactoredStart` that carries a workspace forms its start and
    its first derivatives in arrays taken from it, and leaves its dead registers there at the
    end (NumPy arrays that no one else references): two when its field writes its results
    into spare arrays (the compiled fields of :class:`~lowrank_integrators.SylvesterODE`),
    else one (the next start). A step that keeps one workspace over a sequence of steps then
    allocates one new tall array per substep (its result) instead of three: at ``n ~ 1e6``
    fresh arrays cost page faults. At most :attr:`keep` arrays of at least ``TALL_ENTRIES``
    entries are kept, all of one shape and dtype. A step whose peak memory lies outside its
    substeps should not lend one (the kept arrays would add to that peak), or should clear it
    before that peak. :meth:`clear` releases them; a copied or unpickled workspace is empty.

    Parameters
    ----------
    keep : int, optional
        Largest number of arrays kept (default :attr:`keep`).
    """

    #: Largest number of arrays kept.
    keep = 2

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None:
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                raise ValueError(f"keep must be a positive integer, got {keep!r}")
            self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """A kept array of this shape and dtype (no longer kept), or None."""
        with self._lock:
            for i, x in enumerate(self._free):
                if x.shape == tuple(shape) and x.dtype == dtype:
                    return self._free.pop(i)
        return None

    def give(self, x: np.ndarray) -> None:
        """Keep the dead array ``x`` if it is tall (the caller drops its reference)."""
        if type(x) is not np.ndarray or x.size < TALL_ENTRIES:
            return
        with self._lock:
            self._free = [y for y in self._free if y.shape == x.shape and y.dtype == x.dtype]
            self._free.append(x)
            del self._free[: -self.keep]

    def clear(self) -> None:
        """Release the kept arrays."""
        with self._lock:
            self._free = []

    def __len__(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept arrays."""
        return sum(int(x.nbytes) for x in self._free)

    def __getstate__(self) -> dict[str, Any]:
        return {"keep": self.keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("keep"))  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        return Workspace(self.keep)

    def __repr__(self) -> str:
        return f"Workspace(kept={len(self._free)})"


def lend_workspace(X0: Any, owner: Any) -> Any:
    """``X0`` with the :class:`Workspace` of ``owner`` (a step method) when it is factored.

    The workspace is created on first use and kept in ``owner`` (across its steps); an array
    ``X0`` (a solver without factored starts) is returned as it is.
    """
    if isinstance(X0, FactoredStart):
        workspace = owner.__dict__.get("_workspace")
        if workspace is None:
            workspace = owner.__dict__["_workspace"] = Workspace()
        X0.workspace = workspace
    return X0


#: Arrays with fewer entries than this are not kept by a :class:`Workspace` (fresh small
#: arrays cost no page faults).
TALL_ENTRIES = 1 << 15


def _give_back_spare(workspace: Workspace | None) -> None:
    """Return to ``workspace`` an array offered as a spare that the field did not take."""
    spare = _fused.take_back_spare()
    if spare is not None and workspace is not None:
        workspace.give(spare)


def _call_with_spare(
    f: Evaluate,
    t: float,
    X: Any,
    start: bool,
    workspace: Workspace | None,
    update: StageUpdate | None = None,
) -> Generator[Any, Any, Any]:
    """``f(t, X, start, update)`` with an array of ``workspace`` offered as a spare.

    A field that asks for a spare (see :func:`lowrank_integrators._fused.take_spare`) writes
    its result there (or, answering ``update`` folded, a register); an offered array that it
    did not take goes back to the workspace.
    """
    _fused.start_asking()
    if workspace is None:
        return (yield from f(t, X, start, update))
    shape = tuple(int(d) for d in X.shape)
    numpy = type(X) is np.ndarray or (isinstance(X, FactoredStart) and _formable(X))
    spare = workspace.take(shape, X.dtype) if numpy and len(shape) == 2 else None
    if spare is not None:
        _fused.offer_spare(spare)
        spare = None
    k = yield from f(t, X, start, update)
    _give_back_spare(workspace)
    return k


class SubstepODE(Protocol):
    """What a substep solver's synchronous call receives: the right-hand side and, optionally,
    its exact integral."""

    def rhs(self, t: float, X: Any) -> Any:
        """``f(t, X)``."""

    def increment(self, t0: float, t1: float) -> Any | None:
        """``int_{t0}^{t1} f dt`` when ``f`` does not depend on ``X``; otherwise ``None``."""


#: ``evaluate(t, X, start, update) -> generator returning f(t, X)``: how a solver written as
#: requests evaluates its field (``start`` marks an evaluation at the substep's start value;
#: ``update``, a :class:`~lowrank_integrators.protocol.StageUpdate` or ``None``, the register
#: updates that follow, which the answer may have done: an
#: :class:`~lowrank_integrators.protocol.Updated` instead of ``f(t, X)``).
Evaluate = Callable[..., Generator[Any, Any, Any]]


def evaluate(
    ode: Any, t: float, X: Any, start: bool = False, update: StageUpdate | None = None
) -> Generator[Any, Any, Any]:
    """``f(t, X)`` of a substep ODE, as a request when the ODE makes requests.

    An ODE of the integrators (:class:`~lowrank_integrators.integrators.base.KStep` and
    friends) turns the evaluation into a :class:`~lowrank_integrators.protocol.Field` request
    and applies its sign to the answer; a plain ODE object with ``rhs(t, X)`` is called
    directly. ``update`` travels with the request of an ODE that declares
    ``accepts_update``; a driver that folded it in answers with an
    :class:`~lowrank_integrators.protocol.Updated`, which is returned as it is.
    """
    make = getattr(ode, "request", None)
    if make is None:
        return ode.rhs(t, start_array(X))
    if update is not None and getattr(ode, "accepts_update", False):
        out = received((yield make(t, X, start, update)))
        if type(out) is Updated:
            return out
    else:
        out = received((yield make(t, X, start)))
    return ode.finish(out)


def exact_increment(ode: Any, t0: float, t1: float) -> Generator[Any, Any, Any]:
    """The exact integral of the ODE's field over ``[t0, t1]``, or ``None``.

    An ODE that declares ``has_increments = False`` (its field depends on the state whatever
    the problem) has none, and no request is made.
    """
    if getattr(ode, "request", None) is None:
        return ode.increment(t0, t1)
    if not getattr(ode, "has_increments", True) or queries_declined():
        return None
    return (yield Increment(ode, t0, t1))


def is_affine(ode: Any, t0: float, t1: float) -> Generator[Any, Any, bool]:
    """Whether the driver declares the field of ``ode`` affine and autonomous on ``[t0, t1]``
    (an ``Affine`` request of ``lowrank_integrators.protocol``); ``False`` for a plain ODE
    object."""
    if getattr(ode, "request", None) is None or queries_declined():
        return False
    return (yield Affine(ode, t0, t1)) is True


def _dtype_of(X0: Any) -> Any:
    return X0.left.dtype if isinstance(X0, FactoredStart) else X0.dtype


def _synchronous(f: Callable[[float, Any], Any]) -> Evaluate:
    def ev(
        t: float, X: Any, start: bool = False, update: StageUpdate | None = None
    ) -> Generator[Any, Any, Any]:
        return f(t, start_array(X))
        yield  # pragma: no cover - makes this function a generator

    return ev


class SubstepSolver:
    """Base class of substep solvers.

    A solver has two faces:

    * :meth:`solve` ``(ode, t0, t1, X0)`` is a generator (the step protocol, see
      ``lowrank_integrators.protocol``): integrators call
      ``X1 = yield from self.substep.solve(ode, t0, t1, X0)``. Its field evaluations are
      requests, so one solver serves ``solve`` and training alike.
    * ``solver(ode, t0, t1, X0)`` calls a plain ODE object (``rhs``, ``increment``)
      synchronously.

    Subclasses written as requests implement :meth:`stages` (``k = yield from f(t, X)`` for
    every evaluation) and set ``yields_requests = True``; subclasses written synchronously
    implement ``integrate`` only, and a step using them can be answered by a problem, not
    by the training client. Both first use the exact increment of a state-independent
    right-hand side when the ODE offers one.
    """

    #: Order of the solver on smooth problems (for documentation and validation).
    order: int = 0
    #: Whether ``integrate`` accepts a :class:`~lowrank_integrators.substeps.FactoredStart`
    #: as ``X0``.
    accepts_factored_start: bool = False
    #: Whether :meth:`solve` evaluates the field through requests (:meth:`stages`).
    yields_requests: bool = False
    #: Whether :meth:`affine_stages` arranges the stages of :meth:`stages` for a field that
    #: is affine and autonomous (same result up to round-off); :meth:`solve` asks the driver
    #: with an ``Affine`` request (``lowrank_integrators.protocol``) before a large substep.
    has_affine_stages: bool = False

    def __call__(self, ode: SubstepODE, t0: float, t1: float, X0: Any) -> Any:
        shape, dtype = tuple(X0.shape), _dtype_of(X0)
        inc = ode.increment(t0, t1)
        if inc is not None:
            inc = check_product("the exact increment of a substep", inc, shape, dtype)
            return bk.add_scaled(owned_start(X0), 1.0, inc)
        if isinstance(X0, FactoredStart) and not self.accepts_factored_start:
            X0 = X0.to_array()
        out = self.integrate(ode.rhs, t0, t1, X0)
        return check_product(f"the substep solver {self!r}", out, shape, dtype)

    def solve(self, ode: Any, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        """Solve the substep ODE ``ode`` over ``[t0, t1]`` from ``X0``, as requests."""
        if not self.yields_requests:
            if isinstance(X0, FactoredStart) and not self.accepts_factored_start:
                X0 = X0.to_array()
            return (yield SubstepCall(self, ode, t0, t1, X0))
        shape, dtype = tuple(X0.shape), _dtype_of(X0)
        inc = yield from exact_increment(ode, t0, t1)
        if inc is not None:
            inc = check_product("the exact increment of a substep", inc, shape, dtype)
            return bk.add_scaled(owned_start(X0), 1.0, inc)
        small = _small(X0)
        # plain calls on small states, where a request per evaluation costs more than the
        # arithmetic (a driver answering from passes declines, and requests follow)
        ask = small and hasattr(ode, "request") and not queries_declined()
        direct = (yield FieldFunction(ode)) if ask else None
        if direct is not None:
            out = self.integrate(direct, t0, t1, X0)
        elif self.has_affine_stages and not small and (yield from is_affine(ode, t0, t1)):
            out = yield from self.affine_stages(partial(evaluate, ode), t0, t1, X0)
        else:
            out = yield from self.stages(partial(evaluate, ode), t0, t1, X0)
        if type(out) is np.ndarray and out.dtype == dtype and out.shape == shape:
            return out  # the common case, without naming the solver
        return check_product(f"the substep solver {self!r}", out, shape, dtype)

    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        """Approximate ``X(t1)`` for ``X' = f(t, X)``, ``X(t0) = X0``.

        ``f`` must not modify its argument; the solver never modifies ``X0`` or an array
        returned by ``f``. Solvers written as requests get this from :meth:`stages`.
        """
        if not self.yields_requests:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither integrate nor stages"
            )
        return run_to_end(self.stages(_synchronous(f), t0, t1, X0))

    def stages(self, f: Evaluate, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        """The solver written as requests: ``k = yield from f(t, X, start)`` per evaluation."""
        raise NotImplementedError(f"{type(self).__name__} is not written as requests")
        yield  # pragma: no cover - makes this method a generator

    def affine_stages(self, f: Evaluate, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        """:meth:`stages` for a field that is affine and autonomous (see
        :attr:`has_affine_stages`); by default :meth:`stages` itself."""
        return (yield from self.stages(f, t0, t1, X0))


class Euler(SubstepSolver):
    """One explicit Euler step: ``X1 = X0 + (t1 - t0) f(t0, X0)``.

    With Euler substeps every integrator has an exact closed form (the "discrete" variants
    used in dynamical low-rank training, where the step size is the learning rate).
    """

    order = 1
    accepts_factored_start = True
    yields_requests = True

    def stages(self, f: Evaluate, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        # The start is handed over as it is (possibly factored): a driver that answers from
        # the point it was declared at never forms it.
        k = yield from f(t0, X0, True)
        if type(k) is not np.ndarray and (len(k.shape) != 2 or len(bk.row_blocks(k)) == 1):
            # other libraries, one block: the sum is the new array (no work array to fill);
            # a start still in factors is multiplied in the same call
            if isinstance(X0, FactoredStart) and X0.formed is None and len(k.shape) == 2:
                return bk.plus_product(k, X0.left, X0.right, beta=t1 - t0)
            return start_array(X0) + (t1 - t0) * k
        return assign_stage(bk.empty(k), X0, t1 - t0, k)

    def __repr__(self) -> str:
        return "Euler()"


class RK4(SubstepSolver):
    r"""Classical fourth-order Runge-Kutta with ``steps`` equal internal steps.

    Each internal step from ``(t, X)`` with step ``dt`` uses exactly four evaluations, each at
    its own stage time: ``k1 = f(t, X)``, ``k2 = f(t + dt/2, X + dt/2 k1)``,
    ``k3 = f(t + dt/2, X + dt/2 k2)``, ``k4 = f(t + dt, X + dt k3)``.

    Parameters
    ----------
    steps : int, default 1
        Number of internal steps per substep.
    """

    order = 4
    accepts_factored_start = True
    yields_requests = True
    has_affine_stages = True

    def __init__(self, steps: int = 1) -> None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def stages(self, f: Evaluate, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        dt = (t1 - t0) / self.steps
        X = X0
        workspace = X0.workspace if isinstance(X0, FactoredStart) else None
        for i in range(self.steps):
            # t from the start point, not accumulated, so the last stage hits t1 exactly.
            t = t0 + i * dt
            t_end = t1 if i == self.steps - 1 else t0 + (i + 1) * dt
            if _small(X):
                X = yield from self._small_step(f, t, t + 0.5 * dt, t_end, dt, X, i == 0)
            else:
                X = yield from self._step(f, t, t + 0.5 * dt, t_end, dt, X, i == 0, workspace)
        return X

    def affine_stages(self, f: Evaluate, t0: float, t1: float, X0: Any) -> Generator[Any, Any, Any]:
        r"""RK4 for a field ``f(t, X) = L(X) + c`` with ``L`` linear and ``L``, ``c`` the same
        at every time.

        For such a field a step of every four-stage, fourth-order Runge-Kutta method is the
        degree-4 Taylor polynomial of the flow,
        ``X1 = X0 + sum_{j=1..4} dt^j / j! L^{j-1} f(X0)``. Nested (Horner's rule), it is
        ``W3 = X0 + dt/4 f(W4)`` with ``W4 = X0``, ``W2 = X0 + dt/3 f(W3)``,
        ``W1 = X0 + dt/2 f(W2)``, ``X1 = X0 + dt f(W1)``: the same four evaluations and the
        same result as :meth:`stages` up to round-off. Every stage is ``X0 + a f(W)``, with no
        accumulator, so the start is formed once and read by each stage: for tall NumPy
        states, three arrays of the size of ``X`` are alive (the start, a stage and the next
        one), as in :meth:`stages`, while a substep from a factored start forms ``U0 S0``
        once instead of four times and moves three arrays per stage instead of four. The
        stage requests carry their update (a ``StageUpdate`` of ``lowrank_integrators.protocol``
        without an accumulator), which a compiled field folds into its pass. The evaluations
        are made at the start time of each internal step (the field is the same at every
        time). A subclass that redefines :meth:`stages` keeps its own stages here.
        """
        if type(self).stages is not RK4.stages:
            return (yield from self.stages(f, t0, t1, X0))
        dt = (t1 - t0) / self.steps
        X = X0
        workspace = X0.workspace if isinstance(X0, FactoredStart) else None
        for i in range(self.steps):
            X = yield from self._affine_step(f, t0 + i * dt, dt, X, i == 0, workspace)
        return X

    @staticmethod
    def _affine_step(
        f: Evaluate, t: float, dt: float, X: Any, first: bool, workspace: Workspace | None
    ) -> Generator[Any, Any, Any]:
        """One step of :meth:`affine_stages` from ``X`` (an array or a factored start)."""
        start = x0 = X
        if isinstance(X, FactoredStart):
            if _formable(X):
                # formed once, in a kept array when the workspace has one; the first request
                # hands it over with its factors, as the start of the substep
                x0 = None if workspace is None else workspace.take(X.shape, X.left.dtype)
                x0 = bk.tall_times(X.left, X.right, x0)  # by cache-sized row blocks
                start = FactoredStart(X.left, X.right)
                start.formed = x0
            else:
                start = x0 = X.to_array()
        X = None
        in_place = _foldable(x0)
        W: Any = start
        prev: Any = None
        asks = False  # whether the field writes its results into spare arrays
        try:
            for j, a in enumerate((dt / 4.0, dt / 3.0, dt / 2.0, dt)):
                update = StageUpdate(None, x0, None, a, False) if in_place else None
                if j < 2:
                    k = yield from _call_with_spare(f, t, W, first and j == 0, workspace, update)
                else:
                    # the stage before the current one is dead: the next stage is written there
                    # by a field that asks for a spare array, else it is released first
                    refs = sys.getrefcount(prev)
                    if asks and prev is not None and _owned(prev, refs):
                        _fused.offer_spare(prev)
                    prev = None
                    _fused.start_asking()
                    k = yield from f(t, W, False, update)
                    _give_back_spare(workspace)
                asks = _fused.was_asked()
                update = None
                if type(k) is Updated:
                    new, k = k.stage, None
                else:
                    # x0 + a k, in the storage of k when no one else holds it
                    refs = sys.getrefcount(k)
                    out = k if in_place and _owned(k, refs) else bk.empty(k)
                    new = assign_stage(out, x0, a, k)
                    out = k = None
                if j == 0:
                    # the first input is the start, which every stage reads: not dead
                    if isinstance(start, FactoredStart):
                        start.formed = None
                    W = start = None
                prev, W, new = W, new, None
            # the start and the last stage but one are dead: the next substep forms its start
            # in the first, and its stages in the second only if its field asks for spare
            # arrays (as this one did)
            if workspace is not None:
                refs = sys.getrefcount(prev)
                if asks and prev is not None and _owned(prev, refs):
                    workspace.give(prev)
                prev = None
                refs = sys.getrefcount(x0)
                if _owned(x0, refs):
                    workspace.give(x0)
            prev = x0 = None
            return W
        finally:
            _give_back_spare(workspace)

    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        if type(self).stages is not RK4.stages or not _small(X0):
            return super().integrate(f, t0, t1, X0)
        # small states: the arithmetic of _small_step by plain calls (no generator per
        # evaluation, which costs as much as an evaluation at this size)
        dt = (t1 - t0) / self.steps
        X = X0.left @ X0.right if isinstance(X0, FactoredStart) else X0
        for i in range(self.steps):
            t = t0 + i * dt
            t_mid = t + 0.5 * dt
            k = f(t, X)
            acc = X + k * (dt / 6.0)
            k = f(t_mid, X + k * (0.5 * dt))
            acc += k * (dt / 3.0)
            k = f(t_mid, X + k * (0.5 * dt))
            acc += k * (dt / 3.0)
            k = f(t1 if i == self.steps - 1 else t0 + (i + 1) * dt, X + k * dt)
            acc += (dt / 6.0) * k
            X = acc
        return X

    @staticmethod
    def _small_step(
        f: Evaluate, t: float, t_mid: float, t_end: float, dt: float, X: Any, first: bool
    ) -> Generator[Any, Any, Any]:
        """One RK4 step of a small NumPy state (see :func:`_small`): the arithmetic of
        :meth:`_step` (that of :func:`rk4_update` on small arrays), without its work-array
        bookkeeping, which costs more than the arithmetic at this size. Every stage is a new
        array; nothing handed to ``f`` is modified afterwards. A factored start is formed
        once and handed to ``f`` with its product (see :attr:`FactoredStart.formed`)."""
        if isinstance(X, FactoredStart):
            start = FactoredStart(X.left, X.right)
            start.formed = X = X.left @ X.right
            k = yield from f(t, start, first)
            start = None
        else:
            k = yield from f(t, X, first)
        acc = X + k * (dt / 6.0)
        stage = X + k * (0.5 * dt)
        k = yield from f(t_mid, stage, False)
        acc += k * (dt / 3.0)
        stage = X + k * (0.5 * dt)
        k = yield from f(t_mid, stage, False)
        acc += k * (dt / 3.0)
        stage = X + k * dt
        k = yield from f(t_end, stage, False)
        acc += (dt / 6.0) * k
        return acc

    @staticmethod
    def _step(
        f: Evaluate,
        t: float,
        t_mid: float,
        t_end: float,
        dt: float,
        X: Any,
        first: bool,
        workspace: Workspace | None,
    ) -> Generator[Any, Any, Any]:
        # Three arrays of the size of X are alive at a time: the accumulator, one stage and its
        # derivative. Each is released before the next of its size is allocated, the start
        # value is re-read from X (re-formed block by block when it is a FactoredStart)
        # instead of kept in a fourth array, and the sums are formed block by block (these
        # factors can be tall: n ~ 1e6). Nothing handed to f is modified afterwards: f may
        # keep what it was given. NumPy derivatives are folded into the accumulator and the
        # next stage in one pass (rk4_update), the start formed once for both updates of the
        # first stage. A derivative that no one else references becomes the next stage (in
        # place), and a stage that f kept no reference to is left as the spare array for the
        # next derivative of a field that asks for one (see _fused.take_spare). With a
        # workspace of the step, the start and the first two derivatives are written into its
        # arrays and the registers left dead at the end go back to it: over a sequence of
        # steps one array of the size of X is allocated per substep (the one that leaves as
        # the result) instead of three, which at n ~ 1e6 saves the page faults of fresh arrays.
        # Other arrays are updated functionally (_functional_step).
        formed = None
        if first and isinstance(X, FactoredStart) and _formable(X):
            # the start formed once, here, for the first evaluation: a driver that answers
            # from a problem uses it, and it becomes the accumulator if f kept no reference
            start = FactoredStart(X.left, X.right)
            formed = None if workspace is None else workspace.take(start.shape, X.left.dtype)
            if formed is None:
                formed = X.left @ X.right
            else:
                np.matmul(X.left, X.right, out=formed)
            start.formed = formed
            update = StageUpdate(None, formed, dt / 6.0, 0.5 * dt, True)
            k = yield from _call_with_spare(f, t, start, first, workspace, update)
            start.formed = start = update = None
        else:
            update = StageUpdate(None, X, dt / 6.0, 0.5 * dt, True) if _foldable(X) else None
            k = yield from _call_with_spare(f, t, X, first, workspace, update)
            update = None
        if type(k) is Updated:
            # the driver did the register updates in the stage's pass
            # handed over in a list, so that only the callee holds them
            registers, k, formed = [k.acc, k.stage, formed], None, None
            return (yield from RK4._folded_steps(f, t_mid, t_end, dt, X, registers, workspace))
        if not (type(k) is np.ndarray and k.ndim == 2 and bk.allows_inplace(k)):
            formed = None
            return (yield from RK4._functional_step(f, t_mid, t_end, dt, X, k))
        try:
            refs = sys.getrefcount(formed)
            usable = formed is not None and formed.shape == k.shape and formed.dtype == k.dtype
            if usable and _owned(formed, refs):
                acc = X0 = formed  # the start, overwritten by the accumulator
            else:
                acc, X0 = np.empty(k.shape, dtype=k.dtype), X
            formed = None
            # no reference to k but the local name (f kept none): the next stage may
            # overwrite it
            refs = sys.getrefcount(k)
            stage = k if _owned(k, refs) else bk.empty(k)
            rk4_update(acc, stage, X0, k, dt / 6.0, 0.5 * dt, first=True)
            X0 = None
            k = None
            for i, (c, a) in enumerate(((dt / 3.0, 0.5 * dt), (dt / 3.0, dt))):
                # k2 -> stage 3, k3 -> stage 4
                if i == 0:
                    k = yield from _call_with_spare(f, t_mid, stage, False, workspace)
                else:
                    _fused.start_asking()
                    k = yield from f(t_mid, stage, False)
                # a stage that f kept no reference to is left for the next stage's result, if
                # the field asks for one
                refs = sys.getrefcount(stage)
                if _fused.was_asked() and _owned(stage, refs):
                    _fused.offer_spare(stage)
                stage = None
                refs = sys.getrefcount(k)
                stage = k if _owned(k, refs) else bk.empty(k)
                rk4_update(acc, stage, X, k, c, a, first=False)
                k = None
            _fused.start_asking()
            k = yield from f(t_end, stage, False)
            # the next substep forms its start in one kept array, and its first derivatives
            # in the others only if its field asks for spare arrays (as this one did)
            asks = _fused.was_asked()
            refs = sys.getrefcount(stage)
            if workspace is not None and _owned(stage, refs):
                workspace.give(stage)
            stage = None
            acc = bk.add_scaled(acc, dt / 6.0, k)
            refs = sys.getrefcount(k)
            if workspace is not None and asks and _owned(k, refs):
                workspace.give(k)
            k = None
            return acc
        finally:
            _give_back_spare(workspace)

    @staticmethod
    def _folded_steps(
        f: Evaluate,
        t_mid: float,
        t_end: float,
        dt: float,
        X: Any,
        registers: list[Any],
        workspace: Workspace | None,
    ) -> Generator[Any, Any, Any]:
        """Stages 2 to 4 of an RK4 step whose first stage the driver answered folded.

        ``registers`` is ``[acc, stage, dead]``: the accumulator, the second stage and the
        start formed for the first stage (or ``None``); the list is emptied, so that only this
        generator holds them. Each stage request carries its
        :class:`~lowrank_integrators.protocol.StageUpdate`; a driver that folds it writes the
        next stage into the array offered as the spare: the stage before the current one,
        dead once no one else holds it. Three arrays of the size of ``X`` are alive, as in
        :meth:`_step`, and no stage derivative is written as a tall array. An answer that is
        the derivative itself takes the generic updates (:func:`rk4_update`), with the same
        arithmetic. At the end the last two stages go back to ``workspace``.
        """
        acc, stage, prev = registers
        registers.clear()
        try:
            for t_s, c, a in (
                (t_mid, dt / 3.0, 0.5 * dt),
                (t_mid, dt / 3.0, dt),
                (t_end, dt / 6.0, None),
            ):
                refs = sys.getrefcount(prev)
                if prev is not None and _owned(prev, refs):
                    _fused.offer_spare(prev)
                prev = None
                _fused.start_asking()
                k = yield from f(t_s, stage, False, StageUpdate(acc, X, c, a, False))
                if type(k) is Updated:
                    new, k = k.stage, None
                elif a is None:
                    acc = bk.add_scaled(acc, c, k)
                    new = k = None
                else:
                    refs = sys.getrefcount(k)
                    new = k if _owned(k, refs) else bk.empty(k)
                    rk4_update(acc, new, X, k, c, a, first=False)
                    k = None
                prev, stage, new = stage, new, None
                _give_back_spare(workspace)
            # the last two stages are dead: the next substep forms its start and its registers
            # in them
            if workspace is not None:
                refs = sys.getrefcount(prev)
                if _owned(prev, refs):
                    workspace.give(prev)
            prev = None
            return acc
        finally:
            _give_back_spare(workspace)

    @staticmethod
    def _functional_step(
        f: Evaluate, t_mid: float, t_end: float, dt: float, X: Any, k: Any
    ) -> Generator[Any, Any, Any]:
        """The rest of an RK4 step from ``k1`` for arrays that are not updated in place here."""
        acc = assign_stage(bk.empty(k), X, dt / 6.0, k)
        stage = assign_stage(bk.empty(k), X, 0.5 * dt, k)
        k = None
        for c, a in ((dt / 3.0, 0.5 * dt), (dt / 3.0, dt)):
            k = yield from f(t_mid, stage, False)
            stage = None
            acc = bk.add_scaled(acc, c, k)  # a new array where arrays are immutable
            stage = assign_stage(bk.empty(k), X, a, k)
            k = None
        k = yield from f(t_end, stage, False)
        stage = None
        return bk.add_scaled(acc, dt / 6.0, k)

    def __repr__(self) -> str:
        return f"RK4(steps={self.steps})"


class CallableSubstep(SubstepSolver):
    """Wrap a user function ``solver(f, t0, t1, X0) -> X1`` as a substep solver."""

    def __init__(self, func: Callable[..., Any]) -> None:
        if not callable(func):
            raise TypeError(f"substep solver must be callable, got {type(func).__name__}")
        self.func = func

    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        return self.func(f, t0, t1, X0)

    def __repr__(self) -> str:
        return f"CallableSubstep({self.func!r})"


def as_substep(substep: SubstepSolver | Callable[..., Any] | None) -> SubstepSolver:
    """Normalise the ``substep=`` argument of an integrator (``None`` means ``RK4()``)."""
    if substep is None:
        return RK4()
    if isinstance(substep, SubstepSolver):
        return substep
    if isinstance(substep, type):
        raise TypeError(
            "substep must be an instance such as RK4() or Euler(), got the class "
            f"{substep.__name__}"
        )
    if callable(substep):
        return CallableSubstep(substep)
    raise TypeError(
        f"substep must be a SubstepSolver or a callable (f, t0, t1, X0) -> X1, got "
        f"{type(substep).__name__}"
    )
