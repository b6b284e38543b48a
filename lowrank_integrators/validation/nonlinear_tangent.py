r"""N2: a nonlinear field that leaves the rank-r manifold invariant (``eps = 0``).

Source: designed for this suite from the invariance condition of the robust error bounds
(Kieri, Lubich, Walach 2016; Ceruti, Lubich 2022, arXiv:2010.02022): a field
``F(t, Y) = A(t, Y) Y + Y B(Y)`` keeps the rank of ``Y`` for all time, so ``eps = 0``. Here
``A(t, Y) = W1 + cos(2 pi t) diag(Y 1)`` and ``B(Y) = W2^T + diag(1^T Y)`` with skew ``W1``,
``W2`` (``1``: the vector of ones), ``m = n = 30``, rank 4, ``T = 0.5``; data from
``rng(7)``, ``S0 = diag(2^-j)``.

Theory: ``eps = 0``, so every method's bound has no ``eps`` term; projector splitting and BUG
keep their orders (KSL and BUG 1, Strang 2), the augmented BUG and abc-PSI truncated to rank r
are first order (algorithm reference, pitfall 7.2: order 2 only with Sylvester structure), the
midpoint BUG and the second-order parallel BUG are second order.

Why this problem: on V1 (``A Y + Y B`` with constant ``A``, ``B``) the augmented BUG and
abc-PSI truncated to a fixed rank look second order (algorithm reference, pitfall 7.2), and
on N1 (``eps != 0``) truncation to rank r limits every augmented method to first order; so
neither can show that a second-order method (midpoint BUG, second-order parallel BUG) is
second order and a first-order one is not. Here the coefficients depend on ``Y`` and ``t``,
so there is no Sylvester structure, and ``eps = 0``, so the second-order bounds hold with no
``eps`` term (Ceruti, Einkemmer, Kusch, Lubich 2024; Kusch 2024). The suite checks both
sides: declared order 2 holds for the second-order methods, and every first-order method
stays below order 1.5.

Reference (independent of the integrators): the full ODE ``Y' = F(t, Y)`` in dense form by
``scipy.integrate.solve_ivp`` (DOP853, ``rtol = 1e-12``). Since ``eps = 0`` the full solution
has rank r and equals the dynamical low-rank solution; the study checks
``sigma_{r+1}(Y(T)) <= 1e-10`` so that a change of the field that breaks invariance is seen.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

import lowrank_integrators as lri
from lowrank_integrators.verify import StudyResult, at_most, convergence_study
from lowrank_integrators.verify.suite import Case

from ._common import Memo, fixed_rank_builder, orthonormal

NAME = "N2-nonlinear-tangent"
T = 0.5
STEPS_QUICK = (0.1, 0.05, 0.025)
STEPS_FULL = (0.1, 0.05, 0.025, 0.0125, 0.00625)
#: Largest observed order allowed to a first-order method: halfway to order 2.
FIRST_ORDER_CEILING = 1.5
#: ``sigma_{r+1}`` of the reference at ``T`` above which the rank was not preserved.
INVARIANCE_TOL = 1e-10


class NonlinearTangentField:
    """The N2 setup (seed 7)."""

    def __init__(self, n: int = 30, r: int = 4, seed: int = 7) -> None:
        g = np.random.default_rng(seed)
        R1 = g.standard_normal((n, n))
        R2 = g.standard_normal((n, n))
        self.W1 = (R1 - R1.T) / (2 * np.sqrt(n))
        self.W2 = (R2 - R2.T) / (2 * np.sqrt(n))
        self.r = r
        U0 = orthonormal(g, n, r)
        V0 = orthonormal(g, n, r)
        self.Y0 = lri.LowRankMatrix(U0, np.diag(2.0 ** -np.arange(r)), V0)
        self.problem = lri.DenseODE(self.field)
        self.reference = Memo(self._reference)

    def field(self, t: float, Y: np.ndarray) -> np.ndarray:
        """``A(t, Y) Y + Y B(Y)``: row and column scalings by the sums of ``Y``."""
        rows = Y.sum(axis=1)
        cols = Y.sum(axis=0)
        return (
            self.W1 @ Y
            + Y @ self.W2.T
            + np.cos(2 * np.pi * t) * (rows[:, None] * Y)
            + Y * cols[None, :]
        )

    def _reference(self, t: float) -> np.ndarray:
        n = self.W1.shape[0]
        sol = solve_ivp(
            lambda s, y: self.field(s, y.reshape(n, n)).ravel(),
            (0.0, t),
            self.Y0.to_dense().ravel(),
            method="DOP853",
            rtol=1e-12,
            atol=1e-14,
        )
        if not sol.success:
            raise RuntimeError(f"reference integration failed: {sol.message}")
        return sol.y[:, -1].reshape(n, n)

    def tail(self, t: float = T) -> float:
        """``sigma_{r+1}`` of the reference at ``t`` (zero up to round-off when ``eps = 0``)."""
        return float(np.linalg.svd(self.reference(t), compute_uv=False)[self.r])


def _study(setup: NonlinearTangentField, spec, steps) -> StudyResult:
    first_order = spec.order == 1
    res = convergence_study(
        setup.problem,
        setup.Y0,
        fixed_rank_builder(spec, setup.r),
        setup.reference,
        (0.0, T),
        steps,
        expected_order=spec.order,
        assert_order=spec.fixed_rank_order,
        # a first-order method must not look second order here (pitfall 7.2 is Sylvester only)
        max_order=FIRST_ORDER_CEILING if first_order and spec.fixed_rank_order else None,
        problem_name=NAME,
        method_name=spec.name,
    )
    if spec.fixed_rank_order:  # guards the asserted orders (none asserted otherwise)
        res.checks.append(
            at_most(
                "reference rank preserved",
                setup.tail(),
                INVARIANCE_TOL,
                note="eps = 0: sigma_{r+1} of the full solution at T",
            )
        )
    return res


def cases(methods, quick: bool) -> list[Case]:
    setup = NonlinearTangentField()
    steps = STEPS_QUICK if quick else STEPS_FULL
    return [
        Case(NAME, spec.name, "convergence", lambda spec=spec: _study(setup, spec, steps))
        for spec in methods
    ]
