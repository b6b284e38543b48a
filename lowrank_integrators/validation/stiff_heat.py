r"""V5: stiff heat (Lyapunov) equation ``Y' = A Y + Y A`` -- a caution case, no order asserted.

Source: the stiff test of the robust-integrator literature (Ceruti, Lubich 2022,
arXiv:2010.02022, warns about dissipative problems); ``A = tridiag(1, -2, 1) / dx^2`` with
``n = 48``, ``dx = 1/49`` (``||A|| ~ 4 / dx^2``), rank 6, ``U0``, ``V0`` random orthonormal from
``rng(5)``, ``S0 = diag(2^{-j})``, ``T = 0.01``.

Reference (exact): ``e^{T A} Y0 e^{T A}``.

Substeps are solved exactly: each is a Sylvester ODE ``X' = A1 X + X A2`` with
``X(t1) = e^{h A1} X(t0) e^{h A2}`` (``ExactSylvesterSubstep``), so no explicit solver has
to resolve the stiffness.

Theory: projector splitting is exact on this Sylvester field (checked). The constants of the robust
bounds of the BUG family grow with the Lipschitz constant ``~ ||A||``; their asymptotic regime
starts only around ``h ||A|| <~ 1``, so their observed orders are reported, never asserted.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm

import lowrank_integrators as lri
from lowrank_integrators.integrators.base import KStep, LStep, SStep
from lowrank_integrators.substeps import SubstepSolver
from lowrank_integrators.verify import convergence_study, exactness_study
from lowrank_integrators.verify.suite import Case

from ._common import Memo, orthonormal

NAME = "V5-stiff-heat"
T = 0.01
STEPS_QUICK = (5e-3, 2.5e-3, 1.25e-3)
STEPS_FULL = (5e-3, 2.5e-3, 1.25e-3, 6.25e-4, 2.5e-4)


class ExactSylvesterSubstep(SubstepSolver):
    r"""Exact K-, L- and S-substeps for ``F(Y) = A Y + Y B^T`` with real ``A``, ``B``.

    * K-step: ``K' = A K + K (V0^T B^T V0)``;
    * L-step: ``L' = B L + L (U0^T A^T U0)``;
    * S-step: ``S' = sign (U^T A U S + S V^T B^T V)``.
    """

    order = 0

    def __init__(self, A: np.ndarray, B: np.ndarray) -> None:
        self.A, self.B = A, B

    def __call__(self, ode, t0: float, t1: float, X0):
        h = t1 - t0
        if isinstance(ode, KStep):
            A1, A2 = self.A, ode.V0.T @ self.B.T @ ode.V0
        elif isinstance(ode, LStep):
            A1, A2 = self.B, ode.U0.T @ self.A.T @ ode.U0
        elif isinstance(ode, SStep):
            A1 = ode.sign * (ode.U.T @ self.A @ ode.U)
            A2 = ode.sign * (ode.V.T @ self.B.T @ ode.V)
        else:
            raise TypeError(f"no exact solution for a substep of type {type(ode).__name__}")
        return expm(h * A1) @ X0 @ expm(h * A2)

    def integrate(self, f, t0, t1, X0):
        raise NotImplementedError("ExactSylvesterSubstep solves substeps from their structure")

    def __repr__(self) -> str:  # the matrices are the problem's (see the report's problem)
        return f"ExactSylvesterSubstep(A=<{_shape(self.A)} array>, B=<{_shape(self.B)} array>)"


def _shape(M: np.ndarray) -> str:
    return "x".join(str(s) for s in M.shape)


class StiffHeat:
    """The V5 setup (seed 5)."""

    def __init__(self, n: int = 48, r: int = 6, seed: int = 5) -> None:
        g = np.random.default_rng(seed)
        dx = 1.0 / (n + 1)
        self.A = (
            np.diag(-2 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
        ) / dx**2
        self.norm_A = float(np.linalg.norm(self.A, 2))
        U0 = orthonormal(g, n, r)
        V0 = orthonormal(g, n, r)
        self.Y0 = lri.LowRankMatrix(U0, np.diag(2.0 ** -np.arange(1, r + 1)), V0)
        self.problem = lri.SylvesterODE(self.A, self.A)
        self.reference = Memo(lambda t: expm(t * self.A) @ self.Y0.to_dense() @ expm(t * self.A))


def cases(methods, quick: bool) -> list[Case]:
    setup = StiffHeat()
    steps = STEPS_QUICK if quick else STEPS_FULL
    span = (0.0, T)
    exact = ExactSylvesterSubstep(setup.A, setup.A)
    scale = float(np.linalg.norm(setup.reference(T)))
    out: list[Case] = []
    for spec in methods:
        method = spec.make(exact, lri.FixedRank(setup.Y0.rank) if spec.rank_adaptive else None)
        make = lambda h, method=method: method  # noqa: E731
        make.__name__ = spec.name
        if spec.exact_tangent:
            out.append(
                Case(
                    NAME,
                    spec.name,
                    "exactness",
                    lambda make=make: exactness_study(
                        setup.problem,
                        setup.Y0,
                        make,
                        setup.reference,
                        span,
                        steps,
                        tolerance=1e-8 * scale,
                        problem_name=NAME,
                        note="exact on A Y + Y A; the backward S-step amplifies round-off",
                    ),
                )
            )
        else:
            out.append(
                Case(
                    NAME,
                    spec.name,
                    "convergence",
                    lambda make=make: convergence_study(
                        setup.problem,
                        setup.Y0,
                        make,
                        setup.reference,
                        span,
                        steps,
                        assert_order=False,
                        problem_name=NAME,
                    ),
                )
            )
    return out
