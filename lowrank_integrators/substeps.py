r"""Solvers for the small matrix ODEs (K-, L- and S-steps) inside one integrator step.

Every substep of a step is an ODE ``X' = f(t, X)`` on an interval ``[t0, t1]`` (the same
interval for all substeps of a step; composite methods such as Strang split it explicitly).
A solver maps ``(ode, t0, t1, X0)`` to ``X1``.

When the right-hand side does not depend on the state (explicit data ``F = A'(t)``, see
:class:`~lowrank_integrators.DataODE`), the substep ODE offers its exact increment
``int_{t0}^{t1} f dt`` and every solver uses it: the substep is then solved exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["RK4", "CallableSubstep", "Euler", "SubstepODE", "SubstepSolver", "as_substep"]


class SubstepODE(Protocol):
    """What a substep solver receives: the right-hand side and, optionally, its exact integral."""

    def rhs(self, t: float, X: Any) -> Any:
        """``f(t, X)``."""

    def increment(self, t0: float, t1: float) -> Any | None:
        """``int_{t0}^{t1} f dt`` when ``f`` does not depend on ``X``; otherwise ``None``."""


class SubstepSolver(ABC):
    """Base class of substep solvers.

    Subclasses implement :meth:`integrate`; ``__call__`` first uses the exact increment of a
    state-independent right-hand side when the ODE offers one.
    """

    #: Order of the solver on smooth problems (for documentation and validation).
    order: int = 0

    def __call__(self, ode: SubstepODE, t0: float, t1: float, X0: Any) -> Any:
        inc = ode.increment(t0, t1)
        if inc is not None:
            return X0 + inc
        return self.integrate(ode.rhs, t0, t1, X0)

    @abstractmethod
    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        """Approximate ``X(t1)`` for ``X' = f(t, X)``, ``X(t0) = X0``."""


class Euler(SubstepSolver):
    """One explicit Euler step: ``X1 = X0 + (t1 - t0) f(t0, X0)``.

    With Euler substeps every integrator has an exact closed form (the "discrete" variants
    used in dynamical low-rank training, where the step size is the learning rate).
    """

    order = 1

    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        return X0 + (t1 - t0) * f(t0, X0)

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

    def __init__(self, steps: int = 1) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps

    def integrate(self, f: Callable[[float, Any], Any], t0: float, t1: float, X0: Any) -> Any:
        dt = (t1 - t0) / self.steps
        X = X0
        for i in range(self.steps):
            # t from the start point, not accumulated, so the last stage hits t1 exactly.
            t = t0 + i * dt
            t_end = t1 if i == self.steps - 1 else t0 + (i + 1) * dt
            t_mid = t + 0.5 * dt
            # The stages are folded into a running sum as they come and every array is
            # released as soon as it is used, so that at most five arrays of the size of X
            # are alive at once (these factors can be tall: n ~ 1e6). Only arrays created
            # here are updated in place; the stages returned by f are never modified.
            k = f(t, X)
            stage = X + (0.5 * dt) * k
            acc, k = k, None
            k = f(t_mid, stage)
            stage = None
            acc = acc + 2.0 * k
            stage = X + (0.5 * dt) * k
            k = f(t_mid, stage)
            stage = None
            acc += 2.0 * k
            stage = X + dt * k
            k = f(t_end, stage)
            stage = None
            acc += k
            k = None
            X = X + (dt / 6.0) * acc
            acc = None
        return X

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
