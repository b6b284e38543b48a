"""Thread limits for the library's factor-sized linear algebra.

The operations of a low-rank step act on tall ``n x r`` factors and ``r x r`` cores. Split
across several BLAS threads they get slower, not faster: on small machines the threads spin
against each other (and against any other work on the machine), and a step can take many
times longer than on one thread. The entry points of the library —
:func:`~lowrank_integrators.solve`, an integrator's ``step`` called directly, the validation
suite, the training loops (NumPy and the PyTorch adapter) and every command of
``lowrank-integrators`` — therefore run with the BLAS
and OpenMP thread pools limited to :data:`DEFAULT_LIMIT` thread, and restore them on return.
The limit is applied with ``threadpoolctl``; :func:`limited` and :func:`limit_threads` apply it
to other entry points (``@limited(torch=True)`` also limits PyTorch's intra-op threads).

Who decides, in order:

1. :func:`thread_limit` (a context manager) and :func:`set_thread_limit` (a global setting):
   an explicit call wins. ``None`` means "leave the thread pools alone".
2. The environment: when one of :data:`USER_VARIABLES` (``OMP_NUM_THREADS``,
   ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ...) is set, the BLAS libraries already follow
   it and the library does not touch them. ``LOWRANK_INTEGRATORS_THREADS`` sets the library's
   limit (a positive integer) or turns it off (``off``).
3. Otherwise :data:`DEFAULT_LIMIT`.

To opt out, set ``LOWRANK_INTEGRATORS_THREADS=off`` or call ``set_thread_limit(None)``.

Examples
--------
>>> import lowrank_integrators as lri
>>> lri.set_thread_limit(None)  # the library leaves the thread pools alone from now on
>>> lri.set_thread_limit(lri.threads.DEFAULT_LIMIT)  # back to the default
>>> with lri.thread_limit(2):  # two threads for everything inside, library entry points too
...     pass
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_LIMIT",
    "ENV_VARIABLE",
    "USER_VARIABLES",
    "current_limit",
    "limit_threads",
    "limited",
    "set_thread_limit",
    "thread_limit",
]

#: Threads per BLAS/OpenMP pool during the library's work unless the user decides otherwise.
DEFAULT_LIMIT = 1

#: The library's own variable: a positive integer (the limit) or ``off`` (no limit).
ENV_VARIABLE = "LOWRANK_INTEGRATORS_THREADS"

#: Variables through which users size the BLAS/OpenMP pools themselves; when one is set the
#: library leaves the pools as they are.
USER_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

_OFF = ("off", "none", "no", "false")
_UNSET: Any = object()

#: A limit chosen by :func:`set_thread_limit` (``_UNSET``: none chosen).
_global_choice: Any = _UNSET
#: A limit chosen by an enclosing :func:`thread_limit` block (``_UNSET``: none).
_scoped_choice: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "lowrank_integrators_thread_limit", default=_UNSET
)
#: The limit an enclosing entry point (or :func:`thread_limit` block) applied, and whether it
#: covered PyTorch; ``None`` outside any.
_active: contextvars.ContextVar[tuple[int | None, bool] | None] = contextvars.ContextVar(
    "lowrank_integrators_threads_active", default=None
)

_controller_lock = threading.Lock()
_controller: tuple[Any, int] | None = None

F = TypeVar("F", bound=Callable[..., Any])


def _check_limit(limit: Any, name: str = "limit") -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
    return int(limit)


def set_thread_limit(limit: int | None) -> None:
    """Choose the thread limit of the library's entry points for the whole process.

    Parameters
    ----------
    limit : int or None
        Threads per BLAS/OpenMP pool while the library works; ``None`` leaves the pools alone
        (the opt-out). Overrides the environment.
    """
    global _global_choice
    _global_choice = _check_limit(limit)


def _from_environment() -> int | None:
    value = _environment_value(ENV_VARIABLE).strip()
    if value:
        if value.lower() in _OFF:
            return None
        try:
            return _check_limit(int(value), ENV_VARIABLE)
        except ValueError:
            raise ValueError(
                f"{ENV_VARIABLE} must be a positive integer or 'off', got {value!r}"
            ) from None
    if any(_environment_value(v).strip() for v in USER_VARIABLES):
        return None
    return DEFAULT_LIMIT


def _environment_lookup() -> Callable[[str], str]:
    """``name -> os.environ.get(name, "")``, as fast as the interpreter allows.

    Every library entry point reads the variables (a training step at width 16 reads six).
    ``os.environ.get`` raises and catches a ``KeyError`` for each variable that is not set,
    several times the cost of a dictionary lookup. CPython's ``os.environ`` keeps the
    variables in a dictionary by encoded name, kept up to date by every assignment through
    ``os.environ`` (the only changes ``os.environ.get`` sees too): the encoded names are
    looked up there directly. Any other mapping is read through ``get``.
    """
    environ = os.environ
    data = getattr(environ, "_data", None)
    encode = getattr(environ, "encodekey", None)
    decode = getattr(environ, "decodevalue", None)
    if type(data) is not dict or not (callable(encode) and callable(decode)):
        return lambda name: os.environ.get(name, "")
    keys = {name: encode(name) for name in (ENV_VARIABLE, *USER_VARIABLES)}

    def lookup(name: str) -> str:
        if os.environ is not environ:  # replaced wholesale: read the new mapping
            return os.environ.get(name, "")
        raw = data.get(keys[name])
        return "" if raw is None else decode(raw)

    return lookup


_environment_value = _environment_lookup()


def current_limit() -> int | None:
    """The limit the library's entry points apply here and now (``None``: no limit)."""
    scoped = _scoped_choice.get()
    if scoped is not _UNSET:
        return scoped
    if _global_choice is not _UNSET:
        return _global_choice
    return _from_environment()


def _get_controller() -> Any:
    """A cached ``ThreadpoolController``, rebuilt when new modules (libraries) were imported."""
    global _controller
    cached = _controller  # (controller, number of modules when it was built), one read
    if cached is not None and len(sys.modules) == cached[1]:
        return cached[0]  # the common case: nothing imported since it was built
    # Load the BLAS libraries the library's work calls (SciPy ships its own) before looking.
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    with _controller_lock:
        n = len(sys.modules)
        if _controller is None or n != _controller[1]:
            _controller = (ThreadpoolController(), n)
        return _controller[0]


@contextlib.contextmanager
def _limit_torch(limit: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``limit`` (torch is imported), restored afterwards."""
    torch_module = sys.modules["torch"]
    before = torch_module.get_num_threads()
    if before == limit:
        yield
        return
    torch_module.set_num_threads(limit)
    try:
        yield
    finally:
        torch_module.set_num_threads(before)


class _Applied:
    """The limit of an outermost entry point or block (``None``: nothing), applied on entry.

    The BLAS/OpenMP pools that differ from ``limit`` are set library by library through the
    controller's handles (as ``ThreadpoolController.limit`` does, without rebuilding its
    descriptions), and PyTorch's intra-op threads where asked and imported; each is restored
    on exit. Pools already at the limit (an enclosing ``threadpool_limits`` of the caller's)
    are neither set nor restored. A plain class rather than a generator: an integrator's step
    called in a user's own loop enters it once per step.
    """

    __slots__ = ("_changed", "_limit", "_token", "_torch", "_torch_before")

    def __init__(self, limit: int | None, torch: bool) -> None:
        self._limit = limit
        self._torch = torch and limit is not None and "torch" in sys.modules
        self._changed: list[tuple[Any, int]] = []
        self._torch_before: int | None = None

    def __enter__(self) -> None:
        limit = self._limit
        self._token = _active.set((limit, self._torch))
        if limit is None:
            return
        try:
            for lib in _get_controller().lib_controllers:
                n = lib.num_threads
                if n != limit:
                    lib.set_num_threads(limit)
                    self._changed.append((lib, n))
            if self._torch:
                torch_module = sys.modules["torch"]
                before = torch_module.get_num_threads()
                if before != limit:
                    torch_module.set_num_threads(limit)
                    self._torch_before = before
        except BaseException:
            self._restore()
            raise

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        try:
            if self._torch_before is not None:
                sys.modules["torch"].set_num_threads(self._torch_before)
            for lib, n in reversed(self._changed):
                lib.set_num_threads(n)
        finally:
            _active.reset(self._token)


def _apply(limit: int | None, torch: bool) -> _Applied:
    """Apply ``limit`` (``None``: nothing) and mark the block as limited."""
    return _Applied(limit, torch)


@contextlib.contextmanager
def thread_limit(limit: int | None) -> Iterator[None]:
    """Run a block with ``limit`` threads per BLAS/OpenMP pool (and in PyTorch, if imported).

    An explicit user choice: the library's entry points inside the block keep it. ``None``
    runs the block with the thread pools left as they are.

    Parameters
    ----------
    limit : int or None

    Examples
    --------
    >>> import lowrank_integrators as lri
    >>> with lri.thread_limit(None):  # the library leaves the pools alone in this block
    ...     pass
    """
    limit = _check_limit(limit)
    token = _scoped_choice.set(limit)
    try:
        with _apply(limit, torch=True):
            yield
    finally:
        _scoped_choice.reset(token)


def limit_threads(*, torch: bool = False) -> contextlib.AbstractContextManager[None]:
    """The limit of a library entry point: :func:`current_limit` threads for the block.

    A no-op inside another entry point or a :func:`thread_limit` block (which already chose),
    and when the user opted out. ``torch=True`` also sets PyTorch's intra-op threads (when
    torch is imported) and restores them afterwards, also inside an enclosing block that
    did not cover PyTorch.
    """
    outer = _active.get()
    if outer is None:
        return _apply(current_limit(), torch=torch)
    limit, torch_done = outer
    if torch and not torch_done and limit is not None and "torch" in sys.modules:
        return _torch_inside(limit)
    return _NOTHING


#: The context of an entry point inside another (which already chose): nothing to do.
_NOTHING = contextlib.nullcontext()


@contextlib.contextmanager
def _torch_inside(limit: int) -> Iterator[None]:
    """PyTorch limited inside an enclosing block that limited the BLAS pools only."""
    token = _active.set((limit, True))
    try:
        with _limit_torch(limit):
            yield
    finally:
        _active.reset(token)


def limited(func: F | None = None, *, torch: bool = False) -> Any:
    """Decorator: run ``func`` inside :func:`limit_threads` (``@limited`` or
    ``@limited(torch=True)``)."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with limit_threads(torch=torch):
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
